package daemon

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"time"

	"github.com/openfirma/firma/internal/logfields"
)

// validateDebugAddr accepts only a loopback address and a port: the profiles name hosts, paths and
// agents, and the handlers take CPU on demand.
func validateDebugAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if port == "" {
		return fmt.Errorf("%q: no port", addr)
	}
	if host == "localhost" {
		return nil
	}
	a, err := netip.ParseAddr(host)
	if err != nil || !a.IsLoopback() {
		return fmt.Errorf("%q: want a loopback address (127.0.0.1, [::1]) and a port", addr)
	}
	return nil
}

// serveDebug serves net/http/pprof on addr until the sidecar closes. It is off unless [sidecar.debug]
// listen_addr (or FIRMA_PPROF) asks for it.
func (s *Sidecar) serveDebug(addr string) (net.Addr, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("sidecar.debug.listen_addr: %w", err)
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
	s.closers = append(s.closers, func() error { return srv.Close() })
	s.log.Warn().Str(logfields.Listen, ln.Addr().String()).Msg("debug listener on: /debug/pprof/ serves profiles of this sidecar")
	return ln.Addr(), nil
}
