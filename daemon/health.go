package daemon

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/daemon/metrics"
	"github.com/openfirma/firma/internal/logfields"
)

// Names of the /healthz checks: the sidecar is ready when all of them pass.
const (
	CheckPrograms  = "programs"  // the kernel programs attached, pinned and firma's own
	CheckListeners = "listeners" // every listener bound and accepting
	CheckAudit     = "audit"     // the audit log can be written
	CheckBundle    = "bundle"    // the authority's policy bundle is fresh
)

// serveMetrics starts the /healthz and /metrics listener of [sidecar.metrics], when configured. It
// starts last, so that a sidecar that answers /healthz has everything else in place.
func (s *Sidecar) serveMetrics() error {
	if !s.cfg.Metrics.Enabled() {
		return nil
	}
	e, err := metrics.ParseEndpoint(s.cfg.Metrics.ListenAddr)
	if err != nil {
		return fmt.Errorf("sidecar.metrics.listen_addr: %w", err)
	}
	ln, err := metrics.Listen(e)
	if err != nil {
		return err
	}
	mlog := s.log.With().Str(logfields.Component, "metrics").Logger()
	srv := &http.Server{
		Handler:           s.metrics.Handler(s.Health),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          log.New(zerologWriter{mlog}, "", 0),
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			mlog.Error().Err(err).Msg("metrics listener stopped")
		}
	}()
	s.closers = append(s.closers, srv.Close)
	mlog.Info().Str(logfields.Listen, e.String()).Msg("serving /healthz and /metrics")
	if !e.Local() {
		mlog.Warn().Str(logfields.Listen, e.String()).
			Msg("/metrics and /healthz are served beyond this host (allow_remote): they name agents and have no authentication")
	}
	return nil
}

// zerologWriter carries the HTTP server's own complaints (bad requests, TLS probes) to the log.
type zerologWriter struct{ log zerolog.Logger }

func (w zerologWriter) Write(p []byte) (int, error) {
	w.log.Debug().Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}

// counted wraps a listener's handler so that its connections are counted while they are served.
func (s *Sidecar) counted(listener string, handle func(context.Context, net.Conn)) func(context.Context, net.Conn) {
	return func(ctx context.Context, c net.Conn) {
		defer s.metrics.FlowStarted(listener)()
		handle(ctx, c)
	}
}

// Health runs the readiness checks /healthz reports.
func (s *Sidecar) Health() metrics.Health {
	return metrics.Evaluate([]metrics.Check{
		{Name: CheckPrograms, Run: s.checkPrograms},
		{Name: CheckListeners, Run: s.checkListeners},
		{Name: CheckAudit, Run: s.checkAudit},
		{Name: CheckBundle, Run: s.checkBundle},
	})
}

// checkPrograms asks the kernel now whether every link is in force, and the integrity loop what it
// last found: either one finding a fault fails the check until the loop has repaired it.
func (s *Sidecar) checkPrograms() (string, error) {
	if !s.cfg.Transparent.Enabled {
		return "transparent path off: explicit proxy only", nil
	}
	p := s.progs
	if p == nil {
		return "", errors.New("kernel programs not attached")
	}
	st := p.Check()
	if err := st.Err(); err != nil {
		return "", err
	}
	if err := s.kernelErr(); err != nil {
		return "", fmt.Errorf("integrity check: %w", err)
	}
	detail := fmt.Sprintf("%d links in force on %s", len(st.Links), st.Cgroup)
	var missing []string
	for name, on := range protections(p.Features()) {
		if !on {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		detail += "; not refused without BPF LSM: " + strings.Join(missing, ", ") + " (firma doctor says why)"
	}
	return detail, nil
}

// checkListeners: every TCP listener is bound and none is starved of file descriptors.
func (s *Sidecar) checkListeners() (string, error) {
	s.mu.Lock()
	var addrs []string
	for _, ln := range s.listeners {
		addrs = append(addrs, ln.Addr().String())
	}
	s.mu.Unlock()
	want := 0
	if s.cfg.Transparent.Enabled {
		want += len(loopbacks(s.cfg.Transparent.IPv6))
	}
	if s.proxyAddr.IsValid() {
		want++
	}
	detail := "tcp " + strings.Join(addrs, ", ")
	if s.cfg.Transparent.Enabled && s.cfg.Transparent.DNSPort != 0 {
		var dns []string
		for _, a := range loopbacks(s.cfg.Transparent.IPv6) {
			dns = append(dns, netip.AddrPortFrom(a, s.cfg.Transparent.DNSPort).String())
		}
		detail += "; dns " + strings.Join(dns, ", ")
	}
	switch {
	case len(addrs) < want:
		return "", fmt.Errorf("%d of %d listeners bound (stopping?)", len(addrs), want)
	case s.starved.Load() > 0:
		return detail, fmt.Errorf("%d listener(s) cannot accept: out of file descriptors", s.starved.Load())
	}
	return detail, nil
}

func (s *Sidecar) checkAudit() (string, error) {
	if err := s.audit.Healthy(); err != nil {
		return "", fmt.Errorf("%w: every new flow is denied", err)
	}
	return s.cfg.Audit.FilePath + " writable", nil
}

// checkBundle: with an authority, the policy bundle must be present and fresh (else every decision
// is a DENY).
func (s *Sidecar) checkBundle() (string, error) {
	c := s.trust.client
	if c == nil {
		if s.cfg.Authority.Stage1() {
			return "capabilities checked with public_key_path; policy from [sidecar.policy]", nil
		}
		return "no [sidecar.authority]: policy from [sidecar.policy]", nil
	}
	st := c.Status()
	// The last answer the sidecar refused, in every detail: a wrong key or a replay is loud.
	rejected := ""
	if r := st.LastRejection; r != nil {
		rejected = fmt.Sprintf("; last rejected %s ago from %s (%s): %s", time.Since(r.Time).Round(time.Second), r.URL, r.Reason, r.Error)
	}
	if st.Version == "" {
		return "", fmt.Errorf("no policy bundle from %s yet: every decision is a DENY%s", st.URL, rejected)
	}
	age := st.Age.Round(time.Second)
	if st.Stale {
		return "", fmt.Errorf("bundle %.19s… last confirmed %s ago, stale since %s: every decision is a DENY%s",
			st.Version, age, st.Deadline.UTC().Format(time.RFC3339), rejected)
	}
	return fmt.Sprintf("bundle %.19s… from %s confirmed %s ago, stale in %s%s", st.Version, st.URL, age,
		time.Until(st.Deadline).Round(time.Second), rejected), nil
}

// metricsSources are what /metrics reads from the rest of the sidecar at each scrape. Each reads
// the sidecar's fields when called: the metrics exist before the rooms do.
func (s *Sidecar) metricsSources() metrics.Sources {
	src := metrics.Sources{
		Backoff:    func() int { return int(s.starved.Load()) },
		Audit:      func() error { return s.audit.Healthy() },
		AuditStats: func() audit.Stats { return s.audit.Stats() },
		Health:     s.Health,
	}
	if s.cfg.Transparent.Enabled {
		src.Kernel = func() (map[string]uint64, error) {
			if s.progs == nil {
				return nil, nil
			}
			return s.progs.Counters()
		}
		src.Programs = func() error {
			_, err := s.checkPrograms()
			return err
		}
		src.Protections = func() map[string]bool {
			if s.progs == nil {
				return nil
			}
			return protections(s.progs.Features())
		}
	}
	if s.cfg.CA.Dir != "" {
		src.Leaves = func() metrics.LeafStats {
			st := s.l7.Stats()
			return metrics.LeafStats{Mints: st.LeafMints, Hits: st.LeafCacheHits, Cached: st.LeafCached}
		}
	}
	if s.cfg.Authority.Enabled() {
		src.Bundle = func() (metrics.BundleStatus, bool) {
			st := s.trust.client.Status()
			b := metrics.BundleStatus{Age: st.Age, Stale: st.Stale, Revocations: st.Revocations,
				Rejections: st.Rejections, PollErrors: st.PollErrors, Failovers: st.Failovers}
			return b, st.Version != ""
		}
	}
	return src
}

// protections names the optional kernel protections and whether each is in force.
func protections(f bpf.Features) map[string]bool {
	return map[string]bool{"socket_families": f.SocketFamilies, "compat_sockopt": f.CompatSockopt,
		"bpf_syscall": f.BPFSyscall, "tun_devices": f.TunDevices}
}
