//go:build linux

package daemon_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/internal/e2e"
	"github.com/openfirma/firma/internal/testutil"
)

// world is a sidecar with fake upstreams: allowed.test (HTTPS), denied.test (HTTPS) and plain.test
// (HTTP), each on its own loopback address, named through [sidecar.upstream] resolve.
type world struct {
	*e2e.Sidecar
	ca      *testutil.CA
	allowed *testutil.Upstream
	denied  *testutil.Upstream
	plain   *testutil.Upstream
}

func newWorld(t *testing.T, opts e2e.SidecarOptions) *world {
	t.Helper()
	w := prepareWorld(t, opts)
	w.Start(t)
	return w
}

// prepareWorld is newWorld without starting the sidecar.
func prepareWorld(t *testing.T, opts e2e.SidecarOptions) *world {
	t.Helper()
	testutil.RequireRoot(t)
	w := &world{ca: testutil.NewCA(t, "firma e2e upstream CA")}
	w.allowed = testutil.NewHTTPSUpstream(t, "allowed", netip.AddrPortFrom(testutil.LoopbackAddr(t), 443), w.ca, "allowed.test")
	w.denied = testutil.NewHTTPSUpstream(t, "denied", netip.AddrPortFrom(testutil.LoopbackAddr(t), 443), w.ca, "denied.test")
	w.plain = testutil.NewHTTPUpstream(t, "plain", netip.AddrPortFrom(testutil.LoopbackAddr(t), 80))
	if opts.Resolve == nil {
		opts.Resolve = map[string]string{}
	}
	opts.Resolve["allowed.test"] = w.allowed.Addr.Addr().String()
	opts.Resolve["denied.test"] = w.denied.Addr.Addr().String()
	opts.Resolve["plain.test"] = w.plain.Addr.Addr().String()
	opts.UpstreamCA = w.ca.CertFile
	w.Sidecar = e2e.PrepareSidecar(t, opts)
	return w
}

// curl runs curl in the agent cgroup, trusting only the test CA.
func (w *world) curl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	base := []string{"-sS", "--max-time", "10", "--cacert", w.ca.CertFile}
	return w.Run(t, "curl", append(base, args...)...)
}

// decisionFor matches the decision record of a connection (not a DNS lookup) to host.
// curlOutside runs curl from the test process, outside every enforced cgroup.
func curlOutside(t *testing.T, w *world, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("curl", append([]string{"-sS", "--max-time", "10", "--cacert", w.ca.CertFile}, args...)...)
	cmd.Env = testutil.CleanEnv()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func decisionFor(host string) func(audit.Event) bool {
	return func(ev audit.Event) bool {
		return ev.Kind == audit.KindDecision && ev.Envelope != nil && ev.Envelope.Transport.Mode != "dns" &&
			strings.HasPrefix(ev.Envelope.Intent.Resource.Host, host)
	}
}

func TestAllowedHostsReachUpstream(t *testing.T) {
	w := newWorld(t, e2e.SidecarOptions{})

	out, err := w.curl(t, "https://allowed.test/hello")
	if err != nil || out != "hello from allowed /hello\n" {
		t.Fatalf("https: %v: %q\n%s", err, out, w.Logs())
	}
	ev := w.WaitEvent(t, "for allowed.test", decisionFor("allowed.test"))
	assertDecision(t, ev, "ALLOW", "connect", "allowed.test:443")
	if ev.Envelope.Transport.SNI != "allowed.test" || ev.Envelope.Agent.Exe != "/usr/bin/curl" ||
		ev.Envelope.Agent.Comm != "curl" {
		t.Errorf("transport/agent fields: %+v %+v", ev.Envelope.Transport, ev.Envelope.Agent)
	}
	if ev.Envelope.Transport.OrigDst != w.allowed.Addr.String() {
		t.Errorf("orig_dst = %q, want %s", ev.Envelope.Transport.OrigDst, w.allowed.Addr)
	}

	out, err = w.curl(t, "http://plain.test/page?q=1")
	if err != nil || out != "hello from plain /page\n" {
		t.Fatalf("http: %v: %q", err, out)
	}
	ev = w.WaitEvent(t, "for plain.test", decisionFor("plain.test"))
	assertDecision(t, ev, "ALLOW", "http", "plain.test")
	if r := ev.Envelope.Intent.Resource; r.Method != "GET" || r.Path != "/page" {
		t.Errorf("http resource = %+v, want GET /page without the query", r)
	}
	if got := w.plain.Requests(); len(got) != 1 || got[0].Host != "plain.test" {
		t.Errorf("plain upstream saw %+v", got)
	}
}

func TestDeniedHostNeverReachesUpstream(t *testing.T) {
	w := newWorld(t, e2e.SidecarOptions{})

	// The name does not even resolve: the lookup is judged like the connection would be.
	start := time.Now()
	out, err := w.curl(t, "https://denied.test/")
	t.Logf("denied lookup took %v", time.Since(start))
	if err == nil || !strings.Contains(out, "resolve") {
		t.Fatalf("denied name resolved: %v %q", err, out)
	}
	dnsDeny := w.WaitEvent(t, "for the denied lookup", func(ev audit.Event) bool {
		return ev.Envelope != nil && ev.Envelope.Transport.Mode == "dns" && ev.Envelope.Intent.Resource.Host == "denied.test"
	})
	if dnsDeny.Decision.Outcome != "DENY" {
		t.Errorf("dns decision = %+v", dnsDeny.Decision)
	}
	// Dialed by address, the connection is judged by SNI and refused.
	out, err = w.curl(t, "--resolve", "denied.test:443:"+w.denied.Addr.Addr().String(), "https://denied.test/")
	if err == nil {
		t.Fatalf("denied https host answered: %q", out)
	}
	ev := w.WaitEvent(t, "for denied.test", decisionFor("denied.test"))
	assertDecision(t, ev, "DENY", "connect", "denied.test:443")
	if !contains(ev.Decision.MatchedPolicies, "forbid-denied") {
		t.Errorf("matched_policies = %v, want forbid-denied", ev.Decision.MatchedPolicies)
	}

	// Plain HTTP: the agent gets a 403 with the reason.
	out, err = w.curl(t, "-i", "--resolve", "denied.test:443:"+w.denied.Addr.Addr().String(), "http://denied.test:443/")
	if err != nil || !strings.Contains(out, "403 Forbidden") || !strings.Contains(out, "denied") {
		t.Fatalf("plain http to a denied host: %v: %q", err, out)
	}
	// A host no policy permits: default deny.
	out, err = w.curl(t, "-i", "--resolve", "unlisted.test:80:127.0.2.10", "http://unlisted.test/")
	if err != nil || !strings.Contains(out, "403") || !strings.Contains(out, "no policy permits") {
		t.Fatalf("unlisted host: %v: %q", err, out)
	}
	if n := w.denied.Conns(); n != 0 {
		t.Fatalf("denied upstream got %d connections", n)
	}
}

func TestArbitraryIPWithAllowedSNIReachesResolvedAddress(t *testing.T) {
	w := newWorld(t, e2e.SidecarOptions{})
	// The agent asks for the denied upstream's address with the allowed host's SNI.
	resolve := fmt.Sprintf("allowed.test:443:%s", w.denied.Addr.Addr())
	out, err := w.curl(t, "--resolve", resolve, "https://allowed.test/x")
	if err != nil || out != "hello from allowed /x\n" {
		t.Fatalf("%v: %q", err, out)
	}
	if n := w.denied.Conns(); n != 0 {
		t.Fatalf("the address the agent asked for got %d connections", n)
	}
	ev := w.WaitEvent(t, "for allowed.test", decisionFor("allowed.test"))
	if ev.Envelope.Transport.OrigDst != w.denied.Addr.String() {
		t.Errorf("orig_dst = %q, want the address the agent asked for (%s)", ev.Envelope.Transport.OrigDst, w.denied.Addr)
	}
}

func TestIPv6AndMappedDestinationsRedirected(t *testing.T) {
	w := newWorld(t, e2e.SidecarOptions{})
	for _, target := range []string{"[::1]", "[::ffff:127.51.100.7]"} {
		out, err := w.curl(t, "--resolve", "allowed.test:443:"+target, "https://allowed.test/v6")
		if err != nil || out != "hello from allowed /v6\n" {
			t.Fatalf("%s: %v: %q\n%s", target, err, out, w.Logs())
		}
	}
	var dsts []string
	for _, ev := range w.Decisions(t) {
		if ev.Envelope.Transport.Mode != "dns" {
			dsts = append(dsts, ev.Envelope.Transport.OrigDst)
		}
	}
	for _, want := range []string{"[::1]:443", "127.51.100.7:443"} {
		if !contains(dsts, want) {
			t.Errorf("no record with orig_dst %s; have %v", want, dsts)
		}
	}
}

func TestOutsideCgroupUntouchedAndDirectDialRefused(t *testing.T) {
	w := newWorld(t, e2e.SidecarOptions{})
	// From the test process (outside the enforced cgroup) the upstream is reached directly.
	c, err := net.Dial("tcp", w.plain.Addr.String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	// Inside, dialing the sidecar's own port is refused by the kernel.
	out, err := w.Run(t, "python3", "-c", fmt.Sprintf(`import socket
try:
    socket.create_connection(("127.0.0.1", %d), timeout=3)
    print("connected")
except OSError as e:
    print("refused", e.errno)`, w.Port))
	if err != nil || strings.TrimSpace(out) != "refused 1" {
		t.Fatalf("direct dial from inside: %v: %q", err, out)
	}
	// From outside, a direct connection has no origin record: closed before anything is read.
	c, err = net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", w.Port))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: plain.test\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("direct connection from outside got an answer (%d bytes, %v)", n, err)
	}
	c.Close()
	if got := len(w.plain.Requests()); got != 0 {
		t.Fatalf("plain upstream saw %d requests", got)
	}
	// The only record is the kernel's refusal of the agent's direct dial: nothing for the traffic
	// from outside the cgroup.
	w.WaitEvent(t, "the kernel's record of the refused direct dial", func(ev audit.Event) bool {
		return ev.Kind == audit.KindDecision && ev.Envelope.Transport.Mode == "kernel" && ev.Decision.Outcome == "DENY" &&
			strings.Contains(ev.Decision.Reason, "self") && ev.Envelope.Agent.Comm == "python3"
	})
	for _, ev := range w.Decisions(t) {
		if ev.Envelope.Transport.Mode != "kernel" {
			t.Fatalf("audit record for traffic that was not an agent's: %+v %+v", ev.Envelope, ev.Decision)
		}
	}
	waitFor(t, "the log line for the refused direct connection", func() bool {
		return strings.Contains(w.Logs(), "connection without origin record refused")
	})
}

func TestSidecarCrashFailsClosedAndRestartReusesPins(t *testing.T) {
	w := newWorld(t, e2e.SidecarOptions{})
	if out, err := w.curl(t, "https://allowed.test/before"); err != nil {
		t.Fatalf("before: %v %q", err, out)
	}
	before := w.allowed.Conns()

	w.Kill9(t)
	out, err := w.curl(t, "https://allowed.test/during")
	if err == nil {
		t.Fatalf("with the sidecar dead, the agent still got out: %q", out)
	}
	if n := w.allowed.Conns(); n != before {
		t.Fatalf("with the sidecar dead, the upstream got %d new connections", n-before)
	}
	// Enforcement is still attached: a process outside is untouched, one inside is redirected.
	if !pinnedLinks(t, w.PinDir) {
		t.Fatal("links are not pinned after the crash")
	}

	// Restart under traffic: an agent keeps connecting while the sidecar comes up, so flows arrive
	// at every stage of start-up (this once crashed the sidecar between listen and attach).
	hammer := w.Agent.Command(context.Background(), t, "python3", "-c", `import socket, time
end = time.time() + 3
while time.time() < end:
    try:
        socket.create_connection(("allowed.test", 443), timeout=1).close()
    except OSError:
        pass
    time.sleep(0.002)`)
	if err := hammer.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	w.Start(t)
	if err := hammer.Wait(); err != nil {
		t.Fatalf("hammer: %v", err)
	}
	if strings.Contains(w.Logs(), "panic") {
		t.Fatalf("sidecar panicked during a restart under traffic:\n%s", w.Logs())
	}
	if !strings.Contains(w.Logs(), "reused_pins=true") {
		t.Errorf("restart did not reuse the pinned programs:\n%s", w.Logs())
	}
	if out, err := w.curl(t, "https://allowed.test/after"); err != nil || out != "hello from allowed /after\n" {
		t.Fatalf("after restart: %v %q", err, out)
	}
}

func TestBadConfigExitsNamingFileAndLine(t *testing.T) {
	bin := e2e.Binary(t, "firma")
	dir := t.TempDir()
	cfg := filepath.Join(dir, "firma.toml")
	os.WriteFile(cfg, []byte("[sidecar]\nlog_level = \"info\"\n\n[sidecar.transparent]\nprot = 1\n"), 0o600)
	out, err := exec.Command(bin, "sidecar", "-c", cfg).CombinedOutput()
	if code := exitCode(err); code != 1 || !strings.Contains(string(out), cfg+":5:1: unknown key \"sidecar.transparent.prot\"") {
		t.Fatalf("unknown key: exit %d: %s", code, out)
	}

	polDir := filepath.Join(dir, "policies")
	os.Mkdir(polDir, 0o755)
	os.WriteFile(filepath.Join(polDir, "bad.cedar"), []byte("permit (principal, action, resource)\nwhen { resource.nosuch == 1 };\n"), 0o644)
	os.WriteFile(cfg, []byte(fmt.Sprintf("[sidecar.policy]\ndir = %q\n[sidecar.transparent]\nenabled = false\n", polDir)), 0o600)
	out, err = exec.Command(bin, "sidecar", "-c", cfg).CombinedOutput()
	if code := exitCode(err); code != 1 || !strings.Contains(string(out), "bad.cedar:1:1") || strings.Contains(string(out), "audit log") {
		t.Fatalf("bad policy: exit %d: %s", code, out)
	}
}

func assertDecision(t *testing.T, ev audit.Event, outcome, mode, host string) {
	t.Helper()
	if ev.Decision == nil || ev.Decision.Outcome != outcome {
		t.Errorf("outcome = %+v, want %s", ev.Decision, outcome)
	}
	if ev.Envelope.Transport.Mode != mode || ev.Envelope.Intent.Resource.Host != host {
		t.Errorf("mode/host = %s %s, want %s %s", ev.Envelope.Transport.Mode, ev.Envelope.Intent.Resource.Host, mode, host)
	}
	a := ev.Envelope.Agent
	if a.AgentID != e2e.AgentID || a.PID <= 0 || a.Cgroup == "" {
		t.Errorf("agent = %+v, want %s with pid and cgroup", a, e2e.AgentID)
	}
}

func pinnedLinks(t *testing.T, pinDir string) bool {
	entries, err := os.ReadDir(filepath.Join(pinDir, "links"))
	return err == nil && len(entries) > 0
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// A [[sidecar.agents]] cgroup that appears after the sidecar started (a service started later) is
// enforced and attributed from its first connection.
func TestAgentCgroupCreatedAfterStart(t *testing.T) {
	testutil.RequireRoot(t)
	w := newWorld(t, e2e.SidecarOptions{NoAgent: true, ExtraTOML: "[[sidecar.agents]]\ncgroup = \"PLACEHOLDER\"\nagent_id = \"late-agent\"\n"})
	// The harness's parent exists only once the sidecar is prepared; point the entry below it,
	// restart, and only then create the cgroup.
	late := w.Parent.Rel + "/late.service"
	cfg, _ := os.ReadFile(w.ConfigPath)
	os.WriteFile(w.ConfigPath, []byte(strings.Replace(string(cfg), "PLACEHOLDER", strings.TrimPrefix(late, "/"), 1)), 0o600)
	w.Stop(t)
	w.Start(t)
	if err := os.Mkdir(filepath.Join(w.Parent.Path, "late.service"), 0o755); err != nil {
		t.Fatal(err)
	}
	lateCg := &testutil.Cgroup{Path: filepath.Join(w.Parent.Path, "late.service"), Rel: late}
	out, err := lateCg.Command(context.Background(), t, "curl", "-sS", "--max-time", "10", "--cacert", w.ca.CertFile,
		"https://allowed.test/late").CombinedOutput()
	// TestPolicy permits test-agent only: late-agent is judged (and denied) under its own name.
	if err == nil {
		t.Fatalf("late-agent reached a host only test-agent may: %s", out)
	}
	ev := w.WaitEvent(t, "a record for late-agent", func(ev audit.Event) bool {
		return ev.Envelope != nil && ev.Envelope.Agent.AgentID == "late-agent"
	})
	if ev.Envelope.Agent.Cgroup != late || ev.Decision.Reason != "no policy permits" {
		t.Errorf("record = %+v %+v", ev.Envelope.Agent, ev.Decision)
	}
	os.Remove(lateCg.Path)
}
