package metrics

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/openfirma/firma/daemon/audit"
)

// scrape serves /metrics from m and parses it with the Prometheus text parser.
func scrape(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	srv := httptest.NewServer(m.Handler(func() Health { return Health{Ready: true} }))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	fams, err := ParseText(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// val is the value of the series of name whose labels include want ("k=v" pairs); ok is false when
// there is none.
func val(fams map[string]*dto.MetricFamily, name string, want ...string) (float64, bool) {
	fam, ok := fams[name]
	if !ok {
		return 0, false
	}
	for _, m := range fam.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for _, kv := range want {
			k, v, _ := strings.Cut(kv, "=")
			match = match && labels[k] == v
		}
		if !match {
			continue
		}
		if h := m.GetHistogram(); h != nil {
			return float64(h.GetSampleCount()), true
		}
		return value(m), true
	}
	return 0, false
}

func must(t *testing.T, fams map[string]*dto.MetricFamily, name string, want float64, labels ...string) {
	t.Helper()
	got, ok := val(fams, name, labels...)
	if !ok {
		t.Errorf("%s%v: no such series", name, labels)
		return
	}
	if got != want {
		t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}

// fakeLog is an audit writer that fails while broken, and whose rate limit lets budget records
// of each class through.
type fakeLog struct {
	broken bool
	n      int
	budget int
	used   map[string]int
}

func (l *fakeLog) Append(*audit.Event) error {
	if l.broken {
		return audit.ErrUnwritable
	}
	l.n++
	return nil
}

func (l *fakeLog) AppendLimited(class string, ev *audit.Event) (bool, error) {
	if l.used == nil {
		l.used = map[string]int{}
	}
	if l.used[class] >= l.budget {
		return false, nil
	}
	l.used[class]++
	return true, l.Append(ev)
}

func decision(agent, mode, outcome string, action *string) *audit.Event {
	return &audit.Event{Kind: audit.KindDecision,
		Envelope: &audit.Envelope{Agent: audit.Agent{AgentID: agent}, Intent: audit.Intent{ActionClass: action},
			Transport: audit.Transport{Mode: mode}},
		Decision: &audit.Decision{Outcome: outcome}}
}

func completion(agent, mode string, up, down, ms int64, errText string) *audit.Event {
	return &audit.Event{Kind: audit.KindCompletion,
		Envelope: &audit.Envelope{Agent: audit.Agent{AgentID: agent}, Transport: audit.Transport{Mode: mode}},
		Result:   &audit.Result{BytesUp: up, BytesDown: down, DurationMS: ms, Error: errText}}
}

// The recorder counts what the audit log was given, as the log holds it; a refused decision counts
// as the DENY the judge turns it into.
func TestRecorder(t *testing.T) {
	m := New(Sources{})
	log := &fakeLog{}
	r := m.Recorder(log)
	send := "communication.external.send"
	chat := "model.inference.chat"
	for _, ev := range []*audit.Event{
		decision("claude", "connect", "ALLOW", &send),
		decision("claude", "connect", "ALLOW", &send),
		decision("claude", "mitm", "DENY", &chat),
		decision("", "connect", "DENY", nil),
		decision("claude", "dns", "ALLOW", nil),
		completion("claude", "connect", 100, 2000, 1500, ""),
		completion("claude", "mitm", 10, 20, 5, "connector_network_error: refused"),
	} {
		if err := r.Append(ev); err != nil {
			t.Fatal(err)
		}
	}
	// Monitor mode: a DENY recorded as not enforced.
	monitored := decision("claude", "connect", "DENY", &send)
	monitored.Decision.Enforced = new(bool)
	r.Append(monitored)
	// Rate-limited refusal records: what the log kept out is not counted here.
	log.budget = 2
	for range 5 {
		if _, err := r.AppendLimited("kernel", decision("claude", "kernel", "DENY", nil)); err != nil {
			t.Fatal(err)
		}
	}
	log.broken = true
	if err := r.Append(decision("claude", "connect", "ALLOW", &send)); !errors.Is(err, audit.ErrUnwritable) {
		t.Fatalf("the recorder must pass the log's error on: %v", err)
	}
	f := scrape(t, m)
	must(t, f, NameDecisions, 2, "outcome=ALLOW", "agent=claude", "mode=connect", "action_class="+send)
	must(t, f, NameDecisions, 1, "outcome=DENY", "agent=claude", "mode=mitm", "action_class="+chat)
	must(t, f, NameDecisions, 1, "outcome=DENY", "agent=", "mode=connect", "action_class=")
	must(t, f, NameDecisions, 1, "outcome=ALLOW", "agent=claude", "mode=dns", "action_class=")
	must(t, f, NameDecisions, 1, "outcome=DENY", "agent=claude", "mode=connect", "action_class="+send, "enforced=true")
	must(t, f, NameDecisions, 1, "outcome=DENY", "agent=claude", "mode=connect", "action_class="+send, "enforced=false")
	must(t, f, NameDecisions, 2, "outcome=DENY", "agent=claude", "mode=kernel")
	must(t, f, NameFlowsCompleted, 1, "mode=connect", "agent=claude", "result=ok")
	must(t, f, NameFlowsCompleted, 1, "mode=mitm", "agent=claude", "result=error")
	must(t, f, NameFlowBytes, 100, "direction=up", "mode=connect")
	must(t, f, NameFlowBytes, 2000, "direction=down", "mode=connect")
	must(t, f, NameFlowBytes, 20, "direction=down", "mode=mitm")
	must(t, f, NameFlowDuration, 1, "mode=connect")
	must(t, f, NameAuditRecords, 8, "kind=decision")
	must(t, f, NameAuditRecords, 2, "kind=completion")
	must(t, f, NameAuditErrors, 1)
	if log.n != 10 {
		t.Errorf("the log got %d records, want 10", log.n)
	}
	if h := f[NameFlowDuration].Metric[0].GetHistogram(); h.GetSampleSum() < 1.5 {
		t.Errorf("duration sum %v", h.GetSampleSum())
	}
}

// Label values are capped: an agent past the cap counts as _other, an agent already seen keeps its
// name.
func TestLabelCap(t *testing.T) {
	c := newCapped(2)
	for _, tc := range []struct{ in, want string }{{"a", "a"}, {"b", "b"}, {"c", OtherLabel}, {"a", "a"}, {"d", OtherLabel}} {
		if got := c.label(tc.in); got != tc.want {
			t.Errorf("label(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	m := New(Sources{})
	r := m.Recorder(&fakeLog{})
	for i := range MaxAgents + 10 {
		r.Append(decision(fmt.Sprintf("agent-%d", i), "connect", "ALLOW", nil))
	}
	f := scrape(t, m)
	if n := len(f[NameDecisions].Metric); n != MaxAgents+1 {
		t.Errorf("%d decision series, want %d", n, MaxAgents+1)
	}
	must(t, f, NameDecisions, 10, "agent="+OtherLabel)
}

func TestFlowsDNSFsyncKernelHooks(t *testing.T) {
	m := New(Sources{})
	done := m.FlowStarted(ListenerTransparent)
	m.FlowStarted(ListenerTransparent)()
	m.FlowStarted(ListenerProxy)
	m.DNSQuery(DNSAnswered)
	m.DNSQuery(DNSAnswered)
	m.DNSQuery(DNSDenied)
	m.ObserveFsync(3*time.Millisecond, nil)
	m.ObserveFsync(time.Second, errors.New("EIO"))
	m.KernelFault()
	m.KernelFault()
	m.KernelRepaired()
	f := scrape(t, m)
	must(t, f, NameFlowsActive, 1, "listener=transparent")
	must(t, f, NameFlowsActive, 1, "listener=proxy")
	must(t, f, NameConnections, 2, "listener=transparent")
	must(t, f, NameDNSQueries, 2, "outcome=answered")
	must(t, f, NameDNSQueries, 1, "outcome=denied")
	must(t, f, NameDNSQueries, 0, "outcome=failed")
	must(t, f, NameFsync, 2)
	must(t, f, NameFsyncErrors, 1)
	must(t, f, NameKernelFaults, 2)
	must(t, f, NameKernelRepairs, 1)
	done()
	must(t, scrape(t, m), NameFlowsActive, 0, "listener=transparent")
	if _, ok := f["go_goroutines"]; !ok {
		t.Error("no Go runtime metrics")
	}
	if _, ok := f["process_open_fds"]; !ok {
		t.Error("no process metrics (open fds matter: the accept loops back off without them)")
	}
	if v, ok := val(f, NameBuildInfo); !ok || v != 1 {
		t.Error("no build info")
	}
}

// Values that live elsewhere are read at every scrape; a part the sidecar does not run has no
// series; a source that fails loses its own series only.
func TestSources(t *testing.T) {
	kernel := map[string]uint64{"redirect_tcp": 7, "refuse_udp": 2, "drop_egress": 1}
	var kernelErr, progErr, auditErr error
	bundle := BundleStatus{Age: 90 * time.Second, Revocations: 3, Rejections: map[string]uint64{"bad_signature": 2},
		PollErrors: map[string]uint64{"unauthorized": 1}, Failovers: 4}
	m := New(Sources{
		Kernel:      func() (map[string]uint64, error) { return kernel, kernelErr },
		Programs:    func() error { return progErr },
		Protections: func() map[string]bool { return map[string]bool{"bpf_syscall": true, "tun_devices": false} },
		Backoff:     func() int { return 0 },
		Audit:       func() error { return auditErr },
		AuditStats: func() audit.Stats {
			return audit.Stats{Suppressed: 4, Sinks: []audit.SinkStats{{Name: "siem", Sent: 10, Dropped: 2, Retries: 3, Queued: 1, Up: false}}}
		},
		Leaves: func() LeafStats { return LeafStats{Mints: 2, Hits: 5, Cached: 2} },
		Bundle: func() (BundleStatus, bool) { return bundle, true },
		Health: func() Health {
			return Health{Ready: progErr == nil, Checks: map[string]CheckResult{"programs": {OK: progErr == nil}, "audit": {OK: true}}}
		},
	})
	f := scrape(t, m)
	must(t, f, NameKernel, 7, "counter=redirect_tcp")
	must(t, f, NameKernel, 2, "counter=refuse_udp")
	must(t, f, NameKernelInForce, 1)
	must(t, f, NameKernelProtection, 1, "protection=bpf_syscall")
	must(t, f, NameKernelProtection, 0, "protection=tun_devices")
	must(t, f, NameAuditWritable, 1)
	must(t, f, NameAuditSuppressed, 4)
	must(t, f, NameSinkSent, 10, "sink=siem")
	must(t, f, NameSinkDropped, 2, "sink=siem")
	must(t, f, NameSinkRetries, 3, "sink=siem")
	must(t, f, NameSinkQueued, 1, "sink=siem")
	must(t, f, NameSinkUp, 0, "sink=siem")
	must(t, f, NameLeafMints, 2)
	must(t, f, NameLeafHits, 5)
	must(t, f, NameLeavesCached, 2)
	must(t, f, NameBundlePresent, 1)
	must(t, f, NameBundleAge, 90)
	must(t, f, NameBundleStale, 0)
	must(t, f, NameRevocations, 3)
	must(t, f, NameRejections, 2, "reason=bad_signature")
	must(t, f, NamePollErrors, 1, "reason=unauthorized")
	must(t, f, NameFailovers, 4)
	must(t, f, NameReady, 1)
	must(t, f, NameHealthCheck, 1, "check=programs")
	if f[NameKernel].GetType() != dto.MetricType_COUNTER {
		t.Errorf("kernel counters are %v", f[NameKernel].GetType())
	}

	kernel["redirect_tcp"] = 9
	progErr, auditErr = errors.New("detached"), audit.ErrUnwritable
	bundle.Stale = true
	f = scrape(t, m)
	must(t, f, NameKernel, 9, "counter=redirect_tcp")
	must(t, f, NameKernelInForce, 0)
	must(t, f, NameAuditWritable, 0)
	must(t, f, NameBundleStale, 1)
	must(t, f, NameReady, 0)
	must(t, f, NameHealthCheck, 0, "check=programs")

	kernelErr = errors.New("map gone")
	f = scrape(t, m)
	if _, ok := f[NameKernel]; ok {
		t.Error("kernel counters served though they could not be read")
	}
	must(t, f, NameAuditWritable, 0)

	none := scrape(t, New(Sources{}))
	for _, name := range []string{NameKernel, NameKernelInForce, NameLeafMints, NameBundlePresent, NameReady} {
		if _, ok := none[name]; ok {
			t.Errorf("%s served for a part the sidecar does not run", name)
		}
	}
}

func TestHealthHandler(t *testing.T) {
	ready := true
	m := New(Sources{})
	srv := httptest.NewServer(m.Handler(func() Health {
		return Evaluate([]Check{
			{Name: "audit", Run: func() (string, error) { return "audit.jsonl writable", nil }},
			{Name: "programs", Run: func() (string, error) {
				if !ready {
					return "9 links", errors.New("firma_egress detached")
				}
				return "9 links in force", nil
			}},
		})
	}))
	defer srv.Close()
	get := func(method, path string) (int, string) {
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get("GET", "/healthz")
	want := `{"ready":true,"checks":{"audit":{"ok":true,"detail":"audit.jsonl writable"},"programs":{"ok":true,"detail":"9 links in force"}}}` + "\n"
	if code != 200 || body != want {
		t.Errorf("ready: %d %s", code, body)
	}
	ready = false
	code, body = get("GET", "/healthz")
	want = `{"ready":false,"checks":{"audit":{"ok":true,"detail":"audit.jsonl writable"},"programs":{"ok":false,"detail":"9 links: firma_egress detached"}}}` + "\n"
	if code != 503 || body != want {
		t.Errorf("not ready: %d %s", code, body)
	}
	if code, _ := get("POST", "/healthz"); code != http.StatusMethodNotAllowed {
		t.Errorf("POST /healthz: %d", code)
	}
	if code, _ := get("GET", "/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("GET /debug/pprof/: %d", code)
	}
	if code, _ := get("HEAD", "/metrics"); code != http.StatusOK {
		t.Errorf("HEAD /metrics: %d", code)
	}
}
