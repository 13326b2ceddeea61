package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"time"

	"github.com/openfirma/firma/internal/logfields"
)

// DebugConfig is [sidecar.debug]: an opt-in listener for Go's profiler (net/http/pprof), for
// finding out where the sidecar spends its time. Off by default; loopback only.
type DebugConfig struct {
	// ListenAddr serves /debug/pprof/ on a loopback address:port; "" (the default) serves nothing.
	ListenAddr string `toml:"listen_addr"`
}

// Validate refuses anything but a loopback address: profiles show hosts, paths and memory.
func (c *DebugConfig) Validate() error {
	if c.ListenAddr == "" {
		return nil
	}
	ap, err := netip.ParseAddrPort(c.ListenAddr)
	if err != nil {
		return fmt.Errorf("listen_addr %q: want a loopback address:port: %v", c.ListenAddr, err)
	}
	if !ap.Addr().IsLoopback() {
		return fmt.Errorf("listen_addr %q: only a loopback address may serve profiles", c.ListenAddr)
	}
	return nil
}

// serveDebug starts the profiler listener until ctx ends.
func (s *Sidecar) serveDebug(ctx context.Context) error {
	addr := s.cfg.Debug.ListenAddr
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("sidecar.debug.listen_addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error().Err(err).Msg("debug listener stopped")
		}
	}()
	context.AfterFunc(ctx, func() { srv.Close() })
	s.closers = append(s.closers, srv.Close)
	s.log.Warn().Str(logfields.Listen, addr).Msg("profiler listening (sidecar.debug): turn it off when done")
	return nil
}
