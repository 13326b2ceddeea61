// Package daemon is firma's sidecar: its lifecycle, the transparent listener the kernel redirects
// agent traffic to, the explicit HTTP/CONNECT proxy, protocol sniffing, the connector that resolves
// and dials upstreams, the DNS resolver, and the glue that turns every decision into one audit
// record before any byte leaves. It asks the policies package for decisions and never parses Cedar
// itself.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/daemon/connector"
	"github.com/openfirma/firma/daemon/control"
	"github.com/openfirma/firma/daemon/mitm"
	"github.com/openfirma/firma/internal/cgroup"
	"github.com/openfirma/firma/internal/logfields"
	"github.com/openfirma/firma/policies"
)

// drainTimeout bounds how long SIGTERM waits for flows in progress.
const drainTimeout = 10 * time.Second

// Sidecar is one running sidecar.
type Sidecar struct {
	cfg          Config
	log          zerolog.Logger
	engine       *policies.Engine
	audit        *audit.Writer
	ids          *Identities
	connector    *connector.Connector
	origins      bpf.Origins
	progs        *bpf.Programs
	names        *nameTable
	dns          *dnsServer
	sniffTimeout time.Duration
	trust        *trust
	mitm         *mitm.Interceptor // nil when https_mitm is off
	mitmCA       *mitm.CA

	regMu    sync.Mutex
	regClose map[string]func() error // per registered cgroup: release its capability

	httpTransport *http.Transport
	proxyAddr     netip.AddrPort // the explicit proxy's address, when it listens

	mu        sync.Mutex
	listeners []net.Listener
	flows     sync.WaitGroup
	closers   []func() error // run in reverse by Close
}

// New prepares a sidecar from a validated config: it opens the audit log and loads policy, but
// touches neither the kernel nor the network. Errors name the file at fault.
func New(cfg Config, log zerolog.Logger) (_ *Sidecar, err error) {
	s := &Sidecar{cfg: cfg, log: log, names: newNameTable(), sniffTimeout: cfg.Transparent.SniffTimeout.Duration,
		regClose: map[string]func() error{}}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()

	// Policy first: a bad policy must stop start-up before anything is created on disk.
	if s.engine, err = policies.New(cfg.Policy, cfg.Mapping, log.With().Str(logfields.Component, "policy").Logger()); err != nil {
		return nil, err
	}
	if s.audit, err = audit.Open(cfg.Audit, log.With().Str(logfields.Component, "audit").Logger()); err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	s.closers = append(s.closers, s.audit.Close)

	var self []netip.AddrPort
	if cfg.Transparent.Enabled {
		for _, a := range loopbacks(cfg.Transparent.IPv6) {
			self = append(self, netip.AddrPortFrom(a, cfg.Transparent.Port))
			if cfg.Transparent.DNSPort != 0 {
				self = append(self, netip.AddrPortFrom(a, cfg.Transparent.DNSPort))
			}
		}
	}
	if cfg.Interceptor.ListenAddr != "" {
		ap, err := netip.ParseAddrPort(cfg.Interceptor.ListenAddr)
		if err != nil {
			return nil, fmt.Errorf("interceptor.listen_addr: %w", err)
		}
		s.proxyAddr = ap
		self = append(self, ap)
	}
	if s.connector, err = connector.New(cfg.Upstream, self); err != nil {
		return nil, err
	}
	s.httpTransport = &http.Transport{
		Proxy:               nil, // the sidecar never honours proxy variables itself
		DialContext:         s.connector.DialContext,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true, // pass the agent's Accept-Encoding through untouched
	}
	s.closers = append(s.closers, func() error { s.httpTransport.CloseIdleConnections(); return nil })
	if s.mitm, err = s.newInterceptor(); err != nil {
		return nil, err
	}
	if s.mitm != nil {
		s.closers = append(s.closers, s.mitm.Close)
	}

	mount, err := cgroup.FindV2Mount()
	if err != nil {
		if cfg.Transparent.Enabled {
			return nil, err
		}
		mount = "/sys/fs/cgroup"
	}
	if s.ids, err = NewIdentities(mount, cfg.Agents); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, s.ids.Close)

	if s.trust, err = newTrust(cfg.Authority, s.engine, log.With().Str(logfields.Component, "authority").Logger()); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, s.trust.close, s.closeRegistrations)
	if err := s.trust.openStatic(s.ids, cfg.Agents, log); err != nil {
		return nil, err
	}
	if !cfg.Authority.Stage1() {
		log.Warn().Msg("capabilities are not enforced: no [sidecar.authority] url or public_key_path")
	}
	return s, nil
}

// Start attaches the kernel programs, then binds the listeners, and returns once everything is in
// place. Attaching first means the origin table exists before the first flow can be accepted: on a
// restart the pinned programs already redirect to the port, and until the sidecar listens those
// connections are refused, never let through.
func (s *Sidecar) Start(ctx context.Context) error {
	cfg := s.cfg
	s.origins = noOrigins{}
	if cfg.Transparent.Enabled {
		if err := s.attach(); err != nil {
			return err
		}
		if cfg.Transparent.DNSPort != 0 {
			d, err := newDNSServer(s, cfg.Upstream.Nameservers)
			if err != nil {
				return err
			}
			var addrs []netip.AddrPort
			for _, a := range loopbacks(cfg.Transparent.IPv6) {
				addrs = append(addrs, netip.AddrPortFrom(a, cfg.Transparent.DNSPort))
			}
			if err := d.listen(addrs); err != nil {
				return err
			}
			s.dns = d
			s.closers = append(s.closers, func() error { d.shutdown(); return nil })
		}
		for _, a := range loopbacks(cfg.Transparent.IPv6) {
			if err := s.listen(ctx, netip.AddrPortFrom(a, cfg.Transparent.Port), s.handleTransparent); err != nil {
				return err
			}
		}
	}
	if s.proxyAddr.IsValid() {
		if err := s.listen(ctx, s.proxyAddr, s.handleProxy); err != nil {
			return err
		}
	}
	go func() {
		if err := s.engine.Watch(ctx); err != nil && ctx.Err() == nil {
			s.log.Error().Err(err).Msg("policy watch stopped")
		}
	}()
	go s.trust.run(ctx, s.log)
	if cfg.Control.Socket != "" {
		ln, err := control.Listen(cfg.Control.Socket)
		if err != nil {
			return fmt.Errorf("control socket: %w", err)
		}
		srv := control.NewServer(s, s.log.With().Str(logfields.Component, "control").Logger())
		go srv.Serve(ctx, ln)
		go s.sweepRegistrations(ctx)
		s.closers = append(s.closers, func() error { ln.Close(); os.Remove(cfg.Control.Socket); return nil })
	}
	return nil
}

// attach creates the parent cgroup when missing and attaches (or re-uses) the pinned programs.
func (s *Sidecar) attach() error {
	mount := s.ids.mount
	parent := filepath.Join(mount, filepath.FromSlash(cgroup.Canonical(s.cfg.Transparent.Cgroup)))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("creating parent cgroup: %w", err)
	}
	reused := bpf.Pinned(s.cfg.Transparent.PinDir)
	progs, err := bpf.Attach(bpf.Config{
		Cgroup:      parent,
		PinDir:      s.cfg.Transparent.PinDir,
		SidecarPort: s.cfg.Transparent.Port,
		DNSPort:     s.cfg.Transparent.DNSPort,
		IPv6:        s.cfg.Transparent.IPv6,
	}, s.log.With().Str(logfields.Component, "bpf").Logger())
	if err != nil {
		return fmt.Errorf("attaching to %s: %w", parent, err)
	}
	s.progs, s.origins = progs, progs
	s.closers = append(s.closers, progs.Close)
	s.log.Info().Str(logfields.Cgroup, parent).Str(logfields.PinDir, s.cfg.Transparent.PinDir).
		Bool("reused_pins", reused).Msg("programs attached")
	return nil
}

func (s *Sidecar) listen(ctx context.Context, addr netip.AddrPort, handle func(context.Context, net.Conn)) error {
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	s.mu.Lock()
	s.listeners = append(s.listeners, ln)
	s.mu.Unlock()
	s.log.Debug().Str(logfields.Listen, addr.String()).Msg("listening")
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					s.log.Error().Err(err).Str(logfields.Listen, addr.String()).Msg("accept failed")
				}
				return
			}
			s.flows.Add(1)
			go func() {
				defer s.flows.Done()
				handle(ctx, conn)
			}()
		}
	}()
	return nil
}

// handleProxy serves the explicit proxy to a process outside any enforced cgroup: it has no
// kernel-attested identity, so it gets [sidecar.interceptor] agent_id, or none (denied).
func (s *Sidecar) handleProxy(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	f := &flow{start: time.Now(), port: 80}
	if id := s.cfg.Interceptor.AgentID; id != "" {
		f.agent = Agent{ID: id}
	} else {
		f.agentErr = fmt.Errorf("%w: explicit proxy client (set [sidecar.interceptor] agent_id)", ErrUnknownAgent)
	}
	s.serveHTTP(ctx, conn, f, true)
}

// Ready is what the sidecar reports once started, for sd_notify STATUS= and the log.
func (s *Sidecar) Ready() string {
	msg := "sidecar ready"
	if s.cfg.Transparent.Enabled {
		msg += fmt.Sprintf(": transparent on port %d", s.cfg.Transparent.Port)
	}
	if s.proxyAddr.IsValid() {
		msg += ", proxy on " + s.proxyAddr.String()
	}
	return msg
}

// Reload re-reads policy; on error the old policy stays in force.
func (s *Sidecar) Reload() error { return s.engine.Reload() }

// Shutdown stops accepting and waits (bounded) for flows in progress. The kernel programs stay
// pinned: agents' connections are refused until a sidecar listens again.
func (s *Sidecar) Shutdown() {
	s.mu.Lock()
	for _, ln := range s.listeners {
		ln.Close()
	}
	s.listeners = nil
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.flows.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(drainTimeout):
		s.log.Warn().Msg("drain timed out; closing flows in progress")
	}
}

// Close releases everything in reverse order of acquisition.
func (s *Sidecar) Close() error {
	s.Shutdown()
	var errs []error
	for i := len(s.closers) - 1; i >= 0; i-- {
		errs = append(errs, s.closers[i]())
	}
	s.closers = nil
	return errors.Join(errs...)
}

// RunOptions connects Run to its supervisor.
type RunOptions struct {
	// Ready is called with a status line once programs are attached and listeners are up.
	Ready func(status string)
	// Reload delivers SIGHUP: re-read policy (a bad edit keeps the old set) and rotate the audit log.
	Reload <-chan struct{}
	// Notifier, when set, gets READY=1 after start-up and watchdog pings while healthy.
	Notifier *Notifier
}

// Run is the whole sidecar: New, Start, report readiness, serve until ctx ends, drain, Close.
func Run(ctx context.Context, cfg Config, log zerolog.Logger, opts RunOptions) error {
	s, err := New(cfg, log)
	if err != nil {
		return err
	}
	defer s.Close()
	if err := s.Start(ctx); err != nil {
		return err
	}
	log.Info().Msg("sidecar ready")
	if opts.Ready != nil {
		opts.Ready(s.Ready())
	}
	if n := opts.Notifier; n != nil {
		n.Ready(s.Ready())
		go n.Watchdog(ctx, s.Healthy)
		defer n.Stopping()
	}
	for {
		select {
		case <-ctx.Done():
			log.Info().Msg("shutting down: draining flows")
			return nil
		case <-opts.Reload:
			if err := s.Reload(); err != nil {
				log.Error().Err(err).Msg("policy reload failed: keeping the current policy")
			}
			if err := s.audit.Rotate(); err != nil {
				log.Error().Err(err).Msg("audit rotation failed")
			}
		}
	}
}

func loopbacks(ipv6 bool) []netip.Addr {
	if ipv6 {
		return []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()}
	}
	return []netip.Addr{netip.MustParseAddr("127.0.0.1")}
}

// noOrigins answers for a sidecar without kernel programs: nothing was redirected.
type noOrigins struct{}

func (noOrigins) Lookup(netip.AddrPort) (bpf.Origin, error) { return bpf.Origin{}, bpf.ErrNoOrigin }
func (noOrigins) LookupDNS(netip.AddrPort, bpf.Proto) (bpf.Origin, error) {
	return bpf.Origin{}, bpf.ErrNoOrigin
}

// Healthy reports why the sidecar cannot serve safely, or nil: an audit log that cannot be written
// means every new flow is denied.
func (s *Sidecar) Healthy() error {
	if err := s.audit.Healthy(); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	return nil
}

func (s *Sidecar) closeRegistrations() error {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	for cg, closeFn := range s.regClose {
		closeFn()
		delete(s.regClose, cg)
	}
	return nil
}
