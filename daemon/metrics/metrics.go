// Package metrics owns what the sidecar tells its operator while it runs: the Prometheus metrics
// (github.com/prometheus/client_golang, in a registry of its own), the /healthz readiness report,
// the HTTP handler serving both on [sidecar.metrics] listen_addr, and the client `firma sidecar
// status` reads them with.
//
// Decisions, flows and bytes are counted from the audit records as they are appended (Recorder
// wraps the judge's recorder), so that the counters say exactly what the audit log says. The rooms
// report the rest through one call each (DNSQuery, FlowStarted, ObserveFsync); values that live
// elsewhere — the kernel's counters, the leaf cache, the authority bundle, the programs' integrity —
// are read from Sources when scraped.
//
// No label takes a host, a path or a reason: those are unbounded. Agent ids and action classes are
// bounded by configuration, and capped besides (MaxAgents, MaxActionClasses: the rest count under
// "_other").
//
// The package decides nothing and changes nothing: it counts what it is told and reads what it is
// given. It imports no room but the audit log's record type.
package metrics

import (
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/policies"
	"github.com/openfirma/firma/version"
)

// Metric names: the contract with dashboards and alerts, and what `firma sidecar status` reads.
const (
	NameDecisions        = "firma_decisions_total"
	NameFlowsCompleted   = "firma_flows_completed_total"
	NameFlowBytes        = "firma_flow_bytes_total"
	NameFlowDuration     = "firma_flow_duration_seconds"
	NameFlowsActive      = "firma_flows_active"
	NameFlowLimits       = "firma_flow_limit_refusals_total"
	NameConnections      = "firma_connections_accepted_total"
	NameDNSQueries       = "firma_dns_queries_total"
	NameAuditRecords     = "firma_audit_records_total"
	NameAuditErrors      = "firma_audit_append_errors_total"
	NameAuditWritable    = "firma_audit_writable"
	NameAuditSuppressed  = "firma_audit_suppressed_total"
	NameSinkSent         = "firma_audit_sink_sent_total"
	NameSinkDropped      = "firma_audit_sink_dropped_total"
	NameSinkRetries      = "firma_audit_sink_retries_total"
	NameSinkQueued       = "firma_audit_sink_queued"
	NameSinkUp           = "firma_audit_sink_up"
	NameFsync            = "firma_audit_fsync_seconds"
	NameFsyncErrors      = "firma_audit_fsync_errors_total"
	NameKernel           = "firma_kernel_counter_total"
	NameKernelInForce    = "firma_kernel_programs_in_force"
	NameKernelProtection = "firma_kernel_protection"
	NameKernelFaults     = "firma_kernel_integrity_faults_total"
	NameKernelRepairs    = "firma_kernel_repairs_total"
	NameAcceptBackoff    = "firma_accept_backoff_listeners"
	NameBundlePresent    = "firma_authority_bundle_present"
	NameBundleAge        = "firma_authority_bundle_age_seconds"
	NameBundleStale      = "firma_authority_bundle_stale"
	NameRevocations      = "firma_authority_revocations"
	NameRejections       = "firma_authority_rejections_total"
	NamePollErrors       = "firma_authority_poll_errors_total"
	NameFailovers        = "firma_authority_failovers_total"
	NameLeafMints        = "firma_mitm_leaf_mints_total"
	NameLeafHits         = "firma_mitm_leaf_cache_hits_total"
	NameLeavesCached     = "firma_mitm_leaves_cached"
	NameReady            = "firma_ready"
	NameHealthCheck      = "firma_health_check_ok"
	NameBuildInfo        = "firma_build_info"
)

// Listeners, the label of firma_flows_active and firma_connections_accepted_total.
const (
	ListenerTransparent = "transparent" // flows the kernel redirected
	ListenerProxy       = "proxy"       // the explicit proxy
)

// Caps on distinct label values; further values count under OtherLabel.
const (
	MaxAgents        = 500
	MaxActionClasses = 200
	OtherLabel       = "_other"
)

// Metrics is the sidecar's set of metrics. Its methods are safe for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	decisions     *prometheus.CounterVec
	completed     *prometheus.CounterVec
	bytes         *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	active        *prometheus.GaugeVec
	accepted      *prometheus.CounterVec
	dns           *prometheus.CounterVec
	limited       *prometheus.CounterVec
	auditRecords  *prometheus.CounterVec
	auditErrors   prometheus.Counter
	fsync         prometheus.Histogram
	fsyncErrors   prometheus.Counter
	kernelFaults  prometheus.Counter
	kernelRepairs prometheus.Counter

	agents  *capped
	actions *capped
}

// New builds the metrics, reading the values that live elsewhere from src when scraped.
func New(src Sources) *Metrics {
	m := &Metrics{
		reg:     prometheus.NewRegistry(),
		agents:  newCapped(MaxAgents),
		actions: newCapped(MaxActionClasses),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: NameDecisions,
			Help: "Decisions recorded in the audit log, by outcome, action class, agent, transport mode and whether enforced (false: the agent is in monitor mode and a DENY was let through); a decision whose record could not be written counts as the DENY it became. Refusal records the audit log's rate limit kept out are in " + NameAuditSuppressed + "."},
			[]string{"outcome", "action_class", "agent", "mode", "enforced"}),
		completed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: NameFlowsCompleted,
			Help: "Allowed flows and requests whose completion was recorded, by mode, agent and result (ok, or error: the upstream failed or the client went away)."},
			[]string{"mode", "agent", "result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: NameFlowBytes,
			Help: "Bytes carried by completed flows and requests: up is agent to upstream, down upstream to agent."},
			[]string{"direction", "mode", "agent"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: NameFlowDuration,
			Help:    "Duration of completed flows and requests, by mode.",
			Buckets: []float64{.005, .025, .1, .5, 1, 5, 30, 120, 600, 3600}},
			[]string{"mode"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: NameFlowsActive,
			Help: "TCP connections the sidecar is serving now, by listener."}, []string{"listener"}),
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{Name: NameConnections,
			Help: "TCP connections accepted, by listener."}, []string{"listener"}),
		dns: prometheus.NewCounterVec(prometheus.CounterOpts{Name: NameDNSQueries,
			Help: "DNS queries to the sidecar's resolver, by outcome: answered, denied, failed (allowed; the upstream failed), malformed, no_origin (no kernel record: refused)."},
			[]string{"outcome"}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{Name: NameFlowLimits,
			Help: "Flows cut because their agent was over a [sidecar.limits] limit (max_flows, new_flows_per_second), by agent (\"\" for a cgroup without one); the audit log's limit records each stand for several."},
			[]string{"agent", "limit"}),
		auditRecords: prometheus.NewCounterVec(prometheus.CounterOpts{Name: NameAuditRecords,
			Help: "Decision and completion records appended to the audit log."}, []string{"kind"}),
		auditErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: NameAuditErrors,
			Help: "Records the audit log refused (not written); every refused decision was a DENY."}),
		fsync: prometheus.NewHistogram(prometheus.HistogramOpts{Name: NameFsync,
			Help:    "Time an fsync of the live audit file took.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}}),
		fsyncErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: NameFsyncErrors,
			Help: "fsyncs of the audit file that failed."}),
		kernelFaults: prometheus.NewCounter(prometheus.CounterOpts{Name: NameKernelFaults,
			Help: "Integrity checks that found a kernel program detached, unpinned, moved or replaced."}),
		kernelRepairs: prometheus.NewCounter(prometheus.CounterOpts{Name: NameKernelRepairs,
			Help: "Kernel programs put back in force after an integrity fault."}),
	}
	m.reg.MustRegister(m.decisions, m.completed, m.bytes, m.duration, m.active, m.accepted, m.dns, m.limited,
		m.auditRecords, m.auditErrors, m.fsync, m.fsyncErrors, m.kernelFaults, m.kernelRepairs,
		&collector{src: src},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	info := version.Get()
	build := prometheus.NewGauge(prometheus.GaugeOpts{Name: NameBuildInfo, Help: "The running firma: version, commit, Go.",
		ConstLabels: prometheus.Labels{"version": info.Version, "commit": info.Commit, "goversion": info.Go}})
	build.Set(1)
	m.reg.MustRegister(build)
	// Series an operator alerts on exist from the start, at zero.
	for _, l := range []string{ListenerTransparent, ListenerProxy} {
		m.active.WithLabelValues(l)
		m.accepted.WithLabelValues(l)
	}
	for _, o := range dnsOutcomes {
		m.dns.WithLabelValues(o)
	}
	for _, k := range []audit.Kind{audit.KindDecision, audit.KindCompletion} {
		m.auditRecords.WithLabelValues(string(k))
	}
	return m
}

// Registry is the registry every firma metric is in (for tests and embedding).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Appender appends audit records: *audit.Writer, and what the judge records through.
type Appender interface {
	Append(ev *audit.Event) error
	// AppendLimited appends a refusal record unless its agent's budget for class is used up
	// (written false): audit.Writer.AppendLimited.
	AppendLimited(class string, ev *audit.Event) (written bool, err error)
}

// Recorder returns an Appender that appends through next and counts each record once next has
// answered: decisions by outcome, action class, agent, mode and enforcement; completions and their
// bytes. A record the rate limit kept out is not counted here (the writer counts it).
func (m *Metrics) Recorder(next Appender) Appender { return recorder{m: m, next: next} }

type recorder struct {
	m    *Metrics
	next Appender
}

func (r recorder) Append(ev *audit.Event) error {
	err := r.next.Append(ev)
	r.m.observe(ev, err)
	return err
}

func (r recorder) AppendLimited(class string, ev *audit.Event) (bool, error) {
	written, err := r.next.AppendLimited(class, ev)
	if written || err != nil {
		r.m.observe(ev, err)
	}
	return written, err
}

// observe counts one record that next accepted (err nil) or refused.
func (m *Metrics) observe(ev *audit.Event, err error) {
	if ev == nil {
		return
	}
	if err != nil {
		m.auditErrors.Inc()
	} else {
		m.auditRecords.WithLabelValues(string(ev.Kind)).Inc()
	}
	var env audit.Envelope
	if ev.Envelope != nil {
		env = *ev.Envelope
	}
	agent, mode := m.agents.label(env.Agent.AgentID), env.Transport.Mode
	switch ev.Kind {
	case audit.KindDecision:
		outcome, enforced := "", "true"
		if ev.Decision != nil {
			outcome = ev.Decision.Outcome
			if ev.Decision.Enforced != nil && !*ev.Decision.Enforced {
				enforced = "false"
			}
		}
		if err != nil {
			// The judge denies whatever it decided when the decision's record cannot be written.
			outcome = string(policies.Deny)
		}
		action := ""
		if env.Intent.ActionClass != nil {
			action = m.actions.label(*env.Intent.ActionClass)
		}
		m.decisions.WithLabelValues(outcome, action, agent, mode, enforced).Inc()
	case audit.KindCompletion:
		if ev.Result == nil {
			return
		}
		result := "ok"
		if ev.Result.Error != "" {
			result = "error"
		}
		m.completed.WithLabelValues(mode, agent, result).Inc()
		m.bytes.WithLabelValues("up", mode, agent).Add(float64(max(ev.Result.BytesUp, 0)))
		m.bytes.WithLabelValues("down", mode, agent).Add(float64(max(ev.Result.BytesDown, 0)))
		m.duration.WithLabelValues(mode).Observe(float64(ev.Result.DurationMS) / 1000)
	}
}

// FlowStarted counts a connection accepted on listener and returns the function that ends it.
func (m *Metrics) FlowStarted(listener string) (done func()) {
	m.accepted.WithLabelValues(listener).Inc()
	g := m.active.WithLabelValues(listener)
	g.Inc()
	return g.Dec
}

// Outcomes of a DNS query, the label of firma_dns_queries_total.
const (
	DNSAnswered  = "answered"  // allowed and answered
	DNSDenied    = "denied"    // refused by a decision
	DNSFailed    = "failed"    // allowed, but no upstream answered
	DNSMalformed = "malformed" // not one standard question, or not DNS at all
	DNSNoOrigin  = "no_origin" // no kernel record for the socket: refused unjudged
)

var dnsOutcomes = []string{DNSAnswered, DNSDenied, DNSFailed, DNSMalformed, DNSNoOrigin}

// DNSQuery counts one query to the resolver by its outcome (one of the DNS* constants).
func (m *Metrics) DNSQuery(outcome string) { m.dns.WithLabelValues(outcome).Inc() }

// FlowLimitRefused counts one flow cut by agent's flow limits; limit names the one that cut it
// (judge.Limiter.OnRefuse).
func (m *Metrics) FlowLimitRefused(agent, limit string) {
	m.limited.WithLabelValues(m.agents.label(agent), limit).Inc()
}

// ObserveFsync records one fsync of the audit file: how long it took and whether it failed.
func (m *Metrics) ObserveFsync(took time.Duration, err error) {
	m.fsync.Observe(took.Seconds())
	if err != nil {
		m.fsyncErrors.Inc()
	}
}

// KernelFault counts an integrity check that found the kernel programs not in force.
func (m *Metrics) KernelFault() { m.kernelFaults.Inc() }

// KernelRepaired counts a repair that put them back in force.
func (m *Metrics) KernelRepaired() { m.kernelRepairs.Inc() }

// Handler serves /metrics from the registry and /healthz from health: 200 when ready, 503 when
// not, the same JSON either way. Anything else is 404; methods other than GET and HEAD are 405.
func (m *Metrics) Handler(health func() Health) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		// A source that fails (the kernel's counters unreadable) leaves its series out, not the rest.
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { health().serve(w) })
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("firma sidecar: /healthz (readiness, JSON), /metrics (Prometheus)\n"))
	})
	return mux
}

// capped hands out label values, the first max distinct ones as they are, later ones as OtherLabel,
// so that no label grows without bound whatever the agents are called.
type capped struct {
	max  int
	mu   sync.RWMutex
	seen map[string]bool
}

func newCapped(max int) *capped { return &capped{max: max, seen: map[string]bool{}} }

func (c *capped) label(v string) string {
	c.mu.RLock()
	ok := c.seen[v]
	c.mu.RUnlock()
	if ok {
		return v
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen[v] {
		return v
	}
	if len(c.seen) >= c.max {
		return OtherLabel
	}
	c.seen[v] = true
	return v
}
