package authority

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The process-level tests run the firma binary as the guide does ("Step 3" and "Terminal 1"),
// from a scratch directory laid out like the guide's repo checkout.

var firmaBin struct {
	once sync.Once
	path string
	err  error
	dir  string
}

func TestMain(m *testing.M) {
	code := m.Run()
	if firmaBin.dir != "" {
		os.RemoveAll(firmaBin.dir)
	}
	os.Exit(code)
}

// firma builds the binary once per test run (only when a process test asks for it) and returns
// its path.
func firma(t *testing.T) string {
	t.Helper()
	firmaBin.once.Do(func() {
		dir, err := os.MkdirTemp("", "firma-authority-test")
		if err != nil {
			firmaBin.err = err
			return
		}
		firmaBin.dir = dir
		firmaBin.path = filepath.Join(dir, "firma")
		out, err := exec.Command("go", "build", "-o", firmaBin.path, "github.com/openfirma/firma/cmd/firma").CombinedOutput()
		if err != nil {
			firmaBin.err = fmt.Errorf("go build ./cmd/firma: %v\n%s", err, out)
		}
	})
	if firmaBin.err != nil {
		t.Fatal(firmaBin.err)
	}
	return firmaBin.path
}

type result struct {
	code           int
	stdout, stderr string
}

// runFirma runs the binary in dir and returns its exit code and output.
func runFirma(t *testing.T, dir string, args ...string) result {
	t.Helper()
	cmd := exec.Command(firma(t), args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		r.code = exit.ExitCode()
	default:
		t.Fatalf("firma %s: %v", strings.Join(args, " "), err)
	}
	return r
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// guideAuthoritySection is the [authority] section the guide appends to .local/firma.toml, with
// the port and bundle TTL left to the test (the guide uses [::1]:50051 and 60 s). Paths in
// firma.toml are relative to the file's directory, .local/.
const guideAuthoritySection = `[authority]
listen_addr = "%s"
policy_dir = "../examples/policies"
issuance_policy_dir = "issuance"
revocation_file = "revocations.txt"
key_file = "firma-authority.key"
max_ttl_seconds = 28800
bundle_ttl_seconds = %d
log_level = "info"
`

func TestProcessGuideStep3AndAuthority(t *testing.T) {
	t.Parallel()
	const ttl = 3
	work := t.TempDir()
	if err := os.MkdirAll(filepath.Join(work, ".local"), 0o755); err != nil {
		t.Fatal(err)
	}

	// firma authority generate-key -o .local/firma-authority.key
	r := runFirma(t, work, "authority", "generate-key", "-o", ".local/firma-authority.key")
	if r.code != 0 {
		t.Fatalf("generate-key: exit %d: %s", r.code, r.stderr)
	}
	keyPath := filepath.Join(work, ".local/firma-authority.key")
	if st, err := os.Stat(keyPath); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", st, err)
	}
	if _, err := LoadPublicKey(keyPath + ".pub"); err != nil {
		t.Fatal(err)
	}
	if r := runFirma(t, work, "authority", "generate-key", "-o", ".local/firma-authority.key"); r.code != 1 || !strings.Contains(r.stderr, "already exists") {
		t.Fatalf("second generate-key: exit %d: %s", r.code, r.stderr)
	}

	// The sidecar-only firma.toml that setup.sh makes, with the guide's [authority] appended.
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	toml := "[sidecar.audit]\nfile_path = \"audit.jsonl\"\n\n" + fmt.Sprintf(guideAuthoritySection, addr, ttl)
	os.WriteFile(filepath.Join(work, ".local/firma.toml"), []byte(toml), 0o644)
	os.MkdirAll(filepath.Join(work, ".local/issuance"), 0o755)
	os.WriteFile(filepath.Join(work, ".local/issuance/issuance.cedar"), []byte(guideIssuance), 0o644)
	os.WriteFile(filepath.Join(work, ".local/revocations.txt"), nil, 0o644)

	// Mint a capability for claude-code, as written.
	session := NewTokenID()
	r = runFirma(t, work, "authority", "-c", ".local/firma.toml", "issue",
		"--agent-id", "claude-code",
		"--session-id", session,
		"--action", "communication.external.send",
		"--resource-scope", "*.anthropic.com*",
		"--ttl-seconds", "28800",
		"--output", ".local/capability-claude.toml")
	if r.code != 0 {
		t.Fatalf("issue: exit %d: %s", r.code, r.stderr)
	}
	capPath := filepath.Join(work, ".local/capability-claude.toml")
	if st, err := os.Stat(capPath); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("capability file: %v %v", st, err)
	}
	pub, _ := LoadPublicKey(keyPath + ".pub")
	claims, _, err := LoadCapabilityFile(capPath, pub)
	if err != nil {
		t.Fatal(err)
	}
	if claims.AgentID != "claude-code" || claims.SessionID != session || claims.ResourceScope != "*.anthropic.com*" ||
		claims.Expires.Sub(claims.IssuedAt) != 28800*time.Second {
		t.Fatalf("issued claims %+v", claims)
	}

	// Issuance policy denies other agents and other actions: exit 1 with the reason.
	r = runFirma(t, work, "authority", "-c", ".local/firma.toml", "issue", "--agent-id", "codex", "--session-id", session,
		"--action", "communication.external.send", "--resource-scope", "*.openai.com*", "--ttl-seconds", "60", "--output", ".local/cap-codex.toml")
	if r.code != 1 || !strings.Contains(r.stderr, "issuance denied") || !strings.Contains(r.stderr, `"codex"`) {
		t.Fatalf("issue for codex: exit %d: %s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(work, ".local/cap-codex.toml")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a denied issuance wrote a capability file")
	}
	// A TTL over the maximum is clamped, and stderr says so.
	r = runFirma(t, work, "authority", "-c", ".local/firma.toml", "issue", "--agent-id", "claude-code", "--session-id", session,
		"--action", "communication.external.send", "--resource-scope", "*.anthropic.com*", "--ttl-seconds", "604800")
	if r.code != 0 || !strings.Contains(r.stderr, "clamped to 28800") || !strings.Contains(r.stdout, "raw_token") {
		t.Fatalf("issue with a week's TTL: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}

	// examples/policies/claude-code.cedar from the guide.
	os.MkdirAll(filepath.Join(work, "examples/policies"), 0o755)
	policyPath := filepath.Join(work, "examples/policies/claude-code.cedar")
	os.WriteFile(policyPath, []byte(guidePolicy), 0o644)

	// Terminal 1: firma authority -c .local/firma.toml
	srv := startFirmaAuthority(t, work)

	// The sidecar side, in process: follow the authority and check the capability (Stage 1).
	client, _, stopClient := startClient(t, "http://"+addr, keyPath+".pub", filepath.Join(work, ".cache"))
	select {
	case <-client.Ready():
	case <-time.After(5 * time.Second):
		t.Fatalf("no bundle from the authority within 5 s\n%s", srv.logs())
	}
	b, _ := client.Bundle()
	if string(b.Files["claude-code.cedar"]) != guidePolicy {
		t.Fatalf("bundle files %v", b.Files)
	}
	eventually(t, 2*time.Second, "fresh", func() bool { return !client.Stale() })
	store, err := NewCapabilityStore(pub, client, 30*time.Second, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	capability, err := store.Open(capPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := capability.Authorize("claude-code", "communication.external.send", "api.anthropic.com/v1/messages", time.Now()); err != nil {
		t.Fatalf("Stage 1 before revocation: %v", err)
	}
	if _, err := capability.Authorize("codex", "communication.external.send", "api.anthropic.com/v1/messages", time.Now()); !errors.Is(err, ErrCapabilityMismatch) {
		t.Fatalf("Stage 1 from another agent: %v", err)
	}

	// A policy edit on the authority reaches the sidecar within 2 s.
	edited := strings.Replace(guidePolicy, `resource.host == "termbin.com"`, `resource.host == "termbin.com" || resource.host == "ix.io"`, 1)
	os.WriteFile(policyPath, []byte(edited), 0o644)
	took := eventually(t, 2*time.Second, "policy edit at the sidecar", func() bool {
		b, _ := client.Bundle()
		return string(b.Files["claude-code.cedar"]) == edited
	})
	t.Logf("policy edit reached the sidecar in %s", took)

	// firma authority revoke: the next decision is denied within 2 s.
	start := time.Now()
	r = runFirma(t, work, "authority", "-c", ".local/firma.toml", "revoke", claims.TokenID, "--reason", "laptop lost")
	if r.code != 0 {
		t.Fatalf("revoke: exit %d: %s", r.code, r.stderr)
	}
	took = eventually(t, 2*time.Second, "revocation at the sidecar", func() bool {
		_, err := capability.Authorize("claude-code", "communication.external.send", "api.anthropic.com/v1/messages", time.Now())
		return errors.Is(err, ErrCapabilityRevoked)
	})
	t.Logf("revocation denied Stage 1 %s after the revoke command started (%s after it returned)", time.Since(start), took)

	// SIGTERM: the authority exits cleanly; the sidecar keeps the cached bundle until the TTL.
	stoppedAt := time.Now()
	if code := srv.terminate(t); code != 0 {
		t.Fatalf("authority exit %d after SIGTERM\n%s", code, srv.logs())
	}
	if !strings.Contains(srv.logs(), "authority stopped") {
		t.Errorf("no 'authority stopped' log line:\n%s", srv.logs())
	}
	if client.Stale() {
		t.Fatal("stale right after the authority stopped")
	}
	// A sidecar restarted now, with the authority down, enforces from its cache.
	stopClient()
	restarted, _, _ := startClient(t, "http://"+addr, keyPath+".pub", filepath.Join(work, ".cache"))
	if b, ok := restarted.Bundle(); !ok || string(b.Files["claude-code.cedar"]) != edited || restarted.Stale() {
		t.Fatal("restarted sidecar did not restore the cached bundle")
	}
	if !restarted.Revoked(claims.TokenID) {
		t.Fatal("restarted sidecar forgot the revocation")
	}
	eventually(t, time.Duration(ttl+2)*time.Second, "stale after the TTL", restarted.Stale)
	staleAfter := time.Since(stoppedAt)
	t.Logf("stale %s after SIGTERM (bundle_ttl_seconds = %d)", staleAfter, ttl)
	if staleAfter > time.Duration(ttl)*time.Second+time.Second {
		t.Errorf("stale only after %s", staleAfter)
	}
}

// guideWorkdir lays out a scratch directory as the guide's Step 3 leaves it: the authority key,
// the issuance policy and an empty examples/policies, but no firma.toml yet.
func guideWorkdir(t *testing.T) string {
	t.Helper()
	work := t.TempDir()
	os.MkdirAll(filepath.Join(work, ".local/issuance"), 0o755)
	os.MkdirAll(filepath.Join(work, "examples/policies"), 0o755)
	if r := runFirma(t, work, "authority", "generate-key", "-o", ".local/firma-authority.key"); r.code != 0 {
		t.Fatal(r.stderr)
	}
	os.WriteFile(filepath.Join(work, ".local/issuance/issuance.cedar"), []byte(guideIssuance), 0o644)
	return work
}

func TestProcessAuthorityRefusesBadStart(t *testing.T) {
	work := guideWorkdir(t)
	os.WriteFile(filepath.Join(work, "examples/policies/bad.cedar"), []byte("permit (\n  principal,\n  action == Firma::Action::\"nope\",\n  resource\n);\n"), 0o644)
	os.WriteFile(filepath.Join(work, ".local/firma.toml"), []byte(fmt.Sprintf(guideAuthoritySection, "127.0.0.1:0", 60)), 0o644)

	r := runFirma(t, work, "authority", "-c", ".local/firma.toml")
	if r.code != 1 || !strings.Contains(r.stderr, "bad.cedar:") {
		t.Fatalf("bad policy at startup: exit %d: %s", r.code, r.stderr)
	}
	os.Remove(filepath.Join(work, "examples/policies/bad.cedar"))

	os.Chmod(filepath.Join(work, ".local/firma-authority.key"), 0o644)
	r = runFirma(t, work, "authority", "-c", ".local/firma.toml")
	if r.code != 1 || !strings.Contains(r.stderr, "readable by group or others") {
		t.Fatalf("world-readable key: exit %d: %s", r.code, r.stderr)
	}

	os.WriteFile(filepath.Join(work, ".local/firma.toml"), []byte(fmt.Sprintf(guideAuthoritySection, "127.0.0.1:0", 60)+"bogus = 1\n"), 0o644)
	r = runFirma(t, work, "authority", "-c", ".local/firma.toml")
	if r.code != 1 || !strings.Contains(r.stderr, ".local/firma.toml:10") || !strings.Contains(r.stderr, "bogus") {
		t.Fatalf("unknown key: exit %d: %s", r.code, r.stderr)
	}

	// Without -c: $FIRMA_CONFIG (else /etc/firma/firma.toml), named when it is missing.
	t.Setenv("FIRMA_CONFIG", filepath.Join(work, "missing.toml"))
	if r := runFirma(t, work, "authority", "issue"); r.code != 1 || !strings.Contains(r.stderr, "missing.toml") {
		t.Fatalf("issue without -c: exit %d: %s", r.code, r.stderr)
	}
}

// firmaProcess is a background `firma authority -c …`.
type firmaProcess struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	buf  bytes.Buffer
	done chan struct{}
	code int
}

func (p *firmaProcess) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.buf.String()
}

// startFirmaAuthority starts the authority and waits for its "authority ready" line.
func startFirmaAuthority(t *testing.T, dir string) *firmaProcess {
	t.Helper()
	p := &firmaProcess{done: make(chan struct{})}
	p.cmd = exec.Command(firma(t), "authority", "-c", ".local/firma.toml")
	p.cmd.Dir = dir
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		var once sync.Once
		for sc.Scan() {
			p.mu.Lock()
			p.buf.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			if strings.Contains(sc.Text(), "authority ready") {
				once.Do(func() { close(ready) })
			}
		}
		io.Copy(io.Discard, stderr)
		err := p.cmd.Wait()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			p.code = exit.ExitCode()
		}
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	select {
	case <-ready:
	case <-p.done:
		t.Fatalf("authority exited (code %d) before it was ready:\n%s", p.code, p.logs())
	case <-time.After(10 * time.Second):
		t.Fatalf("authority not ready within 10 s:\n%s", p.logs())
	}
	return p
}

// terminate sends SIGTERM and returns the exit code.
func (p *firmaProcess) terminate(t *testing.T) int {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	select {
	case <-p.done:
		return p.code
	case <-ctx.Done():
		t.Fatalf("authority still running 10 s after SIGTERM:\n%s", p.logs())
		return -1
	}
}

// revoke checks the id against the issuance record: a typo is an error (exit 1), --force
// overrides, and revoking twice adds nothing.
func TestProcessRevokeRefusesUnknownIDs(t *testing.T) {
	t.Parallel()
	work := guideWorkdir(t)
	os.WriteFile(filepath.Join(work, ".local/firma.toml"), []byte(fmt.Sprintf(guideAuthoritySection, "127.0.0.1:0", 60)), 0o644)
	r := runFirma(t, work, "authority", "-c", ".local/firma.toml", "issue", "--agent-id", "claude-code", "--session-id", "s-1",
		"--action", "communication.external.send", "--resource-scope", "*.anthropic.com*", "--ttl-seconds", "600", "--output", ".local/cap.toml")
	if r.code != 0 {
		t.Fatalf("issue: %d %s", r.code, r.stderr)
	}
	f, err := ReadCapabilityFile(filepath.Join(work, ".local/cap.toml"))
	if err != nil {
		t.Fatal(err)
	}
	ledger := filepath.Join(work, ".local/issued.jsonl")
	if rec, err := FindIssued(ledger, f.TokenID); err != nil || rec.AgentID != "claude-code" || rec.SessionID != "s-1" {
		t.Fatalf("issuance record: %+v %v", rec, err)
	}
	if data, _ := os.ReadFile(ledger); strings.Contains(string(data), f.RawToken) {
		t.Fatal("the issuance record holds the token itself")
	}

	revocations := filepath.Join(work, ".local/revocations.txt")
	typo := f.TokenID[:len(f.TokenID)-1] + "0"
	if typo == f.TokenID {
		typo = f.TokenID[:len(f.TokenID)-1] + "1"
	}
	r = runFirma(t, work, "authority", "-c", ".local/firma.toml", "revoke", typo, "--reason", "typo")
	if r.code != 1 || !strings.Contains(r.stderr, "not issued by this authority") || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("revoke of an unknown id: exit %d: %s", r.code, r.stderr)
	}
	if data, _ := os.ReadFile(revocations); strings.Contains(string(data), typo) {
		t.Fatal("an unknown id was written to the revocation file")
	}
	r = runFirma(t, work, "authority", "-c", ".local/firma.toml", "revoke", "--force", typo, "--reason", "other authority's token")
	if r.code != 0 || !strings.Contains(r.stderr, "warning") {
		t.Fatalf("revoke --force: exit %d: %s", r.code, r.stderr)
	}
	r = runFirma(t, work, "authority", "-c", ".local/firma.toml", "revoke", f.TokenID, "--reason", "laptop lost")
	if r.code != 0 || !strings.Contains(r.stdout, "agent claude-code") {
		t.Fatalf("revoke: exit %d: %s %s", r.code, r.stdout, r.stderr)
	}
	r = runFirma(t, work, "authority", "-c", ".local/firma.toml", "revoke", f.TokenID)
	if r.code != 0 || !strings.Contains(r.stdout, "already revoked") {
		t.Fatalf("second revoke: exit %d: %s %s", r.code, r.stdout, r.stderr)
	}
	recs, _, err := ReadRevocations(revocations)
	if err != nil || len(recs) != 2 || recs[0].TokenID != typo || recs[1].TokenID != f.TokenID || recs[1].Reason != "laptop lost" {
		t.Fatalf("revocation file: %+v %v", recs, err)
	}
}

// init-tls writes what the authority and its sidecars need, prints the config to use, and keeps
// everything on a second run.
func TestProcessInitTLS(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	r := runFirma(t, work, "authority", "init-tls", "--dir", "tls", "--hosts", "127.0.0.1,localhost", "--sidecars", "web-1,web-2", "--auth", "both")
	if r.code != 0 {
		t.Fatalf("init-tls: exit %d: %s", r.code, r.stderr)
	}
	for _, want := range []string{"wrote tls/ca.key", "wrote tls/sidecars/web-2.token", `tls_cert_file = "tls/authority.crt"`,
		`client_ca_file = "tls/ca.crt"`, `tokens_file = "tls/tokens.toml"`, `client_cert_file = "tls/sidecars/web-1.crt"`,
		`token_file = "tls/sidecars/web-2.token"`, `urls = ["https://127.0.0.1:50051"]`} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("init-tls output lacks %q:\n%s", want, r.stdout)
		}
	}
	r = runFirma(t, work, "authority", "init-tls", "--dir", "tls", "--sidecars", "web-1", "--auth", "both")
	if r.code != 0 || strings.Contains(r.stdout, "wrote") || !strings.Contains(r.stdout, "kept  tls/sidecars/web-1.crt") {
		t.Fatalf("second init-tls: exit %d: %s %s", r.code, r.stdout, r.stderr)
	}
	if r := runFirma(t, work, "authority", "init-tls", "--dir", "tls", "--auth", "passwords"); r.code != 2 {
		t.Fatalf("--auth passwords: exit %d: %s", r.code, r.stderr)
	}
	if r := runFirma(t, work, "authority", "-c", "x.toml", "init-tls", "--dir", "tls"); r.code != 2 {
		t.Fatalf("init-tls with -c: exit %d: %s", r.code, r.stderr)
	}
}
