//go:build linux

// Package local holds the assets of the guide "Secure a local coding agent" (setup.sh, the Claude
// example config and mapping rules) and a test that follows the guide as written.
package local

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/internal/e2e"
	"github.com/openfirma/firma/internal/testutil"
)

// The guide's own commands, verbatim (Steps 2 to 6). The heredocs are the guide's, with the paths
// in firma.toml relative to the file's directory (.local/), as firma reads them.
const guideSteps = `set -e
examples/firma-run/local/setup.sh
cp examples/firma-run/local/assets/firma.local.claude.example.toml \
  .local/firma.toml
cp examples/firma-run/local/assets/mapping-rules.claude.local.example.toml \
  .local/mapping-rules.toml
firma authority generate-key -o .local/firma-authority.key
# The setup.sh-generated .local/firma.toml is sidecar-only. Append an
# [authority] section so the same file serves ` + "`firma authority`" + ` too.
cat >> .local/firma.toml <<EOF
[authority]
listen_addr = "[::1]:50051"
policy_dir = "../examples/policies"
issuance_policy_dir = "issuance"
revocation_file = "revocations.txt"
key_file = "firma-authority.key"
max_ttl_seconds = 28800
bundle_ttl_seconds = 60
log_level = "info"
EOF
mkdir -p .local/issuance
cat > .local/issuance/issuance.cedar <<'EOF'
permit (
principal == Firma::Agent::"claude-code",
action == Firma::Action::"communication.external.send",
resource
);
EOF
touch .local/revocations.txt
firma authority -c .local/firma.toml issue \
--agent-id claude-code \
--session-id $(uuidgen) \
--action communication.external.send \
--resource-scope '*.anthropic.com*' \
--ttl-seconds 28800 \
--output .local/capability-claude.toml
cat >> .local/firma.toml <<'EOF'
[[sidecar.credentials]]
host = "api.anthropic.com"
mode = "basic"
header = "x-api-key"
value_from_env = "ANTHROPIC_API_KEY"
EOF
`

const apiKey = "sk-ant-guide-0123456789"

// TestGuideSecureACodingAgent follows the guide in a scratch copy of the repository: setup.sh, the
// Claude config and mapping rules, the authority key, the [authority] section, issuance, a
// capability, the credential, then the three terminals — authority, sidecar (holding the API key),
// and `firma run --profile codex --capability-file … -- <agent>`.
//
// Departures, all test plumbing: the agent is a shell script rather than `claude code`; fake
// api.anthropic.com and paste.rs upstreams run on loopback, named through an appended
// [sidecar.upstream] section; and the authority port, transparent ports, cgroup and pin dir are
// moved off the defaults so the test cannot disturb a real installation. The control socket stays
// at its default (/run/firma/control.sock), because the guide's `firma run` names none.
func TestGuideSecureACodingAgent(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "uuidgen") // the guide's session ids (Debian: uuid-runtime; make deps installs it)
	repo := scratchRepo(t)
	bin := filepath.Dir(e2e.Binary(t, "firma"))
	env := append(testutil.CleanEnv(), "PATH="+bin+":"+os.Getenv("PATH"))

	sh := exec.Command("bash", "-c", guideSteps)
	sh.Dir, sh.Env = repo, env
	if out, err := sh.CombinedOutput(); err != nil {
		t.Fatalf("the guide's steps: %v\n%s", err, out)
	}
	check := exec.Command(filepath.Join(bin, "firma"), "check", "config", ".local/firma.toml")
	check.Dir, check.Env = repo, env
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("firma check config on the guide's file: %v\n%s", err, out)
	}

	// Test plumbing: fake upstreams, and ports and paths of our own.
	ca := testutil.NewCA(t, "guide upstream CA")
	anthropic := testutil.NewHTTPSUpstream(t, "anthropic", netip.AddrPortFrom(testutil.LoopbackAddr(t), 443), ca, "api.anthropic.com")
	paste := testutil.NewHTTPSUpstream(t, "paste", netip.AddrPortFrom(testutil.LoopbackAddr(t), 443), ca, "paste.rs")
	parent := testutil.NewCgroup(t, nil)
	pinDir := "/sys/fs/bpf/" + filepath.Base(parent.Path)
	t.Cleanup(func() { bpf.Cleanup(pinDir) })
	ports := testutil.FreePorts(t, 4)
	authPort := ports[0]
	cfgPath := filepath.Join(repo, ".local/firma.toml")
	cfg, _ := os.ReadFile(cfgPath)
	text := strings.NewReplacer(
		"[::1]:50051", fmt.Sprintf("[::1]:%d", authPort),
		`cgroup = "firma-agents.slice"`, fmt.Sprintf("cgroup = %q", strings.TrimPrefix(parent.Rel, "/")),
		"port = 15001", fmt.Sprintf("port = %d", ports[1]),
		"dns_port = 15053", fmt.Sprintf("dns_port = %d", ports[2]),
		`pin_dir = "/sys/fs/bpf/firma"`, fmt.Sprintf("pin_dir = %q", pinDir),
		`listen_addr = "127.0.0.1:8080"`, fmt.Sprintf(`listen_addr = "127.0.0.1:%d"`, ports[3]),
	).Replace(string(cfg))
	text += fmt.Sprintf(`
[sidecar.upstream]
ca_file = %q
allow_cidrs = ["127.0.0.0/8"]
resolve = { "api.anthropic.com" = %q, "paste.rs" = %q }
`, ca.CertFile, anthropic.Addr.Addr(), paste.Addr.Addr())
	if err := os.WriteFile(cfgPath, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}

	// Terminal 1: the authority. Terminal 2: the sidecar, which alone holds the API key.
	firma := filepath.Join(bin, "firma")
	authority := e2e.StartProcess(t, repo, append(env, "ANTHROPIC_API_KEY="), "authority ready", 30*time.Second, firma, "authority", "-c", ".local/firma.toml")
	t.Cleanup(func() { authority.Stop(t, 10*time.Second) })
	sidecar := e2e.StartProcess(t, repo, append(env, "ANTHROPIC_API_KEY="+apiKey), "sidecar ready", 30*time.Second, firma, "sidecar", "-c", ".local/firma.toml")
	t.Cleanup(func() { sidecar.Stop(t, 10*time.Second) })
	for _, line := range []string{"bootstrapping CA at " + filepath.Join(repo, ".local/firma-ca"), "wrote firma-ca.crt and firma-ca.key", "sidecar ready"} {
		if !strings.Contains(sidecar.Logs(), line) {
			t.Errorf("sidecar log lacks the guide's line %q:\n%s", line, sidecar.Logs())
		}
	}
	waitBundle(t, repo)

	// Terminal 3: the agent under firma run, exactly as the guide runs it.
	agent := `echo "key in env: $(env | grep -c ANTHROPIC_API_KEY || true)"
curl -sS --max-time 10 -X POST -d '{"model":"claude"}' https://api.anthropic.com/v1/messages
curl -sS --max-time 10 https://paste.rs/ || echo "paste.rs: refused"
# The workspace is the repository, read-write; what decides the agent's policy is not.
if grep -q PRIVATE .local/firma-authority.key 2>/dev/null; then echo "authority key: READABLE"; else echo "authority key: hidden"; fi
if grep -q forbid examples/policies/claude-code.cedar && ! echo 'permit (principal, action, resource);' >> examples/policies/claude-code.cedar 2>/dev/null; then echo "policy: read-only"; else echo "policy: WRITABLE"; fi
if touch .local/issuance/x.cedar 2>/dev/null; then echo "issuance: WRITABLE"; else echo "issuance: protected"; fi
if touch workspace-is-writable 2>/dev/null; then echo "workspace: writable"; fi`
	run := exec.Command(firma, "run", "--profile", "codex", "--capability-file", ".local/capability-claude.toml", "--", "sh", "-c", agent)
	run.Dir, run.Env = repo, append(env, "ANTHROPIC_API_KEY=sk-ant-from-the-users-shell")
	out, err := run.CombinedOutput()
	if err != nil {
		t.Fatalf("firma run: %v\n%s\nsidecar:\n%s\nauthority:\n%s", err, out, sidecar.Logs(), authority.Logs())
	}
	for _, want := range []string{"key in env: 0", "hello from anthropic /v1/messages", "paste.rs: refused",
		"authority key: hidden", "policy: read-only", "issuance: protected", "workspace: writable"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("agent output lacks %q:\n%s\nsidecar:\n%s", want, out, sidecar.Logs())
		}
	}
	if reqs := anthropic.Requests(); len(reqs) != 1 || reqs[0].Header.Get("X-Api-Key") != apiKey {
		t.Errorf("api.anthropic.com saw %d requests, x-api-key %q; want the sidecar's key", len(reqs), firstKey(reqs))
	}
	if n := paste.Conns(); n != 0 {
		t.Errorf("paste.rs got %d connections", n)
	}
	if b, _ := os.ReadFile(filepath.Join(repo, "examples/policies/claude-code.cedar")); strings.Contains(string(b), "permit (principal, action, resource);") {
		t.Error("the agent rewrote the policy the authority serves")
	}

	// The guide's check: a DENY event for paste.rs naming the claude-code forbid.
	evs := e2e.ReadEvents(t, filepath.Join(repo, ".local/audit.jsonl"))
	var deny *audit.Event
	_ = audit.KindDecision
	for i, ev := range evs {
		if ev.Decision != nil && ev.Decision.Outcome == "DENY" && ev.Envelope != nil && ev.Envelope.Intent.Resource.Host == "paste.rs" {
			deny = &evs[i]
			break
		}
	}
	if deny == nil {
		t.Fatalf("no DENY with envelope.intent.resource.host == \"paste.rs\" in .local/audit.jsonl")
	}
	if got := deny.Decision.MatchedPolicies; len(got) != 1 || !strings.HasPrefix(got[0], "forbid_at_claude-code.cedar_") {
		t.Errorf("matched_policies = %v, want [forbid_at_claude-code.cedar_…]", got)
	}
	var allow bool
	for _, ev := range evs {
		if ev.Decision != nil && ev.Decision.Outcome == "ALLOW" && ev.Envelope.Transport.Mode == "mitm" &&
			ev.Envelope.Intent.Resource.Path == "/v1/messages" && ev.Envelope.Agent.AgentID == "claude-code" &&
			ev.Capability != nil && ev.Capability.TokenID != "" {
			allow = true
		}
	}
	if !allow {
		t.Errorf("no ALLOW record for POST /v1/messages by claude-code with its capability")
	}
}

// scratchRepo copies what the guide touches (examples/firma-run/local and examples/policies) into
// a fresh directory laid out like the repository.
func scratchRepo(t *testing.T) string {
	t.Helper()
	repo := t.TempDir()
	src, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{"examples/firma-run/local", "examples/policies"} {
		dst := filepath.Join(repo, dir)
		os.MkdirAll(filepath.Dir(dst), 0o755)
		if out, err := exec.Command("cp", "-a", filepath.Join(src, dir), dst).CombinedOutput(); err != nil {
			t.Fatalf("copy %s: %v %s", dir, err, out)
		}
	}
	return repo
}

// waitBundle waits until the sidecar has the authority's bundle (its cache file exists).
func waitBundle(t *testing.T, repo string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		entries, _ := os.ReadDir(filepath.Join(repo, ".local/authority-cache"))
		if len(entries) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the sidecar never received the authority's bundle")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func firstKey(reqs []testutil.SeenRequest) string {
	if len(reqs) == 0 {
		return ""
	}
	return reqs[0].Header.Get("X-Api-Key")
}
