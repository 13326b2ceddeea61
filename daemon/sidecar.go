// Package daemon is firma's sidecar lifecycle: it reads the validated [sidecar] configuration,
// builds the rooms the work happens in, starts them (kernel programs attached before any listener,
// so that no flow is accepted before the origin table exists), reports readiness to systemd, reloads
// policy on SIGHUP, and stops them in reverse order.
//
// The rooms, each its own package: judge (every decision and its audit record), front (accept,
// origin, sniff, route), l7 (the one HTTP engine: MITM and plain HTTP), connector (resolve, classify,
// dial), dns (the resolver and the names it learns), agents (identities, registrations and their
// capabilities), audit (the log), control (the socket `firma run` registers through). None of them
// imports this package; it holds no feature logic of its own.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/daemon/agents"
	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/daemon/connector"
	"github.com/openfirma/firma/daemon/control"
	"github.com/openfirma/firma/daemon/credentials"
	"github.com/openfirma/firma/daemon/dns"
	"github.com/openfirma/firma/daemon/front"
	"github.com/openfirma/firma/daemon/judge"
	"github.com/openfirma/firma/daemon/l7"
	"github.com/openfirma/firma/daemon/metrics"
	"github.com/openfirma/firma/internal/cgroup"
	"github.com/openfirma/firma/internal/logfields"
	"github.com/openfirma/firma/policies"
)

// drainTimeout bounds how long SIGTERM waits for flows in progress.
const drainTimeout = 10 * time.Second

// Sidecar is one running sidecar.
type Sidecar struct {
	cfg   Config
	log   zerolog.Logger
	mount string // cgroup2 mount point

	engine    *policies.Engine
	audit     *audit.Writer
	trust     *trust
	agents    *agents.Registry
	judge     *judge.Judge
	connector *connector.Connector
	ca        *l7.CA // nil without [sidecar.ca] dir
	l7        *l7.Engine
	names     *dns.Names
	front     *front.Server
	origins   *originTable
	limits    *judge.Limiter // every agent's flows: the transparent path, the proxy, DNS over TCP
	proxyAddr netip.AddrPort // the explicit proxy's address, when it listens
	metrics   *metrics.Metrics

	progs   *bpf.Programs // nil until attached, or without the transparent path
	offload *bpf.Offload  // nil without the transparent path, with offload off, or on kernels without it
	fault   kernelFault   // what the integrity check last found wrong

	mu        sync.Mutex
	listeners []net.Listener
	flows     sync.WaitGroup
	starved   atomic.Int64 // accept loops currently backing off for want of descriptors
	closers   []func() error
}

// New prepares a sidecar from a validated config: it opens the audit log, loads policy and the CA,
// and builds every room, but touches neither the kernel nor the network. Errors name the file at
// fault.
func New(cfg Config, log zerolog.Logger) (_ *Sidecar, err error) {
	s := &Sidecar{cfg: cfg, log: log, names: dns.NewNames(dns.DefaultMaxNames), origins: &originTable{}}
	s.metrics = metrics.New(s.metricsSources())
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	component := func(name string) zerolog.Logger { return log.With().Str(logfields.Component, name).Logger() }

	// One sidecar per pin dir, and nothing written before it is sure to be the one.
	if cfg.Transparent.Enabled {
		lock, err := Lock(cfg.Transparent.PinDir)
		if err != nil {
			return nil, err
		}
		s.closers = append(s.closers, lock.Close)
	}

	// Policy first: a bad policy must stop start-up before anything is created on disk.
	if s.engine, err = policies.New(cfg.PolicyConfig(), cfg.Mapping, component("policy")); err != nil {
		return nil, err
	}
	if s.audit, err = audit.Open(cfg.Audit, component("audit")); err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	s.closers = append(s.closers, s.audit.Close)
	s.audit.OnFsync(s.metrics.ObserveFsync)

	if s.mount, err = cgroup.FindV2Mount(); err != nil {
		if cfg.Transparent.Enabled {
			return nil, err
		}
		s.mount = "/sys/fs/cgroup"
	}
	if s.trust, err = newTrust(cfg.Authority, s.engine, component("authority")); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, s.trust.close)
	if !cfg.Authority.Stage1() {
		log.Warn().Msg("capabilities are not enforced: no [sidecar.authority] url or public_key_path")
	}
	if s.agents, err = agents.New(agents.Options{Mount: s.mount, Static: cfg.Agents, Store: s.trust.store,
		ClockSkew: cfg.Authority.ClockSkew(), Log: component("agents")}); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, s.agents.Close)
	for _, a := range s.agents.Monitored() {
		log.Warn().Str(logfields.Agent, a.ID).Str(logfields.Cgroup, a.Cgroup).
			Msg("MONITOR MODE: this agent's policy denials are recorded, not enforced")
	}
	s.judge = judge.New(judge.Options{Engine: s.engine, Audit: s.metrics.Recorder(s.audit), Stale: s.trust.stale, Log: component("judge")})

	self := s.selfAddrs()
	serverFirst := map[int]bool{}
	for _, p := range cfg.Transparent.ServerFirstPorts {
		serverFirst[int(p)] = true
	}
	if s.connector, err = connector.New(cfg.Upstream, self); err != nil {
		return nil, err
	}
	if err := s.newL7(component("l7")); err != nil {
		return nil, err
	}
	warnDescriptors(log, cfg.Limits)
	s.limits = judge.NewLimiter(cfg.Limits, s.judge)
	s.limits.OnRefuse(s.metrics.FlowLimitRefused)
	s.front = front.New(front.Options{
		Origins:          s.origins,
		Flow:             s.flowOf,
		Names:            s.names.Lookup,
		Judge:            s.judge,
		Limits:           s.limits,
		Dial:             s.connector.Dial,
		L7:               s.l7,
		ProxyAddr:        s.proxyAddr,
		ProxyAgent:       cfg.Interceptor.AgentID,
		ServerFirstPorts: serverFirst,
		FirstByteWait:    cfg.Transparent.ServerFirstWait.Duration,
		FirstSpeakerWait: cfg.Transparent.FirstSpeakerTimeout.Duration,
		SniffTimeout:     cfg.Transparent.SniffTimeout.Duration,
		IdleTimeout:      cfg.Transparent.IdleTimeout.Duration,
		Offload:          s.offloadTunnel,
		Log:              component("front"),
	})
	return s, nil
}

// warnDescriptors says when one agent's flows alone could use up the sidecar's descriptors: each
// flow holds two (the agent's side and the upstream's).
func warnDescriptors(log zerolog.Logger, l judge.LimitsConfig) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return
	}
	most := l.MaxFlows
	for id := range l.Agents {
		most = max(most, l.For(id).MaxFlows)
	}
	if uint64(2*most) >= lim.Cur {
		log.Warn().Int("max_flows", most).Uint64("nofile", lim.Cur).
			Msg("one agent's flows could use every descriptor the sidecar has: lower [sidecar.limits] max_flows or raise LimitNOFILE")
	}
}

// selfAddrs lists the sidecar's own listeners, which the connector never dials.
func (s *Sidecar) selfAddrs() []netip.AddrPort {
	var self []netip.AddrPort
	if s.cfg.Transparent.Enabled {
		for _, a := range loopbacks(s.cfg.Transparent.IPv6) {
			self = append(self, netip.AddrPortFrom(a, s.cfg.Transparent.Port))
			if s.cfg.Transparent.DNSPort != 0 {
				self = append(self, netip.AddrPortFrom(a, s.cfg.Transparent.DNSPort))
			}
		}
	}
	if ap, err := netip.ParseAddrPort(s.cfg.Interceptor.ListenAddr); err == nil {
		s.proxyAddr = ap
		self = append(self, ap)
	}
	if e, err := metrics.ParseEndpoint(s.cfg.Metrics.ListenAddr); err == nil {
		if ap, ok := e.AddrPort(); ok {
			self = append(self, ap)
		}
	}
	return self
}

// newL7 loads (or, on first start, creates) the CA whenever [sidecar.ca] dir is set — so that it
// exists, and agents can be given it, before https_mitm is turned on — and builds the HTTP engine.
func (s *Sidecar) newL7(log zerolog.Logger) error {
	cfg := s.cfg
	if cfg.Interceptor.ListenAddr != "" && !s.proxyAddr.IsValid() {
		return fmt.Errorf("sidecar.interceptor.listen_addr %q: want address:port", cfg.Interceptor.ListenAddr)
	}
	if cfg.CA.Dir != "" {
		ca, err := l7.LoadOrCreateCA(cfg.CA.Dir, log)
		if err != nil {
			return fmt.Errorf("sidecar.ca.dir %s: %w", cfg.CA.Dir, err)
		}
		s.ca = ca
	}
	roots, err := l7.UpstreamRoots(cfg.Upstream.CAFile)
	if err != nil {
		return fmt.Errorf("sidecar.upstream.ca_file: %w", err)
	}
	var creds l7.Injector
	if cfg.Interceptor.HTTPSMITM.Enabled {
		c, err := credentials.New(cfg.Credentials, os.LookupEnv, log)
		if err != nil {
			return fmt.Errorf("sidecar.credentials: %w", err)
		}
		creds = c
	} else if len(cfg.Credentials) > 0 {
		log.Warn().Msg("[[sidecar.credentials]] set but https_mitm is off: nothing will be injected")
	}
	e, err := l7.New(l7.Options{
		Config:      cfg.Interceptor.HTTPSMITM,
		CA:          s.ca,
		Judge:       s.judge,
		Dial:        s.connector.DialContext,
		RootCAs:     roots,
		Credentials: creds,
		Tunnel: func(ctx context.Context, c net.Conn, p []byte, f *judge.Flow, h string, port int) {
			s.front.Tunnel(ctx, c, p, f, h, port)
		},
		Log: log,
	})
	if err != nil {
		return err
	}
	s.l7 = e
	s.closers = append(s.closers, e.Close)
	return nil
}

// flowOf is the judged flow of a redirected connection: the agent the kernel's cgroup id resolves
// to, and the process behind it.
func (s *Sidecar) flowOf(o bpf.Origin) *judge.Flow {
	f := &judge.Flow{PID: o.PID, UID: o.UID, Comm: o.Comm, Exe: agents.Exe(o.PID), OrigDst: o.Dst, Start: time.Now()}
	a, cg, err := s.agents.Resolve(o.CgroupID)
	f.Cgroup, f.Unknown = cg, err
	if err == nil || errors.Is(err, agents.ErrDeparted) { // departed: named, and refused everything
		f.AgentID, f.SessionID, f.Capability, f.Monitor = a.ID, a.SessionID, a.Capability, a.Monitor
	}
	return f
}

// offloadTunnel hands an allowed tunnel to the kernel's offload, when it is loaded.
func (s *Sidecar) offloadTunnel(agent *net.TCPConn) (front.Queue, error) {
	if s.offload == nil {
		return nil, bpf.ErrUnsupported
	}
	t, err := s.offload.Tunnel(agent)
	if err != nil {
		return nil, err
	}
	return t, nil
}

// Start attaches the kernel programs, then binds the listeners, and returns once everything is in
// place. Attaching first means the origin table exists before the first flow can be accepted: on a
// restart the pinned programs already redirect to the port, and until the sidecar listens those
// connections are refused, never let through.
func (s *Sidecar) Start(ctx context.Context) error {
	cfg := s.cfg
	if cfg.Transparent.Enabled {
		if err := s.attach(); err != nil {
			return err
		}
		if cfg.Transparent.DNSPort != 0 {
			var forward []netip.AddrPort
			for _, ns := range cfg.Upstream.Nameservers {
				ap, err := connector.ParseNameserver(ns)
				if err != nil {
					return fmt.Errorf("sidecar.upstream.nameservers: %w", err)
				}
				forward = append(forward, ap)
			}
			d := dns.New(dns.Options{Origins: s.origins, Flow: s.flowOf, Judge: s.judge, Static: s.connector.Static,
				Forward: forward, Names: s.names, Limits: s.limits, Count: s.metrics.DNSQuery,
				Log: s.log.With().Str(logfields.Component, "dns").Logger()})
			var addrs []netip.AddrPort
			for _, a := range loopbacks(cfg.Transparent.IPv6) {
				addrs = append(addrs, netip.AddrPortFrom(a, cfg.Transparent.DNSPort))
			}
			if err := d.Listen(addrs); err != nil {
				return err
			}
			s.closers = append(s.closers, func() error { d.Shutdown(); return nil })
		}
		for _, a := range loopbacks(cfg.Transparent.IPv6) {
			if err := s.listen(ctx, netip.AddrPortFrom(a, cfg.Transparent.Port), s.counted(metrics.ListenerTransparent, s.front.ServeTransparent)); err != nil {
				return err
			}
		}
	}
	if s.proxyAddr.IsValid() {
		if err := s.listen(ctx, s.proxyAddr, s.counted(metrics.ListenerProxy, s.front.ServeProxy)); err != nil {
			return err
		}
	}
	go func() {
		if err := s.engine.Watch(ctx); err != nil && ctx.Err() == nil {
			s.log.Error().Err(err).Msg("policy watch stopped")
		}
	}()
	if cfg.Debug.ListenAddr != "" {
		if err := s.serveDebug(ctx); err != nil {
			return err
		}
	}
	go s.trust.run(ctx, s.log)
	if s.progs != nil {
		go s.kernelRefusals(ctx, s.progs)
		go s.integrity(ctx, s.progs, integrityInterval)
	}
	if cfg.Control.Socket != "" {
		ln, err := control.Listen(cfg.Control.Socket)
		if err != nil {
			return fmt.Errorf("control socket: %w", err)
		}
		srv := control.NewServer(registry{s}, s.log.With().Str(logfields.Component, "control").Logger())
		go srv.Serve(ctx, ln)
		go s.agents.Sweep(ctx, agents.SweepInterval)
		s.closers = append(s.closers, func() error { ln.Close(); os.Remove(cfg.Control.Socket); return nil })
	}
	return s.serveMetrics()
}

// attach creates the parent cgroup when missing and attaches (or re-uses) the pinned programs.
func (s *Sidecar) attach() error {
	parent := filepath.Join(s.mount, filepath.FromSlash(cgroup.Canonical(s.cfg.Transparent.Cgroup)))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("creating parent cgroup: %w", err)
	}
	reused := bpf.Pinned(s.cfg.Transparent.PinDir)
	t := s.cfg.Transparent
	progs, err := bpf.Attach(bpf.Config{
		Cgroup:       parent,
		PinDir:       t.PinDir,
		SidecarPort:  t.Port,
		DNSPort:      t.DNSPort,
		IPv6:         t.IPv6,
		InboundPorts: t.InboundPorts,
		RefusalRate:  t.RefusalRate,
		RefusalBurst: t.RefusalBurst,
	}, s.log.With().Str(logfields.Component, "bpf").Logger())
	if err != nil {
		return fmt.Errorf("attaching to %s: %w", parent, err)
	}
	s.progs = progs
	s.origins.set(progs)
	s.closers = append(s.closers, progs.Close)
	s.log.Info().Str(logfields.Cgroup, parent).Str(logfields.PinDir, t.PinDir).
		Bool("reused_pins", reused).Msg("programs attached")
	if t.Offload {
		off, err := bpf.OpenOffload()
		if err != nil {
			s.log.Warn().Err(err).Msg("tunnel offload unavailable: every tunnel stays on TCP")
		} else {
			s.offload = off
			s.closers = append(s.closers, off.Close)
		}
	}
	if f := progs.Features(); !f.Complete() {
		// The network path is sealed regardless; these are the protections that need BPF LSM.
		s.log.Warn().Str("features", f.String()).Msg("kernel protections incomplete: rely on firma run's sandbox " +
			"and the agent units' hardening for what is NOT refused")
	} else {
		s.log.Info().Str("features", f.String()).Msg("kernel protections complete")
	}
	return nil
}

// listen binds addr and serves every accepted connection with handle. The accept loop outlives a
// shortage of descriptors (EMFILE, ENFILE): it backs off, reports the sidecar unhealthy meanwhile,
// and carries on once connections close.
func (s *Sidecar) listen(ctx context.Context, addr netip.AddrPort, handle func(context.Context, net.Conn)) error {
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	s.mu.Lock()
	s.listeners = append(s.listeners, ln)
	s.mu.Unlock()
	s.log.Debug().Str(logfields.Listen, addr.String()).Msg("listening")
	go s.acceptLoop(ctx, ln, addr, handle)
	return nil
}

func (s *Sidecar) acceptLoop(ctx context.Context, ln net.Listener, addr netip.AddrPort, handle func(context.Context, net.Conn)) {
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if !temporaryAccept(err) {
				s.log.Error().Err(err).Str(logfields.Listen, addr.String()).Msg("accept failed: listener stopped")
				return
			}
			if backoff == 0 {
				backoff = 5 * time.Millisecond
				s.starved.Add(1)
				s.log.Error().Err(err).Str(logfields.Listen, addr.String()).Msg("accept failed: backing off")
			} else {
				backoff = min(2*backoff, time.Second)
			}
			select {
			case <-time.After(backoff):
				continue
			case <-ctx.Done():
				s.starved.Add(-1)
				return
			}
		}
		if backoff != 0 {
			backoff = 0
			s.starved.Add(-1)
			s.log.Info().Str(logfields.Listen, addr.String()).Msg("accepting again")
		}
		s.flows.Add(1)
		go func() {
			defer s.flows.Done()
			handle(ctx, conn)
		}()
	}
}

// temporaryAccept reports whether an accept error is worth retrying: running out of descriptors or
// memory, or a connection aborted before it was accepted.
func temporaryAccept(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
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

// Healthy reports why the sidecar cannot serve safely, or nil: an audit log that cannot be written
// means every new flow is denied; an accept loop out of descriptors accepts nothing.
func (s *Sidecar) Healthy() error {
	if err := s.audit.Healthy(); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	if n := s.starved.Load(); n > 0 {
		return fmt.Errorf("%d listener(s) cannot accept: out of file descriptors", n)
	}
	if err := s.kernelErr(); err != nil {
		return fmt.Errorf("kernel: %w", err)
	}
	return nil
}

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

// originTable answers origin lookups from the attached programs, or — before they are attached, or
// without them — with no record, so that every flow is refused.
type originTable struct {
	mu    sync.RWMutex
	progs *bpf.Programs
}

func (t *originTable) set(p *bpf.Programs) {
	t.mu.Lock()
	t.progs = p
	t.mu.Unlock()
}

func (t *originTable) Lookup(peer netip.AddrPort) (bpf.Origin, error) {
	t.mu.RLock()
	p := t.progs
	t.mu.RUnlock()
	if p == nil {
		return bpf.Origin{}, bpf.ErrNoOrigin
	}
	return p.Lookup(peer)
}

func (t *originTable) LookupDNS(peer netip.AddrPort, proto bpf.Proto) (bpf.Origin, error) {
	t.mu.RLock()
	p := t.progs
	t.mu.RUnlock()
	if p == nil {
		return bpf.Origin{}, bpf.ErrNoOrigin
	}
	return p.LookupDNS(peer, proto)
}
