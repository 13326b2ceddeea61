package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfirma/firma/daemon/audit"
)

// Sources are the values that live in other parts of the sidecar, read at every scrape. A nil field
// is a part the sidecar does not run (no transparent path, no CA, no authority): its series are
// left out.
type Sources struct {
	// Kernel returns the kernel programs' own counters by name (bpf.Programs.Counters).
	Kernel func() (map[string]uint64, error)
	// Programs is nil while the kernel programs are attached and in force, else what is wrong.
	Programs func() error
	// Protections says which optional kernel protections are in force, by name.
	Protections func() map[string]bool
	// Backoff is how many listeners are backing off for want of file descriptors.
	Backoff func() int
	// Audit is nil while the audit log can be written.
	Audit func() error
	// AuditStats reads the audit log's forwarding and refusal-limit counters (audit.Writer.Stats).
	AuditStats func() audit.Stats
	// Leaves reads the MITM leaf cache's counters.
	Leaves func() LeafStats
	// Bundle reads the authority client's view of the policy bundle; ok is false when there is none.
	Bundle func() (b BundleStatus, ok bool)
	// Health is the /healthz report, exported as firma_ready and firma_health_check_ok.
	Health func() Health
}

// LeafStats are the MITM leaf cache's counters (l7.Engine.Stats).
type LeafStats struct {
	Mints, Hits int64
	Cached      int
}

// BundleStatus is the authority client's view of the policy bundle (authority.Client.Status).
type BundleStatus struct {
	// Age is how long ago the authority last confirmed the bundle (both feeds).
	Age         time.Duration
	Stale       bool
	Revocations int
	// Rejections counts the authority's answers the client refused, by reason (a bounded set:
	// wrong_key, bad_signature, expired, replayed…); PollErrors the polls that got no answer to
	// judge, by reason; Failovers the moves from one authority URL to another.
	Rejections map[string]uint64
	PollErrors map[string]uint64
	Failovers  uint64
}

var (
	descKernel      = prometheus.NewDesc(NameKernel, "The kernel programs' own counters (redirects, refusals, drops, refusal reports), by name, summed over CPUs.", []string{"counter"}, nil)
	descInForce     = prometheus.NewDesc(NameKernelInForce, "1 when every kernel program is attached, pinned and firma's own.", nil, nil)
	descProtection  = prometheus.NewDesc(NameKernelProtection, "1 when an optional kernel protection (BPF LSM) is in force.", []string{"protection"}, nil)
	descBackoff     = prometheus.NewDesc(NameAcceptBackoff, "Listeners backing off for want of file descriptors (they accept nothing meanwhile).", nil, nil)
	descWritable    = prometheus.NewDesc(NameAuditWritable, "1 while the audit log can be written (else every new flow is denied).", nil, nil)
	descSuppressed  = prometheus.NewDesc(NameAuditSuppressed, "Refusal records the audit log's per-agent rate limit kept out (each run is summarised by a suppressed record).", nil, nil)
	descSinkSent    = prometheus.NewDesc(NameSinkSent, "Audit records a sink handed to its destination.", []string{"sink"}, nil)
	descSinkDropped = prometheus.NewDesc(NameSinkDropped, "Audit records a sink never sent (queue full, too large, or still queued at exit); the file has them.", []string{"sink"}, nil)
	descSinkRetries = prometheus.NewDesc(NameSinkRetries, "Failed delivery attempts of a sink, each followed by a reconnect.", []string{"sink"}, nil)
	descSinkQueued  = prometheus.NewDesc(NameSinkQueued, "Audit records waiting in a sink's queue.", []string{"sink"}, nil)
	descSinkUp      = prometheus.NewDesc(NameSinkUp, "1 unless a sink's last delivery attempt failed.", []string{"sink"}, nil)
	descLeafMints   = prometheus.NewDesc(NameLeafMints, "MITM leaf certificates signed.", nil, nil)
	descLeafHits    = prometheus.NewDesc(NameLeafHits, "MITM handshakes served a cached leaf.", nil, nil)
	descLeaves      = prometheus.NewDesc(NameLeavesCached, "MITM leaves in the cache.", nil, nil)
	descBundle      = prometheus.NewDesc(NameBundlePresent, "1 when the sidecar holds a verified policy bundle from its authority.", nil, nil)
	descBundleAge   = prometheus.NewDesc(NameBundleAge, "Seconds since the authority last confirmed the policy bundle.", nil, nil)
	descBundleStale = prometheus.NewDesc(NameBundleStale, "1 when the bundle is past its TTL: every decision is a DENY.", nil, nil)
	descRevocations = prometheus.NewDesc(NameRevocations, "Capability revocations the sidecar knows of.", nil, nil)
	descRejections  = prometheus.NewDesc(NameRejections, "Answers from the authority the sidecar refused (a bundle or revocation list that does not verify, is stale or replayed…), by reason.", []string{"reason"}, nil)
	descPollErrors  = prometheus.NewDesc(NamePollErrors, "Polls of the authority that got no answer to judge, by reason.", []string{"reason"}, nil)
	descFailovers   = prometheus.NewDesc(NameFailovers, "Moves from one authority URL to another.", nil, nil)
	descReady       = prometheus.NewDesc(NameReady, "1 when every /healthz check passes.", nil, nil)
	descCheck       = prometheus.NewDesc(NameHealthCheck, "1 when the /healthz check passes.", []string{"check"}, nil)
)

// collector reads Sources at scrape time.
type collector struct{ src Sources }

// Describe sends nothing: the series present depend on what the sidecar runs, so the collector is
// unchecked.
func (c *collector) Describe(chan<- *prometheus.Desc) {}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.src
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	if s.Kernel != nil {
		counters, err := s.Kernel()
		if err != nil {
			ch <- prometheus.NewInvalidMetric(descKernel, err)
			counters = nil
		}
		for name, v := range counters {
			counter(descKernel, float64(v), name)
		}
	}
	if s.Programs != nil {
		gauge(descInForce, bool01(s.Programs() == nil))
	}
	if s.Protections != nil {
		for name, on := range s.Protections() {
			gauge(descProtection, bool01(on), name)
		}
	}
	if s.Backoff != nil {
		gauge(descBackoff, float64(s.Backoff()))
	}
	if s.Audit != nil {
		gauge(descWritable, bool01(s.Audit() == nil))
	}
	if s.AuditStats != nil {
		st := s.AuditStats()
		counter(descSuppressed, float64(st.Suppressed))
		for _, k := range st.Sinks {
			counter(descSinkSent, float64(k.Sent), k.Name)
			counter(descSinkDropped, float64(k.Dropped), k.Name)
			counter(descSinkRetries, float64(k.Retries), k.Name)
			gauge(descSinkQueued, float64(k.Queued), k.Name)
			gauge(descSinkUp, bool01(k.Up), k.Name)
		}
	}
	if s.Leaves != nil {
		l := s.Leaves()
		counter(descLeafMints, float64(l.Mints))
		counter(descLeafHits, float64(l.Hits))
		gauge(descLeaves, float64(l.Cached))
	}
	if s.Bundle != nil {
		b, ok := s.Bundle()
		gauge(descBundle, bool01(ok))
		if ok {
			gauge(descBundleAge, b.Age.Seconds())
			gauge(descRevocations, float64(b.Revocations))
		}
		gauge(descBundleStale, bool01(!ok || b.Stale))
		for reason, n := range b.Rejections {
			counter(descRejections, float64(n), reason)
		}
		for reason, n := range b.PollErrors {
			counter(descPollErrors, float64(n), reason)
		}
		counter(descFailovers, float64(b.Failovers))
	}
	if s.Health != nil {
		h := s.Health()
		gauge(descReady, bool01(h.Ready))
		for name, r := range h.Checks {
			gauge(descCheck, bool01(r.OK), name)
		}
	}
}

func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
