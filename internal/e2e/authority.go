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
	// TLS serves HTTPS with what `firma authority init-tls` makes, and requires sidecars to
	// authenticate: by client certificate (client_ca_file) or token (tokens_file), both made for
	// each of Sidecars.
	TLS      bool
	Sidecars []string
	// SidecarAuth is init-tls --auth: "cert", "token" or "both" (the default).
	SidecarAuth string
	// LogLevel is log_level (default "debug").
	LogLevel string
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
	IssuanceDir    string
	RevocationFile string
	Addr           string // 127.0.0.1:PORT, its listen_addr
	BundleTTL      time.Duration
	// TLSDir is what `firma authority init-tls` wrote ("" without TLS).
	TLSDir   string
	logLevel string

	mu   sync.Mutex
	proc *Process
}

// NewAuthority generates a key with `firma authority generate-key` (and TLS files with
// `firma authority init-tls` when opts.TLS), writes the config, policies and issuance policy, and
// starts `firma authority -c`, waiting until it logs "authority ready".
func NewAuthority(tb testing.TB, opts AuthorityOptions) *Authority {
	tb.Helper()
	dir := tb.TempDir()
	a := &Authority{
		Bin:            Binary(tb, "firma"),
		Dir:            dir,
		ConfigPath:     filepath.Join(dir, "firma.toml"),
		KeyPath:        filepath.Join(dir, "keys", "firma-authority.key"),
		PolicyDir:      filepath.Join(dir, "policies"),
		IssuanceDir:    filepath.Join(dir, "issuance"),
		RevocationFile: filepath.Join(dir, "revocations.txt"),
		Addr:           fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(tb)),
		logLevel:       opts.LogLevel,
	}
	if a.logLevel == "" {
		a.logLevel = "debug"
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
	if opts.TLS {
		auth := opts.SidecarAuth
		if auth == "" {
			auth = "both"
		}
		a.TLSDir = filepath.Join(dir, "tls")
		a.Firma(tb, "authority", "init-tls", "--dir", a.TLSDir, "--hosts", "127.0.0.1,localhost",
			"--sidecars", strings.Join(opts.Sidecars, ","), "--auth", auth)
	}

	for _, d := range []string{a.PolicyDir, a.IssuanceDir} {
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
	writeAuthorityFile(tb, filepath.Join(a.IssuanceDir, "issuance.cedar"), issuance, 0o644)
	writeAuthorityFile(tb, a.RevocationFile, "", 0o644)
	a.writeConfig(tb)
	tb.Cleanup(func() { a.Kill(tb) })
	a.Start(tb)
	return a
}

// Replica starts another authority serving a's files — key, policies, issuance, revocations and
// TLS credentials — on its own address, as a second host behind a load balancer would.
func (a *Authority) Replica(tb testing.TB) *Authority {
	tb.Helper()
	dir := tb.TempDir()
	r := &Authority{
		Bin: a.Bin, Dir: dir, ConfigPath: filepath.Join(dir, "firma.toml"), KeyPath: a.KeyPath, PublicKeyPath: a.PublicKeyPath,
		PolicyDir: a.PolicyDir, IssuanceDir: a.IssuanceDir, RevocationFile: a.RevocationFile,
		Addr:      fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(tb)),
		BundleTTL: a.BundleTTL, TLSDir: a.TLSDir, logLevel: a.logLevel,
	}
	r.writeConfig(tb)
	tb.Cleanup(func() { r.Kill(tb) })
	r.Start(tb)
	return r
}

func (a *Authority) writeConfig(tb testing.TB) {
	tb.Helper()
	text := fmt.Sprintf(`[authority]
listen_addr = %q
policy_dir = %q
issuance_policy_dir = %q
revocation_file = %q
key_file = %q
max_ttl_seconds = 28800
bundle_ttl_seconds = %d
log_level = %q
`, a.Addr, a.PolicyDir, a.IssuanceDir, a.RevocationFile, a.KeyPath, int(a.BundleTTL/time.Second), a.logLevel)
	if a.TLSDir != "" {
		text += fmt.Sprintf("tls_cert_file = %q\ntls_key_file = %q\nclient_ca_file = %q\ntokens_file = %q\n",
			filepath.Join(a.TLSDir, authority.TLSServerCert), filepath.Join(a.TLSDir, authority.TLSServerKey),
			filepath.Join(a.TLSDir, authority.TLSCACert), filepath.Join(a.TLSDir, authority.TLSTokens))
	}
	writeAuthorityFile(tb, a.ConfigPath, text, 0o600)
}

// URL is what [sidecar.authority] url names.
func (a *Authority) URL() string {
	if a.TLSDir != "" {
		return "https://" + a.Addr
	}
	return "http://" + a.Addr
}

// SidecarTOML is a [sidecar.authority] section that follows this authority, caching in cacheDir.
func (a *Authority) SidecarTOML(cacheDir string) string {
	return fmt.Sprintf("[sidecar.authority]\nurl = %q\npublic_key_path = %q\ncache_dir = %q\n",
		a.URL(), a.PublicKeyPath, cacheDir)
}

// Credential says how a sidecar authenticates to TLS authorities: as Sidecar (a name given to
// init-tls), by its certificate and/or its token; neither is an unauthenticated sidecar.
type Credential struct {
	Sidecar     string
	Cert, Token bool
}

// ClientConfig is [sidecar.authority] for a sidecar following replicas (in order of preference),
// with cred's files from the first replica's TLS dir.
func ClientConfig(cacheDir string, cred Credential, replicas ...*Authority) authority.ClientConfig {
	a := replicas[0]
	cc := authority.DefaultClientConfig()
	for _, r := range replicas {
		cc.URLs = append(cc.URLs, r.URL())
	}
	cc.PublicKeyPath, cc.CacheDir = a.PublicKeyPath, cacheDir
	if a.TLSDir != "" {
		cc.CAFile = filepath.Join(a.TLSDir, authority.TLSCACert)
		cert, key, token := authority.SidecarFiles(a.TLSDir, cred.Sidecar)
		if cred.Cert {
			cc.ClientCertFile, cc.ClientKeyFile = cert, key
		}
		if cred.Token {
			cc.TokenFile = token
		}
	}
	return cc
}

// FleetTOML is ClientConfig as a [sidecar.authority] section.
func FleetTOML(cacheDir string, cred Credential, replicas ...*Authority) string {
	cc := ClientConfig(cacheDir, cred, replicas...)
	var b strings.Builder
	b.WriteString("[sidecar.authority]\nurls = [")
	for i, u := range cc.URLs {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q", u)
	}
	fmt.Fprintf(&b, "]\npublic_key_path = %q\ncache_dir = %q\n", cc.PublicKeyPath, cc.CacheDir)
	for _, kv := range [][2]string{{"ca_file", cc.CAFile}, {"client_cert_file", cc.ClientCertFile},
		{"client_key_file", cc.ClientKeyFile}, {"token_file", cc.TokenFile}} {
		if kv[1] != "" {
			fmt.Fprintf(&b, "%s = %q\n", kv[0], kv[1])
		}
	}
	return b.String()
}

// Pid is the authority process's pid (for /proc measurements).
func (a *Authority) Pid() int { return a.process().cmd.Process.Pid }

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
