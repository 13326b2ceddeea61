package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openfirma/firma/daemon/audit"
)

// serve runs m's handler on a fresh listener of e until the test ends.
func serve(t *testing.T, m *Metrics, e Endpoint, health func() Health) {
	t.Helper()
	ln, err := Listen(e)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: m.Handler(health)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// Fetch reads both endpoints over a unix socket, and the summary says what the counters say.
func TestFetchAndSummary(t *testing.T) {
	send := "communication.external.send"
	m := New(Sources{
		Kernel: func() (map[string]uint64, error) {
			return map[string]uint64{"redirect_tcp": 5, "refuse_udp": 2, "drop_egress": 1}, nil
		},
		Programs: func() error { return nil },
		Leaves:   func() LeafStats { return LeafStats{Mints: 1, Hits: 3, Cached: 1} },
		Bundle: func() (BundleStatus, bool) {
			return BundleStatus{Age: 4 * time.Second, Revocations: 1, Rejections: map[string]uint64{"wrong_key": 2, "expired": 0},
				PollErrors: map[string]uint64{"unreachable": 5}}, true
		},
		AuditStats: func() audit.Stats {
			return audit.Stats{Suppressed: 3, Sinks: []audit.SinkStats{{Name: "journald", Sent: 6, Up: true}, {Name: "siem", Sent: 2, Dropped: 4, Queued: 1}}}
		},
	})
	r := m.Recorder(&fakeLog{})
	r.Append(decision("claude", "connect", "ALLOW", &send))
	r.Append(decision("claude", "connect", "ALLOW", &send))
	r.Append(decision("claude", "connect", "DENY", &send))
	r.Append(decision("", "connect", "DENY", nil))
	r.Append(completion("claude", "connect", 1000, 3<<20, 10, ""))
	r.Append(completion("claude", "connect", 24, 0, 10, "client_canceled"))
	m.DNSQuery(DNSAnswered)
	m.DNSQuery(DNSDenied)
	m.ObserveFsync(2*time.Millisecond, nil)
	m.FlowStarted(ListenerTransparent)
	m.FlowLimitRefused("claude", "max_flows")
	m.FlowLimitRefused("claude", "new_flows_per_second")
	m.FlowLimitRefused("", "max_flows")

	sock := filepath.Join(t.TempDir(), "metrics.sock")
	e := Endpoint{Network: "unix", Address: sock}
	ready := false
	serve(t, m, e, func() Health {
		return Evaluate([]Check{{Name: "audit", Run: func() (string, error) {
			if !ready {
				return "", errors.New("audit log not writable")
			}
			return "ok", nil
		}}})
	})
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v %v", fi, err)
	}
	st, err := Fetch(context.Background(), "unix:"+sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s := st.Summary
	if st.Health.Ready || st.Health.Checks["audit"].OK || st.Endpoint != "unix:"+sock {
		t.Errorf("health %+v", st)
	}
	if s.Decisions["ALLOW"] != 2 || s.Decisions["DENY"] != 2 || s.DecisionsByAgent["claude"]["DENY"] != 1 || s.DecisionsByAgent[""]["DENY"] != 1 {
		t.Errorf("decisions %v by agent %v", s.Decisions, s.DecisionsByAgent)
	}
	if s.FlowsActive != 1 || s.FlowsCompleted != 2 || s.FlowsFailed != 1 || s.BytesUp != 1024 || s.BytesDown != 3<<20 ||
		s.FlowsLimited["claude"] != 2 || s.FlowsLimited[""] != 1 {
		t.Errorf("flows %+v", s)
	}
	if s.DNS["answered"] != 1 || s.DNS["denied"] != 1 || s.KernelRefusals != 3 || s.Kernel["redirect_tcp"] != 5 {
		t.Errorf("dns %v kernel %v (%v refusals)", s.DNS, s.Kernel, s.KernelRefusals)
	}
	if s.ProgramsInForce == nil || !*s.ProgramsInForce || s.Bundle == nil || s.Bundle.AgeSeconds != 4 || s.Leaves == nil || s.Leaves.Hits != 3 {
		t.Errorf("programs %v bundle %+v leaves %+v", s.ProgramsInForce, s.Bundle, s.Leaves)
	}
	if s.Audit.Records != 6 || s.Audit.Fsyncs != 1 || s.Audit.FsyncMeanMS != 2 || s.Version == "" {
		t.Errorf("audit %+v version %q", s.Audit, s.Version)
	}
	var text strings.Builder
	if err := st.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"firma sidecar at unix:" + sock + ": NOT READY",
		"  FAIL  audit  audit log not writable\n",
		"decisions  2 ALLOW, 2 DENY, 0 PASSTHROUGH, 0 ABORT\n",
		"  (unknown agent)          0 ALLOW, 1 DENY",
		"  claude                   2 ALLOW, 1 DENY",
		"flows      1 active, 2 completed (1 failed); 1.0 KiB up, 3.0 MiB down\n",
		"  CUT by [sidecar.limits]: 1 (unknown agent), 2 claude\n",
		"1 answered, 1 denied, 0 failed",
		"kernel     programs in force; 3 refusals (drop_egress 1, refuse_udp 2)\n",
		"bundle     confirmed 4s ago (fresh); 1 revocations\n",
		"  REJECTED answers from the authority: 2 wrong_key\n",
		"  failed polls: 5 unreachable\n",
		"audit      6 records, 0 refused, 3 suppressed by the rate limit; 1 fsync(s), mean 2.00 ms, 0 failed\n",
		"  sink journald            up: 6 sent, 0 dropped, 0 queued\n",
		"  sink siem                DOWN: 2 sent, 4 dropped, 1 queued\n",
		"mitm       1 leaves minted, 3 cache hits, 1 cached\n",
	} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("status text lacks %q:\n%s", want, text.String())
		}
	}
	ready = true
	st, err = Fetch(context.Background(), "unix:"+sock, 5*time.Second)
	if err != nil || !st.Health.Ready {
		t.Fatalf("ready: %+v %v", st.Health, err)
	}
	b, err := json.Marshal(st)
	if err != nil || !strings.Contains(string(b), `"health":{"ready":true`) || !strings.Contains(string(b), `"decisions":{"ALLOW":2,"DENY":2}`) {
		t.Errorf("json %s %v", b, err)
	}
}

func TestFetchErrors(t *testing.T) {
	dead := filepath.Join(t.TempDir(), "none.sock")
	if _, err := Fetch(context.Background(), "unix:"+dead, time.Second); err == nil || !strings.Contains(err.Error(), "nothing answers on unix:"+dead) {
		t.Errorf("no sidecar: %v", err)
	}
	if _, err := Fetch(context.Background(), "", time.Second); !errors.Is(err, errNoEndpoint) {
		t.Errorf("no address: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.NotFoundHandler()}
	go srv.Serve(ln)
	defer srv.Close()
	if _, err := FetchHealth(context.Background(), ln.Addr().String(), time.Second); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("not a sidecar: %v", err)
	}
}

// Listen replaces a socket nobody answers on, refuses one in use and anything that is not a socket,
// and needs the directory to exist.
func TestListenUnix(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.sock")
	e := Endpoint{Network: "unix", Address: path}
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	ln, err := Listen(e)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	if _, err := Listen(e); !errors.Is(err, ErrInUse) {
		t.Errorf("a socket in use: %v", err)
	}
	ln.Close()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind after close: %v", err)
	}
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := Listen(Endpoint{Network: "unix", Address: file}); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("a regular file: %v", err)
	}
	if _, err := Listen(Endpoint{Network: "unix", Address: filepath.Join(dir, "missing", "m.sock")}); err == nil || !strings.Contains(err.Error(), "directory must exist") {
		t.Errorf("a missing directory: %v", err)
	}
}

// The summary of a sidecar that runs neither the kernel path nor an authority nor a CA, and has
// not fsynced its audit log yet, says so, rather than printing zeros for them.
func TestSummaryOfAMinimalSidecar(t *testing.T) {
	m := New(Sources{})
	st := Status{Endpoint: "127.0.0.1:9090", Health: Health{Ready: true}, Summary: Summarize(scrape(t, m))}
	var text strings.Builder
	st.WriteText(&text)
	if strings.Contains(text.String(), "kernel ") || strings.Contains(text.String(), "mitm ") ||
		!strings.Contains(text.String(), "bundle     no authority: local policy") || !strings.Contains(text.String(), ": READY") ||
		!strings.Contains(text.String(), "; no fsync yet\n") || strings.Contains(text.String(), "CUT") {
		t.Errorf("status:\n%s", text.String())
	}
}
