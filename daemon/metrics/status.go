package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// maxBody bounds what the client reads of one response.
const maxBody = 16 << 20

// Status is what `firma sidecar status` shows: the sidecar's /healthz, and its /metrics summed up.
type Status struct {
	Endpoint string  `json:"endpoint"`
	Health   Health  `json:"health"`
	Summary  Summary `json:"summary"`
}

// Summary is the part of /metrics an operator looks at first.
type Summary struct {
	Version       string  `json:"version,omitempty"`
	UptimeSeconds float64 `json:"uptime_seconds,omitempty"`
	// Decisions counts decisions by outcome; DecisionsByAgent by agent, then outcome ("" is an
	// unknown agent).
	Decisions        map[string]float64            `json:"decisions"`
	DecisionsByAgent map[string]map[string]float64 `json:"decisions_by_agent"`
	FlowsActive      float64                       `json:"flows_active"`
	FlowsCompleted   float64                       `json:"flows_completed"`
	FlowsFailed      float64                       `json:"flows_failed"`
	// FlowsLimited counts flows cut by [sidecar.limits], by agent.
	FlowsLimited map[string]float64 `json:"flows_limited,omitempty"`
	BytesUp      float64            `json:"bytes_up"`
	BytesDown    float64            `json:"bytes_down"`
	DNS          map[string]float64 `json:"dns"`
	// Kernel holds every kernel counter; KernelRefusals sums the refusals and drops among them.
	Kernel          map[string]float64 `json:"kernel,omitempty"`
	KernelRefusals  float64            `json:"kernel_refusals"`
	ProgramsInForce *bool              `json:"programs_in_force,omitempty"`
	KernelRepairs   float64            `json:"kernel_repairs"`
	AcceptBackoff   float64            `json:"accept_backoff_listeners"`
	// Bundle is nil without an authority.
	Bundle *BundleSummary `json:"bundle,omitempty"`
	Audit  AuditSummary   `json:"audit"`
	// Leaves is nil without a CA.
	Leaves *LeafSummary `json:"leaves,omitempty"`
}

// BundleSummary is the authority bundle as the sidecar holds it.
type BundleSummary struct {
	Present     bool    `json:"present"`
	AgeSeconds  float64 `json:"age_seconds"`
	Stale       bool    `json:"stale"`
	Revocations float64 `json:"revocations"`
	// Rejections counts the authority's answers the sidecar refused, by reason.
	Rejections map[string]float64 `json:"rejections,omitempty"`
	PollErrors map[string]float64 `json:"poll_errors,omitempty"`
}

// AuditSummary is the audit log's side.
type AuditSummary struct {
	Records      float64 `json:"records"`
	AppendErrors float64 `json:"append_errors"`
	Fsyncs       float64 `json:"fsyncs"`
	FsyncErrors  float64 `json:"fsync_errors"`
	FsyncMeanMS  float64 `json:"fsync_mean_ms"`
	// Suppressed counts refusal records the per-agent rate limit kept out.
	Suppressed float64 `json:"suppressed"`
	// Sinks are the forwarding destinations, by name.
	Sinks map[string]SinkSummary `json:"sinks,omitempty"`
}

// SinkSummary is one audit forwarding destination.
type SinkSummary struct {
	Sent    float64 `json:"sent"`
	Dropped float64 `json:"dropped"`
	Queued  float64 `json:"queued"`
	Up      bool    `json:"up"`
}

// LeafSummary is the MITM leaf cache's side.
type LeafSummary struct {
	Mints  float64 `json:"mints"`
	Hits   float64 `json:"hits"`
	Cached float64 `json:"cached"`
}

// Fetch reads /healthz and /metrics from the sidecar serving listenAddr. A not-ready sidecar is
// not an error: Status.Health says so.
func Fetch(ctx context.Context, listenAddr string, timeout time.Duration) (Status, error) {
	c, err := newClient(listenAddr)
	if err != nil {
		return Status{}, err
	}
	e := c.e
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st := Status{Endpoint: e.String()}
	if st.Health, err = c.health(ctx); err != nil {
		return st, err
	}
	code, body, err := c.get(ctx, "/metrics")
	if err != nil {
		return st, err
	}
	if code != http.StatusOK {
		return st, fmt.Errorf("GET %s/metrics: %d %s", e, code, http.StatusText(code))
	}
	fams, err := ParseText(strings.NewReader(string(body)))
	if err != nil {
		return st, fmt.Errorf("GET %s/metrics: %w", e, err)
	}
	st.Summary = Summarize(fams)
	return st, nil
}

// FetchHealth reads /healthz from the sidecar serving listenAddr: a not-ready sidecar (503) is not
// an error, Health.Ready says so.
func FetchHealth(ctx context.Context, listenAddr string, timeout time.Duration) (Health, error) {
	c, err := newClient(listenAddr)
	if err != nil {
		return Health{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return c.health(ctx)
}

func (c *client) health(ctx context.Context) (Health, error) {
	var h Health
	code, body, err := c.get(ctx, "/healthz")
	if err != nil {
		return h, err
	}
	if code != http.StatusOK && code != http.StatusServiceUnavailable {
		return h, fmt.Errorf("GET %s/healthz: %d %s", c.e, code, http.StatusText(code))
	}
	if err := json.Unmarshal(body, &h); err != nil {
		return h, fmt.Errorf("GET %s/healthz: %w", c.e, err)
	}
	return h, nil
}

// ParseText parses the Prometheus text format.
func ParseText(r io.Reader) (map[string]*dto.MetricFamily, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(r)
}

type client struct {
	e  Endpoint
	hc *http.Client
}

// newClient reaches the sidecar serving listenAddr directly: never through an environment proxy.
func newClient(listenAddr string) (*client, error) {
	if listenAddr == "" {
		return nil, errNoEndpoint
	}
	e, err := ParseEndpoint(listenAddr)
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true}
	if e.Network == "unix" {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", e.Address)
		}
	}
	return &client{e: e, hc: &http.Client{Transport: tr}}, nil
}

func (c *client) get(ctx context.Context, path string) (int, []byte, error) {
	host := c.e.Address
	if c.e.Network == "unix" {
		host = "firma"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return 0, nil, fmt.Errorf("nothing answers on %s (is the sidecar running with [sidecar.metrics] listen_addr = %q?): %w", c.e, c.e.String(), err)
		}
		return 0, nil, fmt.Errorf("GET %s%s: %w", c.e, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return 0, nil, fmt.Errorf("GET %s%s: %w", c.e, path, err)
	}
	return resp.StatusCode, body, nil
}

// Summarize sums up parsed metrics.
func Summarize(fams map[string]*dto.MetricFamily) Summary {
	s := Summary{Decisions: map[string]float64{}, DecisionsByAgent: map[string]map[string]float64{}, DNS: map[string]float64{}}
	each := func(name string, f func(labels map[string]string, m *dto.Metric)) bool {
		fam, ok := fams[name]
		if !ok {
			return false
		}
		for _, m := range fam.Metric {
			labels := map[string]string{}
			for _, l := range m.Label {
				labels[l.GetName()] = l.GetValue()
			}
			f(labels, m)
		}
		return true
	}
	each(NameBuildInfo, func(l map[string]string, _ *dto.Metric) { s.Version = l["version"] })
	each("process_start_time_seconds", func(_ map[string]string, m *dto.Metric) {
		if start := value(m); start > 0 {
			s.UptimeSeconds = float64(time.Now().Unix()) - start
		}
	})
	each(NameDecisions, func(l map[string]string, m *dto.Metric) {
		v := value(m)
		s.Decisions[l["outcome"]] += v
		if s.DecisionsByAgent[l["agent"]] == nil {
			s.DecisionsByAgent[l["agent"]] = map[string]float64{}
		}
		s.DecisionsByAgent[l["agent"]][l["outcome"]] += v
	})
	each(NameFlowsActive, func(_ map[string]string, m *dto.Metric) { s.FlowsActive += value(m) })
	each(NameFlowsCompleted, func(l map[string]string, m *dto.Metric) {
		s.FlowsCompleted += value(m)
		if l["result"] != "ok" {
			s.FlowsFailed += value(m)
		}
	})
	each(NameFlowLimits, func(l map[string]string, m *dto.Metric) {
		if s.FlowsLimited == nil {
			s.FlowsLimited = map[string]float64{}
		}
		s.FlowsLimited[l["agent"]] += value(m)
	})
	each(NameFlowBytes, func(l map[string]string, m *dto.Metric) {
		if l["direction"] == "up" {
			s.BytesUp += value(m)
		} else {
			s.BytesDown += value(m)
		}
	})
	each(NameDNSQueries, func(l map[string]string, m *dto.Metric) { s.DNS[l["outcome"]] += value(m) })
	each(NameKernel, func(l map[string]string, m *dto.Metric) {
		if s.Kernel == nil {
			s.Kernel = map[string]float64{}
		}
		n := l["counter"]
		s.Kernel[n] = value(m)
		if strings.HasPrefix(n, "refuse_") || strings.HasPrefix(n, "drop_") {
			s.KernelRefusals += value(m)
		}
	})
	each(NameKernelInForce, func(_ map[string]string, m *dto.Metric) {
		in := value(m) == 1
		s.ProgramsInForce = &in
	})
	each(NameKernelRepairs, func(_ map[string]string, m *dto.Metric) { s.KernelRepairs = value(m) })
	each(NameAcceptBackoff, func(_ map[string]string, m *dto.Metric) { s.AcceptBackoff = value(m) })
	each(NameBundlePresent, func(_ map[string]string, m *dto.Metric) {
		s.Bundle = &BundleSummary{Present: value(m) == 1}
	})
	if s.Bundle != nil {
		each(NameBundleAge, func(_ map[string]string, m *dto.Metric) { s.Bundle.AgeSeconds = value(m) })
		each(NameBundleStale, func(_ map[string]string, m *dto.Metric) { s.Bundle.Stale = value(m) == 1 })
		each(NameRevocations, func(_ map[string]string, m *dto.Metric) { s.Bundle.Revocations = value(m) })
		byReason := func(name string) map[string]float64 {
			var out map[string]float64
			each(name, func(l map[string]string, m *dto.Metric) {
				if v := value(m); v > 0 {
					if out == nil {
						out = map[string]float64{}
					}
					out[l["reason"]] = v
				}
			})
			return out
		}
		s.Bundle.Rejections = byReason(NameRejections)
		s.Bundle.PollErrors = byReason(NamePollErrors)
	}
	each(NameAuditRecords, func(_ map[string]string, m *dto.Metric) { s.Audit.Records += value(m) })
	each(NameAuditErrors, func(_ map[string]string, m *dto.Metric) { s.Audit.AppendErrors = value(m) })
	each(NameFsyncErrors, func(_ map[string]string, m *dto.Metric) { s.Audit.FsyncErrors = value(m) })
	each(NameAuditSuppressed, func(_ map[string]string, m *dto.Metric) { s.Audit.Suppressed = value(m) })
	sink := func(name string, set func(*SinkSummary, float64)) {
		each(name, func(l map[string]string, m *dto.Metric) {
			if s.Audit.Sinks == nil {
				s.Audit.Sinks = map[string]SinkSummary{}
			}
			k := s.Audit.Sinks[l["sink"]]
			set(&k, value(m))
			s.Audit.Sinks[l["sink"]] = k
		})
	}
	sink(NameSinkSent, func(k *SinkSummary, v float64) { k.Sent = v })
	sink(NameSinkDropped, func(k *SinkSummary, v float64) { k.Dropped = v })
	sink(NameSinkQueued, func(k *SinkSummary, v float64) { k.Queued = v })
	sink(NameSinkUp, func(k *SinkSummary, v float64) { k.Up = v == 1 })
	each(NameFsync, func(_ map[string]string, m *dto.Metric) {
		if h := m.GetHistogram(); h != nil {
			s.Audit.Fsyncs = float64(h.GetSampleCount())
			if n := h.GetSampleCount(); n > 0 {
				s.Audit.FsyncMeanMS = h.GetSampleSum() / float64(n) * 1000
			}
		}
	})
	leaves := &LeafSummary{}
	if each(NameLeafMints, func(_ map[string]string, m *dto.Metric) { leaves.Mints = value(m) }) {
		each(NameLeafHits, func(_ map[string]string, m *dto.Metric) { leaves.Hits = value(m) })
		each(NameLeavesCached, func(_ map[string]string, m *dto.Metric) { leaves.Cached = value(m) })
		s.Leaves = leaves
	}
	return s
}

// value is a counter's, gauge's or untyped metric's value.
func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return 0
}

// outcomes in the order they are printed.
var outcomes = []string{"ALLOW", "DENY", "PASSTHROUGH", "ABORT"}

// WriteText prints the status for a person: readiness and each check, then the counters.
func (st Status) WriteText(w io.Writer) error {
	var b strings.Builder
	s := st.Summary
	state := "READY"
	if !st.Health.Ready {
		state = "NOT READY"
	}
	fmt.Fprintf(&b, "firma sidecar at %s: %s", st.Endpoint, state)
	if s.Version != "" {
		fmt.Fprintf(&b, " (version %s", s.Version)
		if s.UptimeSeconds > 0 {
			fmt.Fprintf(&b, ", up %s", (time.Duration(s.UptimeSeconds) * time.Second).String())
		}
		b.WriteString(")")
	}
	b.WriteString("\n")
	names := slices.Sorted(maps.Keys(st.Health.Checks))
	width := 0
	for _, n := range names {
		width = max(width, len(n))
	}
	for _, n := range names {
		c := st.Health.Checks[n]
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(&b, "  %s  %-*s  %s\n", mark, width, n, c.Detail)
	}

	fmt.Fprintf(&b, "decisions  %s\n", outcomeCounts(s.Decisions))
	for _, a := range slices.Sorted(maps.Keys(s.DecisionsByAgent)) {
		name := a
		if name == "" {
			name = "(unknown agent)"
		}
		fmt.Fprintf(&b, "  %-24s %s\n", name, outcomeCounts(s.DecisionsByAgent[a]))
	}
	fmt.Fprintf(&b, "flows      %.0f active, %.0f completed (%.0f failed); %s up, %s down\n",
		s.FlowsActive, s.FlowsCompleted, s.FlowsFailed, bytesText(s.BytesUp), bytesText(s.BytesDown))
	if len(s.FlowsLimited) > 0 {
		limited := map[string]float64{}
		for a, n := range s.FlowsLimited {
			if a == "" {
				a = "(unknown agent)"
			}
			limited[a] += n
		}
		fmt.Fprintf(&b, "  CUT by [sidecar.limits]: %s\n", countsText(limited, slices.Sorted(maps.Keys(limited))))
	}
	fmt.Fprintf(&b, "dns        %s\n", countsText(s.DNS, dnsOutcomes))
	if s.ProgramsInForce != nil || s.Kernel != nil {
		inForce := "programs in force"
		if s.ProgramsInForce != nil && !*s.ProgramsInForce {
			inForce = "PROGRAMS NOT IN FORCE"
		}
		var refused []string
		for _, n := range slices.Sorted(maps.Keys(s.Kernel)) {
			if v := s.Kernel[n]; v > 0 && (strings.HasPrefix(n, "refuse_") || strings.HasPrefix(n, "drop_")) {
				refused = append(refused, fmt.Sprintf("%s %.0f", n, v))
			}
		}
		fmt.Fprintf(&b, "kernel     %s; %.0f refusals", inForce, s.KernelRefusals)
		if len(refused) > 0 {
			fmt.Fprintf(&b, " (%s)", strings.Join(refused, ", "))
		}
		if s.KernelRepairs > 0 {
			fmt.Fprintf(&b, "; %.0f repairs", s.KernelRepairs)
		}
		b.WriteString("\n")
	}
	if s.AcceptBackoff > 0 {
		fmt.Fprintf(&b, "accept     %.0f listener(s) backing off: out of file descriptors\n", s.AcceptBackoff)
	}
	switch {
	case s.Bundle == nil:
		b.WriteString("bundle     no authority: local policy\n")
	case !s.Bundle.Present:
		b.WriteString("bundle     NONE: every decision is a DENY until the authority answers\n")
	default:
		fresh := "fresh"
		if s.Bundle.Stale {
			fresh = "STALE: every decision is a DENY"
		}
		fmt.Fprintf(&b, "bundle     confirmed %s ago (%s); %.0f revocations\n",
			(time.Duration(s.Bundle.AgeSeconds) * time.Second).String(), fresh, s.Bundle.Revocations)
	}
	if s.Bundle != nil && len(s.Bundle.Rejections) > 0 {
		fmt.Fprintf(&b, "  REJECTED answers from the authority: %s\n", countsText(s.Bundle.Rejections, slices.Sorted(maps.Keys(s.Bundle.Rejections))))
	}
	if s.Bundle != nil && len(s.Bundle.PollErrors) > 0 {
		fmt.Fprintf(&b, "  failed polls: %s\n", countsText(s.Bundle.PollErrors, slices.Sorted(maps.Keys(s.Bundle.PollErrors))))
	}
	fsyncs := "no fsync yet"
	if s.Audit.Fsyncs > 0 || s.Audit.FsyncErrors > 0 {
		fsyncs = fmt.Sprintf("%.0f fsync(s), mean %.2f ms, %.0f failed", s.Audit.Fsyncs, s.Audit.FsyncMeanMS, s.Audit.FsyncErrors)
	}
	fmt.Fprintf(&b, "audit      %.0f records, %.0f refused, %.0f suppressed by the rate limit; %s\n",
		s.Audit.Records, s.Audit.AppendErrors, s.Audit.Suppressed, fsyncs)
	for _, name := range slices.Sorted(maps.Keys(s.Audit.Sinks)) {
		k := s.Audit.Sinks[name]
		up := "up"
		if !k.Up {
			up = "DOWN"
		}
		fmt.Fprintf(&b, "  sink %-19s %s: %.0f sent, %.0f dropped, %.0f queued\n", name, up, k.Sent, k.Dropped, k.Queued)
	}
	if s.Leaves != nil {
		fmt.Fprintf(&b, "mitm       %.0f leaves minted, %.0f cache hits, %.0f cached\n", s.Leaves.Mints, s.Leaves.Hits, s.Leaves.Cached)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func outcomeCounts(m map[string]float64) string {
	var extra []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		known := false
		for _, o := range outcomes {
			known = known || k == o
		}
		if !known {
			extra = append(extra, k)
		}
	}
	return countsText(m, append(outcomes[:len(outcomes):len(outcomes)], extra...))
}

// countsText is "3 answered, 1 denied, …" in the order given.
func countsText(m map[string]float64, order []string) string {
	parts := make([]string, 0, len(order))
	for _, k := range order {
		parts = append(parts, fmt.Sprintf("%.0f %s", m[k], k))
	}
	return strings.Join(parts, ", ")
}

func bytesText(n float64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%.0f B", n)
	}
	div, exp := float64(unit), 0
	for x := n / unit; x >= unit; x /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", n/div, "KMGTPE"[exp])
}
