//go:build linux

package daemon_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/daemon/metrics"
	"github.com/openfirma/firma/internal/e2e"
	"github.com/openfirma/firma/internal/testutil"
)

// metricsWorld is a world whose sidecar serves /healthz and /metrics, with its audit log on a small
// tmpfs of its own (so that a test can fill it).
type metricsWorld struct {
	*world
	addr     string
	auditDir string
	// monitored is a second agent's cgroup, in monitor mode: its policy denials are let through.
	monitored *testutil.Cgroup
}

// selfPolicy adds to the test policy a host that resolves to the sidecar's own loopback address.
const selfPolicy = `@id("permit-self-test")
permit (principal == Firma::Agent::"test-agent", action, resource)
when { resource has "host" && resource.host == "self.test" };
`

func newMetricsWorld(t *testing.T) *metricsWorld {
	t.Helper()
	testutil.RequireRoot(t)
	auditDir := e2e.MountTmpfs(t, 1<<20)
	addr := fmt.Sprintf("127.0.0.1:%d", testutil.FreePorts(t, 1)[0])
	w := prepareWorld(t, e2e.SidecarOptions{
		Policies:  map[string]string{"test.cedar": e2e.TestPolicy, "self.cedar": selfPolicy},
		Resolve:   map[string]string{"self.test": "127.0.0.1"},
		AuditPath: filepath.Join(auditDir, "audit.jsonl"),
		AuditTOML: `fsync_interval = "20ms"`,
		ExtraTOML: fmt.Sprintf("[sidecar.metrics]\nlisten_addr = %q\n", addr),
	})
	mw := &metricsWorld{world: w, addr: addr, auditDir: auditDir, monitored: testutil.NewCgroup(t, w.Parent)}
	f, err := os.OpenFile(w.ConfigPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "\n[[sidecar.agents]]\ncgroup = %q\nagent_id = \"watched-agent\"\nmode = \"monitor\"\n", strings.TrimPrefix(mw.monitored.Rel, "/"))
	f.Close()
	w.Start(t)
	return mw
}

// scrape reads /metrics the way Prometheus does and parses it with the Prometheus text parser.
func (w *metricsWorld) scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + w.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	fams, err := metrics.ParseText(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

func (w *metricsWorld) health(t *testing.T) (int, metrics.Health) {
	t.Helper()
	resp, err := http.Get("http://" + w.addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var h metrics.Health
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatal(err)
	}
	if (resp.StatusCode == http.StatusOK) != h.Ready || (resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusServiceUnavailable) {
		t.Fatalf("/healthz answered %d for ready=%v", resp.StatusCode, h.Ready)
	}
	return resp.StatusCode, h
}

// status runs `firma sidecar status` and returns its output and exit status.
func (w *metricsWorld) status(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(w.Bin, append([]string{"sidecar", "status", "-c", w.ConfigPath}, args...)...)
	cmd.Env = testutil.CleanEnv()
	out, err := cmd.CombinedOutput()
	return string(out), exitCode(err)
}

// series flattens a family into "label=value,…" → value (histograms: their count).
func series(fams map[string]*dto.MetricFamily, name string, keys ...string) map[string]float64 {
	out := map[string]float64{}
	fam, ok := fams[name]
	if !ok {
		return out
	}
	for _, m := range fam.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		var parts []string
		for _, k := range keys {
			parts = append(parts, k+"="+labels[k])
		}
		out[strings.Join(parts, ",")] += m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	for k, v := range out {
		if v == 0 {
			delete(out, k)
		}
	}
	return out
}

// fromLog counts the audit log the way the metrics count the records they see.
func fromLog(events []audit.Event) (decisions, completed, bytes, dns map[string]float64, records float64) {
	decisions, completed, bytes, dns = map[string]float64{}, map[string]float64{}, map[string]float64{}, map[string]float64{}
	for _, ev := range events {
		if ev.Kind == audit.KindLog {
			continue
		}
		records++
		env := ev.Envelope
		switch ev.Kind {
		case audit.KindDecision:
			action := ""
			if env.Intent.ActionClass != nil {
				action = *env.Intent.ActionClass
			}
			enforced := ev.Decision.Enforced == nil || *ev.Decision.Enforced
			decisions[fmt.Sprintf("outcome=%s,action_class=%s,agent=%s,mode=%s,enforced=%v", ev.Decision.Outcome, action,
				env.Agent.AgentID, env.Transport.Mode, enforced)]++
			if env.Transport.Mode == "dns" {
				// A query is answered unless its DENY was enforced (monitor mode lets it through).
				if ev.Decision.Outcome == "DENY" && enforced {
					dns["outcome=denied"]++
				} else {
					dns["outcome=answered"]++
				}
			}
		case audit.KindCompletion:
			result := "ok"
			if ev.Result.Error != "" {
				result = "error"
			}
			completed[fmt.Sprintf("mode=%s,agent=%s,result=%s", env.Transport.Mode, env.Agent.AgentID, result)]++
			if ev.Result.BytesUp > 0 {
				bytes[fmt.Sprintf("direction=up,mode=%s,agent=%s", env.Transport.Mode, env.Agent.AgentID)] += float64(ev.Result.BytesUp)
			}
			if ev.Result.BytesDown > 0 {
				bytes[fmt.Sprintf("direction=down,mode=%s,agent=%s", env.Transport.Mode, env.Agent.AgentID)] += float64(ev.Result.BytesDown)
			}
		}
	}
	return decisions, completed, bytes, dns, records
}

func diff(name string, got, want map[string]float64) []string {
	var out []string
	keys := map[string]bool{}
	for k := range got {
		keys[k] = true
	}
	for k := range want {
		keys[k] = true
	}
	for k := range keys {
		if got[k] != want[k] {
			out = append(out, fmt.Sprintf("%s{%s}: metrics %v, audit log %v", name, k, got[k], want[k]))
		}
	}
	sort.Strings(out)
	return out
}

// TestMetricsMatchTheAuditLog sends allowed and denied traffic of every kind through the real
// sidecar, scrapes /metrics with the Prometheus text parser, and finds exactly the audit log's
// counts: decisions by outcome, action class, agent and mode; completions and bytes; DNS queries.
// Then /healthz: ready, then 503 with the audit check failing while the audit disk is full, and
// ready again once there is room; `firma sidecar status` says the same with its exit status.
func TestMetricsMatchTheAuditLog(t *testing.T) {
	w := newMetricsWorld(t)
	if code, h := w.health(t); code != 200 || len(h.Checks) != 4 {
		t.Fatalf("a fresh sidecar: %d %+v", code, h)
	}

	for _, args := range [][]string{
		{"https://allowed.test/one"},
		{"https://allowed.test/two"},
		{"https://denied.test/"}, // refused at DNS
		{"--resolve", "denied.test:443:" + w.denied.Addr.Addr().String(), "https://denied.test/"}, // by SNI
		{"http://plain.test/page"},
		{"http://plain.test/secret"}, // 403
	} {
		w.curl(t, args...)
	}
	// An agent in monitor mode: its denial is recorded, not enforced, and counted as such.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := w.monitored.Command(ctx, t, "curl", "-sS", "--max-time", "10", "--cacert", w.ca.CertFile,
		"http://plain.test/page").CombinedOutput(); err != nil || !strings.Contains(string(out), "hello from plain /page") {
		t.Fatalf("monitor mode: a policy denial was enforced: %v %s", err, out)
	}
	// An agent that reaches for the sidecar's own metrics is allowed by policy and still never gets
	// there: the connector does not dial the sidecar's listeners.
	out, _ := w.curl(t, "-i", fmt.Sprintf("http://self.test:%s/metrics", strings.Split(w.addr, ":")[1]))
	if strings.Contains(out, "firma_decisions_total") || !strings.Contains(out, "502") {
		t.Fatalf("an agent reached the metrics endpoint through the sidecar:\n%s", out)
	}
	// A UDP datagram that is not DNS: refused in the kernel, counted there and audited.
	w.Run(t, "python3", "-c", `import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b"x", ("127.0.0.1", 9))
except OSError:
    pass`)
	w.WaitEvent(t, "the kernel's refusal of UDP", func(ev audit.Event) bool {
		return ev.Kind == audit.KindDecision && ev.Envelope.Transport.Mode == "kernel"
	})

	// The counters catch up with the log once the last flow has completed.
	var problems []string
	var fams map[string]*dto.MetricFamily
	var events []audit.Event
	deadline := time.Now().Add(10 * time.Second)
	for {
		events = w.Events(t)
		fams = w.scrape(t)
		decisions, completed, bytes, dns, records := fromLog(events)
		problems = nil
		problems = append(problems, diff(metrics.NameDecisions, series(fams, metrics.NameDecisions, "outcome", "action_class", "agent", "mode", "enforced"), decisions)...)
		problems = append(problems, diff(metrics.NameFlowsCompleted, series(fams, metrics.NameFlowsCompleted, "mode", "agent", "result"), completed)...)
		problems = append(problems, diff(metrics.NameFlowBytes, series(fams, metrics.NameFlowBytes, "direction", "mode", "agent"), bytes)...)
		problems = append(problems, diff(metrics.NameDNSQueries, series(fams, metrics.NameDNSQueries, "outcome"), dns)...)
		var appended float64
		for _, v := range series(fams, metrics.NameAuditRecords, "kind") {
			appended += v
		}
		if appended != records {
			problems = append(problems, fmt.Sprintf("%s: metrics %v, audit log %v", metrics.NameAuditRecords, appended, records))
		}
		if active := series(fams, metrics.NameFlowsActive, "listener"); len(active) != 0 {
			problems = append(problems, fmt.Sprintf("flows still active: %v", active))
		}
		if len(problems) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(problems) > 0 {
		t.Fatalf("metrics and audit log disagree:\n%s", strings.Join(problems, "\n"))
	}
	decisions, _, _, _, _ := fromLog(events)
	for _, want := range []string{
		"outcome=ALLOW,action_class=communication.external.send,agent=test-agent,mode=connect,enforced=true",
		"outcome=DENY,action_class=communication.external.send,agent=test-agent,mode=connect,enforced=true",
		"outcome=ALLOW,action_class=communication.external.send,agent=test-agent,mode=http,enforced=true",
		"outcome=DENY,action_class=communication.external.send,agent=test-agent,mode=http,enforced=true",
		"outcome=DENY,action_class=communication.external.send,agent=test-agent,mode=dns,enforced=true",
		"outcome=ALLOW,action_class=communication.external.send,agent=test-agent,mode=dns,enforced=true",
		"outcome=DENY,action_class=communication.external.send,agent=watched-agent,mode=http,enforced=false",
	} {
		if decisions[want] == 0 {
			t.Errorf("the traffic left no decision %s (so the comparison proves less than it should)", want)
		}
	}
	if series(fams, metrics.NameFlowsCompleted, "result")["result=error"] == 0 {
		t.Error("the refused dial of the sidecar's own address left no failed completion")
	}
	kernel := series(fams, metrics.NameKernel, "counter")
	for _, c := range []string{"counter=redirect_tcp", "counter=redirect_dns", "counter=refuse_udp"} {
		if kernel[c] == 0 {
			t.Errorf("kernel counter %s is 0; have %v", c, kernel)
		}
	}
	if n := len(fams[metrics.NameKernel].GetMetric()); n < 15 {
		t.Errorf("%d kernel counters exported, want all of them", n)
	}
	for name, want := range map[string]float64{metrics.NameKernelInForce: 1, metrics.NameAuditWritable: 1, metrics.NameReady: 1} {
		if got := series(fams, name); got[""] != want {
			t.Errorf("%s = %v, want %v", name, got[""], want)
		}
	}
	if fsyncs := fams[metrics.NameFsync].GetMetric(); len(fsyncs) != 1 || fsyncs[0].GetHistogram().GetSampleCount() == 0 {
		t.Errorf("no audit fsync observed: %v", fsyncs)
	}

	out, code := w.status(t)
	if code != 0 || !strings.Contains(out, ": READY") || !strings.Contains(out, "test-agent") ||
		!strings.Contains(out, "kernel     programs in force;") {
		t.Fatalf("firma sidecar status on a ready sidecar: exit %d\n%s", code, out)
	}

	t.Run("audit disk full", func(t *testing.T) {
		filler := filepath.Join(w.auditDir, "filler")
		f, err := os.Create(filler)
		if err != nil {
			t.Fatal(err)
		}
		for {
			if _, err := f.Write(make([]byte, 4096)); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatal(err)
				}
				break
			}
		}
		f.Close()
		// Traffic until a record cannot be written: the last page of the file may still have room.
		// Each small record the writer then manages to put in that room makes it writable again for
		// a moment, so what is checked is what /healthz and the status command said while it was not.
		var failed metrics.Health
		var code int
		var out string
		waitFor(t, "an audit write to fail, seen by /healthz and firma sidecar status", func() bool {
			w.curl(t, "--resolve", "allowed.test:443:"+w.allowed.Addr.Addr().String(), "https://allowed.test/full")
			if code, failed = w.health(t); failed.Checks["audit"].OK {
				return false
			}
			var status int
			out, status = w.status(t)
			return status == 1
		})
		if code != 503 || failed.Ready || !strings.Contains(failed.Checks["audit"].Detail, "no space left") ||
			!failed.Checks["programs"].OK || !failed.Checks["listeners"].OK {
			t.Fatalf("with the audit disk full: %d %+v", code, failed)
		}
		if !strings.Contains(out, "NOT READY") || !strings.Contains(out, "FAIL  audit") || !strings.Contains(out, "no space left") {
			t.Errorf("firma sidecar status with the audit disk full:\n%s", out)
		}
		fams := w.scrape(t)
		if series(fams, metrics.NameAuditErrors)[""] == 0 {
			t.Errorf("refused records not counted: %v", series(fams, metrics.NameAuditErrors))
		}

		os.Remove(filler)
		waitFor(t, "the audit log to be writable again", func() bool {
			_, h := w.health(t)
			return h.Ready
		})
		if code, _ := w.health(t); code != 200 {
			t.Fatalf("after recovery: %d", code)
		}
		if out, code := w.status(t, "--json"); code != 0 || !strings.Contains(out, `"ready": true`) {
			t.Errorf("firma sidecar status --json after recovery: exit %d\n%s", code, out)
		}
	})

	t.Run("pins removed", func(t *testing.T) {
		if err := bpf.Cleanup(w.PinDir); err != nil {
			t.Fatal(err)
		}
		// The sidecar notices, counts the fault, puts its programs back and is ready again.
		waitFor(t, "the kernel repair to be counted", func() bool {
			return series(w.scrape(t), metrics.NameKernelRepairs)[""] >= 1
		})
		if series(w.scrape(t), metrics.NameKernelFaults)[""] < 1 {
			t.Error("a repair without a fault")
		}
		waitFor(t, "the sidecar to be ready again", func() bool {
			_, h := w.health(t)
			return h.Ready
		})
		if out, err := w.curl(t, "https://allowed.test/after-repair"); err != nil || out != "hello from allowed /after-repair\n" {
			t.Fatalf("after repair: %v %q", err, out)
		}
	})
}

// TestHealthzFollowsTheBundle: with an authority, /healthz is ready while the bundle is fresh, goes
// 503 naming the stale bundle once the authority has been gone longer than the bundle TTL (every
// decision is a DENY then), and is ready again when it is back; /metrics counts the failed polls.
func TestHealthzFollowsTheBundle(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", testutil.FreePorts(t, 1)[0])
	tw := newTrustWorld(t, 3, func(tw *trustWorld) string {
		return e2e.AgentTOML(tw.Agent, e2e.AgentID, tw.capFile) + fmt.Sprintf("\n[sidecar.metrics]\nlisten_addr = %q\n", addr)
	})
	w := &metricsWorld{world: tw.world, addr: addr}
	waitFor(t, "the sidecar to hold a fresh bundle", func() bool {
		_, h := w.health(t)
		return h.Ready
	})
	if _, h := w.health(t); !strings.Contains(h.Checks["bundle"].Detail, "confirmed") || !strings.Contains(h.Checks["bundle"].Detail, tw.auth.URL()) {
		t.Errorf("bundle check: %+v", h.Checks["bundle"])
	}
	if got := series(w.scrape(t), metrics.NameBundlePresent); got[""] != 1 {
		t.Errorf("%s = %v", metrics.NameBundlePresent, got)
	}

	tw.auth.Kill(t)
	var stale metrics.Health
	waitFor(t, "/healthz to report the stale bundle", func() bool {
		_, stale = w.health(t)
		return !stale.Checks["bundle"].OK
	})
	if stale.Ready || !strings.Contains(stale.Checks["bundle"].Detail, "every decision is a DENY") || !stale.Checks["programs"].OK {
		t.Errorf("with the authority gone: %+v", stale)
	}
	fams := w.scrape(t)
	if series(fams, metrics.NameBundleStale)[""] != 1 || series(fams, metrics.NamePollErrors, "reason")["reason=unreachable"] == 0 {
		t.Errorf("stale %v, poll errors %v", series(fams, metrics.NameBundleStale), series(fams, metrics.NamePollErrors, "reason"))
	}
	if out, code := w.status(t); code != 1 || !strings.Contains(out, "STALE") || !strings.Contains(out, "FAIL  bundle") {
		t.Errorf("firma sidecar status with a stale bundle: exit %d\n%s", code, out)
	}

	tw.auth.Start(t)
	waitFor(t, "the sidecar to be ready again with the authority back", func() bool {
		_, h := w.health(t)
		return h.Ready
	})
}
