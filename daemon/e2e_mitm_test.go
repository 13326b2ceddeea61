//go:build linux

package daemon_test

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/internal/e2e"
	"github.com/openfirma/firma/internal/testutil"
)

// The sidecar's API key for allowed.test: only the sidecar's environment holds it.
const sidecarSecret = "sk-sidecar-e2e-0123456789"

// mitmWorld is a world whose sidecar terminates TLS for *.allowed.test and allowed.test, with
// extra upstreams for the bypass, strict, fallback and bad-certificate cases.
type mitmWorld struct {
	*world
	caDir    string
	firmaCA  string // firma's CA certificate, which the clients here trust explicitly
	bypass   *testutil.Upstream
	strict   *testutil.Upstream
	pin      *testutil.Upstream
	badcert  *testutil.Upstream
	bearerUp *testutil.Upstream
}

func newMITMWorld(t *testing.T) *mitmWorld {
	t.Helper()
	testutil.RequireRoot(t)
	m := &mitmWorld{caDir: filepath.Join(t.TempDir(), "firma-ca")}
	upCA := testutil.NewCA(t, "firma e2e MITM upstream CA")
	otherCA := testutil.NewCA(t, "an untrusted CA")
	loop := func() netip.AddrPort { return netip.AddrPortFrom(testutil.LoopbackAddr(t), 443) }
	m.bypass = testutil.NewHTTPSUpstream(t, "bypass", loop(), upCA, "cdn.allowed.test")
	m.strict = testutil.NewHTTPSUpstream(t, "strict", loop(), upCA, "strict.allowed.test")
	m.pin = testutil.NewHTTPSUpstream(t, "pin", loop(), upCA, "pin.allowed.test")
	m.badcert = testutil.NewHTTPSUpstream(t, "badcert", loop(), otherCA, "badcert.allowed.test")
	m.bearerUp = testutil.NewHTTPSUpstream(t, "bearer", loop(), upCA, "bearer.allowed.test")
	opts := e2e.SidecarOptions{
		Resolve: map[string]string{
			"cdn.allowed.test":     m.bypass.Addr.Addr().String(),
			"strict.allowed.test":  m.strict.Addr.Addr().String(),
			"pin.allowed.test":     m.pin.Addr.Addr().String(),
			"badcert.allowed.test": m.badcert.Addr.Addr().String(),
			"bearer.allowed.test":  m.bearerUp.Addr.Addr().String(),
		},
		Env: []string{"FIRMA_E2E_KEY=" + sidecarSecret, "FIRMA_E2E_BEARER=bearer-" + sidecarSecret},
		ExtraTOML: fmt.Sprintf(`
[sidecar.ca]
dir = %q

[sidecar.interceptor.https_mitm]
enabled = true
intercept_hosts = ["allowed.test", "*.allowed.test"]
bypass_hosts = ["cdn.allowed.test"]
strict_hosts = ["strict.allowed.test"]

[[sidecar.credentials]]
host = "allowed.test"
mode = "basic"
header = "x-api-key"
value_from_env = "FIRMA_E2E_KEY"

[[sidecar.credentials]]
host = "bearer.allowed.test"
mode = "bearer"
value_from_env = "FIRMA_E2E_BEARER"
`, m.caDir),
	}
	m.world = newWorldWithCA(t, opts, upCA)
	m.firmaCA = filepath.Join(m.caDir, "firma-ca.crt")
	return m
}

// newWorldWithCA is newWorld with every upstream's certificate (and the sidecar's ca_file) from ca.
func newWorldWithCA(t *testing.T, opts e2e.SidecarOptions, ca *testutil.CA) *world {
	t.Helper()
	w := &world{ca: ca}
	w.allowed = testutil.NewHTTPSUpstream(t, "allowed", netip.AddrPortFrom(testutil.LoopbackAddr(t), 443), w.ca, "allowed.test")
	w.denied = testutil.NewHTTPSUpstream(t, "denied", netip.AddrPortFrom(testutil.LoopbackAddr(t), 443), w.ca, "denied.test")
	w.plain = testutil.NewHTTPUpstream(t, "plain", netip.AddrPortFrom(testutil.LoopbackAddr(t), 80))
	opts.Resolve["allowed.test"] = w.allowed.Addr.Addr().String()
	opts.Resolve["denied.test"] = w.denied.Addr.Addr().String()
	opts.Resolve["plain.test"] = w.plain.Addr.Addr().String()
	opts.UpstreamCA = ca.CertFile
	w.Sidecar = e2e.NewSidecar(t, opts)
	return w
}

// fcurl runs curl in the agent cgroup trusting only firma's CA.
func (m *mitmWorld) fcurl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return m.Run(t, "curl", append([]string{"-sS", "--max-time", "10", "--cacert", m.firmaCA}, args...)...)
}

func mitmRecord(path string) func(audit.Event) bool {
	return func(ev audit.Event) bool {
		return ev.Kind == audit.KindDecision && ev.Envelope != nil && ev.Envelope.Transport.Mode == "mitm" &&
			ev.Envelope.Intent.Resource.Path == path
	}
}

// 1. The intercepted host shows firma's CA as issuer and L7 fields in the audit log; the bypassed
// one shows the upstream's own chain and host:port only.
func TestMITMInterceptAndBypass(t *testing.T) {
	m := newMITMWorld(t)
	out, err := m.fcurl(t, "-v", "https://allowed.test/v1/models")
	if err != nil || !strings.Contains(out, "hello from allowed /v1/models") {
		t.Fatalf("intercepted: %v\n%s\nsidecar:\n%s", err, out, m.Logs())
	}
	if !strings.Contains(out, "issuer: O=firma; OU=") || !strings.Contains(out, "CN=Firma Sidecar CA") {
		t.Errorf("intercepted host not issued by firma's CA:\n%s", out)
	}
	ev := m.WaitEvent(t, "the L7 record", mitmRecord("/v1/models"))
	r := ev.Envelope.Intent.Resource
	if ev.Decision.Outcome != "ALLOW" || r.Host != "allowed.test" || r.Method != "GET" || ev.Envelope.Intent.ActionClass == nil {
		t.Errorf("L7 record = %+v %+v", ev.Envelope.Intent, ev.Decision)
	}
	comp := m.WaitEvent(t, "its completion", func(e audit.Event) bool { return e.DecisionID == ev.ID })
	if comp.Result == nil || comp.Result.UpstreamStatus != 200 {
		t.Errorf("completion = %+v", comp.Result)
	}

	out, err = m.Run(t, "curl", "-sS", "-v", "--max-time", "10", "--cacert", m.ca.CertFile, "https://cdn.allowed.test/x")
	if err != nil || !strings.Contains(out, "hello from bypass /x") || !strings.Contains(out, "issuer: O=firma tests; CN=firma e2e MITM upstream CA") {
		t.Fatalf("bypassed host, want the upstream's own chain: %v\n%s", err, out)
	}
	ev = m.WaitEvent(t, "the bypass record", decisionFor("cdn.allowed.test"))
	if ev.Envelope.Transport.Mode != "connect" || ev.Envelope.Intent.Resource.Host != "cdn.allowed.test:443" ||
		ev.Envelope.Intent.Resource.Path != "" || ev.Envelope.Intent.Resource.Method != "" {
		t.Errorf("bypass record = %+v", ev.Envelope)
	}
}

// 2. One keep-alive connection: allowed, denied, allowed. The denied request never reaches the
// upstream. Then HTTP/2 with concurrent streams on one connection.
func TestMITMPerRequestOnOneConnection(t *testing.T) {
	m := newMITMWorld(t)
	out, err := m.Run(t, "python3", "-c", fmt.Sprintf(`import http.client, ssl
c = http.client.HTTPSConnection("allowed.test", 443, context=ssl.create_default_context(cafile=%q), timeout=10)
for p in ["/ok", "/secret/key", "/ok2"]:
    c.request("GET", p)
    r = c.getresponse()
    print(r.status, r.read().decode().strip())
print("same socket:", c.sock is not None)`, m.firmaCA))
	want := "200 hello from allowed /ok\n403 firma: denied: forbidden by policy\n200 hello from allowed /ok2\nsame socket: True\n"
	if err != nil || out != want {
		t.Fatalf("keep-alive: %v\n%s\nwant:\n%s", err, out, want)
	}

	// HTTP/2: curl multiplexes the three transfers over one connection (-Z).
	out, err = m.fcurl(t, "--no-progress-meter", "--http2", "-Z", "-w", "%{http_code} %{http_version} %{num_connects}\n", "-o", "/dev/null",
		"https://allowed.test/h2/a", "-o", "/dev/null", "https://allowed.test/secret/h2", "-o", "/dev/null", "https://allowed.test/h2/b")
	if err != nil {
		t.Fatalf("h2: %v\n%s", err, out)
	}
	codes, connects := map[string]int{}, 0
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		if len(f) != 3 || len(f[0]) != 3 || f[0][0] < '1' || f[0][0] > '5' {
			continue // curl's parallel progress table
		}
		if f[1] != "2" {
			t.Fatalf("not HTTP/2: %q in:\n%s", l, out)
		}
		codes[f[0]]++
		if f[2] != "0" {
			connects++
		}
	}
	if codes["200"] != 2 || codes["403"] != 1 || connects != 1 {
		t.Fatalf("h2: codes %v, %d new connections (want 200×2, 403×1, one connection):\n%s", codes, connects, out)
	}
	for _, r := range m.allowed.Requests() {
		if strings.HasPrefix(r.Path, "/secret") {
			t.Fatalf("a denied request reached the upstream: %s", r.Path)
		}
	}
	for _, p := range []string{"/secret/key", "/secret/h2"} {
		ev := m.WaitEvent(t, "deny "+p, mitmRecord(p))
		if ev.Decision.Outcome != "DENY" || !contains(ev.Decision.MatchedPolicies, "forbid-secret-paths") {
			t.Errorf("%s: %+v", p, ev.Decision)
		}
	}
}

// 3. The upstream sees the sidecar's key, never the agent's; the agent has no key.
func TestMITMCredentialInjection(t *testing.T) {
	m := newMITMWorld(t)
	out, err := m.fcurl(t, "-H", "x-api-key: agent-guess", "-H", "Authorization: Bearer agent-token", "https://allowed.test/v1/messages")
	if err != nil || !strings.Contains(out, "hello from allowed") {
		t.Fatalf("%v %s", err, out)
	}
	env, _ := m.Run(t, "env")
	if strings.Contains(env, sidecarSecret) || strings.Contains(env, "FIRMA_E2E_KEY") {
		t.Fatal("the agent's environment holds the sidecar's key")
	}
	reqs := m.allowed.Requests()
	last := reqs[len(reqs)-1]
	if got := last.Header.Values("X-Api-Key"); len(got) != 1 || got[0] != sidecarSecret {
		t.Errorf("upstream saw x-api-key %q, want only the sidecar's", got)
	}
	if got := last.Header.Get("Authorization"); got != "" {
		t.Errorf("upstream saw the agent's Authorization %q", got)
	}
	if _, err := m.fcurl(t, "https://bearer.allowed.test/v1/chat"); err != nil {
		t.Fatal(err)
	}
	if got := m.bearerUp.Requests()[0].Header.Get("Authorization"); got != "Bearer bearer-"+sidecarSecret {
		t.Errorf("bearer upstream saw Authorization %q", got)
	}
	// The key never appears in the audit log or in the sidecar's own log.
	if b, _ := os.ReadFile(m.AuditPath); strings.Contains(string(b), sidecarSecret) {
		t.Error("the audit log holds the key")
	}
	if strings.Contains(m.Logs(), sidecarSecret) {
		t.Error("the sidecar log holds the key")
	}
}

// 4. A client that does not trust firma's CA fails. For a strict host that is a DENY record; a
// non-strict host falls back to CONNECT-only, audited as such.
func TestMITMHandshakeFailureStrictAndFallback(t *testing.T) {
	m := newMITMWorld(t)
	untrusting := func(url string) (string, error) {
		return m.Run(t, "curl", "-sS", "--max-time", "10", "--cacert", m.ca.CertFile, url)
	}
	if out, err := untrusting("https://strict.allowed.test/"); err == nil {
		t.Fatalf("strict host: a client not trusting firma's CA got through: %s", out)
	}
	ev := m.WaitEvent(t, "strict deny", func(ev audit.Event) bool {
		return ev.Envelope != nil && ev.Envelope.Transport.SNI == "strict.allowed.test" && ev.Decision != nil && ev.Decision.Outcome == "DENY"
	})
	if !strings.Contains(ev.Decision.Reason, "mitm handshake failed (strict host)") {
		t.Errorf("strict reason = %q", ev.Decision.Reason)
	}
	if out, err := untrusting("https://strict.allowed.test/"); err == nil {
		t.Fatalf("strict host fell back: %s", out)
	}
	if n := m.strict.Conns(); n != 0 {
		t.Fatalf("strict upstream got %d connections", n)
	}

	if out, err := untrusting("https://pin.allowed.test/first"); err == nil {
		t.Fatalf("pinning client accepted firma's certificate: %s", out)
	}
	if !strings.Contains(m.Logs(), "mitm_handshake_failed") {
		t.Error("no mitm_handshake_failed log line")
	}
	out, err := untrusting("https://pin.allowed.test/second")
	if err != nil || !strings.Contains(out, "hello from pin /second") {
		t.Fatalf("non-strict host did not fall back: %v %s", err, out)
	}
	ev = m.WaitEvent(t, "fallback record", func(ev audit.Event) bool {
		return decisionFor("pin.allowed.test")(ev) && ev.Envelope.Transport.Mode == "connect" && ev.Decision.Outcome == "ALLOW"
	})
	if !strings.Contains(ev.Decision.Reason, "mitm fallback") {
		t.Errorf("fallback reason = %q", ev.Decision.Reason)
	}
}

// 5. A Host that does not match the SNI is refused (421, DENY); an upstream whose certificate does
// not verify is an ABORT.
func TestMITMDomainFrontingAndBadUpstream(t *testing.T) {
	m := newMITMWorld(t)
	out, _ := m.fcurl(t, "-i", "-H", "Host: denied.test", "https://allowed.test/front")
	if !strings.Contains(out, "421") {
		t.Fatalf("domain fronting: %s", out)
	}
	ev := m.WaitEvent(t, "fronting deny", mitmRecord("/front"))
	if ev.Decision.Outcome != "DENY" || !strings.Contains(ev.Decision.Reason, "denied.test") {
		t.Errorf("fronting record = %+v", ev.Decision)
	}
	if n := m.denied.Conns(); n != 0 {
		t.Fatalf("the fronted host got %d connections", n)
	}

	out, _ = m.fcurl(t, "-i", "https://badcert.allowed.test/x")
	if !strings.Contains(out, "502") || !strings.Contains(out, "certificate") {
		t.Fatalf("bad upstream certificate: %s", out)
	}
	dec := m.WaitEvent(t, "badcert decision", mitmRecord("/x"))
	comp := m.WaitEvent(t, "badcert abort", func(e audit.Event) bool { return e.DecisionID == dec.ID })
	if comp.Decision == nil || comp.Decision.Outcome != "ABORT" || !strings.Contains(comp.Result.Error, "connector_network_error") {
		t.Errorf("abort record = %+v %+v", comp.Decision, comp.Result)
	}
	if len(m.badcert.Requests()) != 0 {
		t.Fatal("a request reached the upstream whose certificate failed")
	}
}

// 6. A restart keeps the CA; a damaged CA dir stops start-up with a clear error.
func TestMITMCAPersistsAndDamageStopsStartup(t *testing.T) {
	m := newMITMWorld(t)
	show := func() string {
		out, err := exec.Command(m.Bin, "ca", "show", "-c", m.ConfigPath).CombinedOutput()
		if err != nil {
			t.Fatalf("ca show: %v %s", err, out)
		}
		return string(out)
	}
	before := show()
	if !strings.Contains(before, m.caDir) {
		t.Fatalf("ca show does not name the dir: %s", before)
	}
	m.Stop(t)
	m.Start(t)
	if after := show(); after != before {
		t.Fatalf("CA changed across a restart:\n%s\n%s", before, after)
	}
	if strings.Contains(m.Logs(), "bootstrapping CA") && strings.Count(m.Logs(), "wrote firma-ca.crt and firma-ca.key") > 1 {
		t.Fatal("the CA was regenerated")
	}
	m.Stop(t)
	if err := os.Remove(filepath.Join(m.caDir, "firma-ca.key")); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(m.Bin, "sidecar", "-c", m.ConfigPath).CombinedOutput()
	if exitCode(err) != 1 || !strings.Contains(string(out), m.caDir) {
		t.Fatalf("damaged CA dir: exit %d: %s", exitCode(err), out)
	}
	if _, err := os.Stat(filepath.Join(m.caDir, "firma-ca.key")); !os.IsNotExist(err) {
		t.Fatal("a key was regenerated")
	}
}

// A Go binary under firma run trusts firma's CA through the mount namespace alone: no CA flag, and
// the CA variables removed.
func TestFirmaRunGoTrustsMITMCAThroughMountNamespace(t *testing.T) {
	m := newMITMWorld(t)
	client := e2e.Binary(t, "httpclient")
	out, err := m.firmaRun(t, "env", "-u", "SSL_CERT_FILE", "-u", "SSL_CERT_DIR", client, "https://allowed.test/go-trust")
	if err != nil || strings.TrimSpace(out) != "200 hello from allowed /go-trust" {
		t.Fatalf("%v\n%s\nsidecar:\n%s", err, out, m.Logs())
	}
	m.WaitEvent(t, "the L7 record", mitmRecord("/go-trust"))
}
