//go:build linux

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openfirma/firma/authority"
	"github.com/openfirma/firma/internal/testutil"
)

// AuthorityOptions shape the authority a test runs.
type AuthorityOptions struct {
	// Policies are the .cedar files of its policy_dir, served as the bundle (name → text).
	// Default: TestPolicy.
	Policies map[string]string
	// Issuance is issuance.cedar. Default: TestIssuance.
	Issuance string
	// BundleTTLSeconds is bundle_ttl_seconds (default 60).
	BundleTTLSeconds int
}

// TestIssuance lets the authority issue communication.external.send to the harness's agent only.
const TestIssuance = `permit (
    principal == Firma::Agent::"test-agent",
    action == Firma::Action::"communication.external.send",
    resource
);
`

// Authority is a `firma authority -c` process run by a test: its own firma.toml (only an
// [authority] section), key, policy dir, issuance policy and revocation file, all in a temp dir,
// set up with the CLI the guide uses.
type Authority struct {
	Bin            string
	Dir            string
	ConfigPath     string
	KeyPath        string
	PublicKeyPath  string
	PolicyDir      string
	RevocationFile string
	Addr           string // 127.0.0.1:PORT, its listen_addr
	BundleTTL      time.Duration

	mu   sync.Mutex
	proc *Process
}

// NewAuthority generates a key with `firma authority generate-key`, writes the config, policies and
// issuance policy, and starts `firma authority -c`, waiting until it logs "authority ready".
func NewAuthority(tb testing.TB, opts AuthorityOptions) *Authority {
	tb.Helper()
	dir := tb.TempDir()
	a := &Authority{
		Bin:            Binary(tb, "firma"),
		Dir:            dir,
		ConfigPath:     filepath.Join(dir, "firma.toml"),
		KeyPath:        filepath.Join(dir, "keys", "firma-authority.key"),
		PolicyDir:      filepath.Join(dir, "policies"),
		RevocationFile: filepath.Join(dir, "revocations.txt"),
		Addr:           fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(tb)),
	}
	a.PublicKeyPath = authority.PublicKeyPath(a.KeyPath)
	ttl := opts.BundleTTLSeconds
	if ttl == 0 {
		ttl = 60
	}
	a.BundleTTL = time.Duration(ttl) * time.Second

	if err := os.Mkdir(filepath.Dir(a.KeyPath), 0o700); err != nil {
		tb.Fatal(err)
	}
	a.Firma(tb, "authority", "generate-key", "-o", a.KeyPath)

	issuanceDir := filepath.Join(dir, "issuance")
	for _, d := range []string{a.PolicyDir, issuanceDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	pols := opts.Policies
	if pols == nil {
		pols = map[string]string{"test.cedar": TestPolicy}
	}
	for name, text := range pols {
		a.WritePolicy(tb, name, text)
	}
	issuance := opts.Issuance
	if issuance == "" {
		issuance = TestIssuance
	}
	writeAuthorityFile(tb, filepath.Join(issuanceDir, "issuance.cedar"), issuance, 0o644)
	writeAuthorityFile(tb, a.RevocationFile, "", 0o644)
	writeAuthorityFile(tb, a.ConfigPath, fmt.Sprintf(`[authority]
listen_addr = %q
policy_dir = %q
issuance_policy_dir = %q
revocation_file = %q
key_file = %q
max_ttl_seconds = 28800
bundle_ttl_seconds = %d
log_level = "debug"
`, a.Addr, a.PolicyDir, issuanceDir, a.RevocationFile, a.KeyPath, ttl), 0o600)

	tb.Cleanup(func() { a.Kill(tb) })
	a.Start(tb)
	return a
}

// URL is what [sidecar.authority] url names.
func (a *Authority) URL() string { return "http://" + a.Addr }

// SidecarTOML is a [sidecar.authority] section that follows this authority, caching in cacheDir.
func (a *Authority) SidecarTOML(cacheDir string) string {
	return fmt.Sprintf("[sidecar.authority]\nurl = %q\npublic_key_path = %q\ncache_dir = %q\n",
		a.URL(), a.PublicKeyPath, cacheDir)
}

// Start runs `firma authority -c` and waits for "authority ready".
func (a *Authority) Start(tb testing.TB) {
	tb.Helper()
	p := StartProcess(tb, a.Dir, testutil.CleanEnv(), "authority ready", 15*time.Second, a.Bin, "authority", "-c", a.ConfigPath)
	a.mu.Lock()
	a.proc = p
	a.mu.Unlock()
}

func (a *Authority) process() *Process {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.proc
}

// Kill stops the authority with SIGKILL, as a crash or a lost host would, and waits for it.
func (a *Authority) Kill(tb testing.TB) {
	tb.Helper()
	if p := a.process(); p != nil {
		p.Kill()
	}
}

// Logs is everything the authority process has written.
func (a *Authority) Logs() string {
	if p := a.process(); p != nil {
		return p.Logs()
	}
	return ""
}

// Firma runs the firma binary in the authority's dir and returns its stdout; a non-zero exit fails
// the test.
func (a *Authority) Firma(tb testing.TB, args ...string) string {
	tb.Helper()
	cmd := exec.Command(a.Bin, args...)
	cmd.Dir = a.Dir
	cmd.Env = testutil.CleanEnv()
	var stderr testutil.SyncBuffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("firma %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// Issue runs `firma authority -c … issue` for one action class (communication.external.send), as
// the guide writes it, and returns the new token's id, read back from the capability file.
func (a *Authority) Issue(tb testing.TB, agentID, scope string, ttlSeconds int, output string) string {
	tb.Helper()
	a.Firma(tb, "authority", "-c", a.ConfigPath, "issue",
		"--agent-id", agentID,
		"--session-id", authority.NewTokenID(),
		"--action", "communication.external.send",
		"--resource-scope", scope,
		"--ttl-seconds", fmt.Sprint(ttlSeconds),
		"--output", output)
	f, err := authority.ReadCapabilityFile(output)
	if err != nil {
		tb.Fatal(err)
	}
	return f.TokenID
}

// Revoke runs `firma authority -c … revoke TOKEN_ID --reason …`.
func (a *Authority) Revoke(tb testing.TB, tokenID, reason string) {
	tb.Helper()
	a.Firma(tb, "authority", "-c", a.ConfigPath, "revoke", tokenID, "--reason", reason)
}

// WritePolicy replaces (or adds) name in the policy dir, atomically, as an editor that saves by
// rename does: the authority never sees half a file.
func (a *Authority) WritePolicy(tb testing.TB, name, text string) {
	tb.Helper()
	tmp := filepath.Join(a.PolicyDir, "."+name+".tmp")
	writeAuthorityFile(tb, tmp, text, 0o644)
	if err := os.Rename(tmp, filepath.Join(a.PolicyDir, name)); err != nil {
		tb.Fatal(err)
	}
}

// AgentTOML is a [[sidecar.agents]] entry for cg; capabilityFile may be "".
func AgentTOML(cg *testutil.Cgroup, agentID, capabilityFile string) string {
	s := fmt.Sprintf("[[sidecar.agents]]\ncgroup = %q\nagent_id = %q\n", strings.TrimPrefix(cg.Rel, "/"), agentID)
	if capabilityFile != "" {
		s += fmt.Sprintf("capability_file = %q\n", capabilityFile)
	}
	return s
}

// Reconfigure stops the sidecar, appends text to its firma.toml and starts it again. It is for
// sections that name cgroups which exist only once the sidecar runs (Agent, or new ones made under
// Parent with testutil.NewCgroup).
func (s *Sidecar) Reconfigure(tb testing.TB, text string) {
	tb.Helper()
	s.Stop(tb)
	f, err := os.OpenFile(s.ConfigPath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		tb.Fatal(err)
	}
	_, err = f.WriteString("\n" + text + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		tb.Fatal(err)
	}
	s.Start(tb)
}

func writeAuthorityFile(tb testing.TB, path, text string, mode os.FileMode) {
	tb.Helper()
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		tb.Fatal(err)
	}
}
