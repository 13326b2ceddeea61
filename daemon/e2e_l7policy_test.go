//go:build linux

package daemon_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/cgi"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/internal/e2e"
	"github.com/openfirma/firma/internal/testutil"
)

// Full L7 policy through the real sidecar: what a request carries (body size, JSON fields), what
// the session did before, what a git push changes, and the remediation annotations — decided per
// request on intercepted connections of real clients in an enforced cgroup, with no proxy
// variables.

const l7Policy = `@id("permit-agent")
permit (principal == Firma::Agent::"test-agent", action, resource);

@id("upload-limit")
forbid (principal, action, resource)
when { resource.method == "POST" && resource.path == "/upload" && context.body_size > 1048576 };

@id("only-haiku")
forbid (principal, action == Firma::Action::"model.inference.chat", resource)
unless { context.json has model && context.json.model == "claude-haiku-4-5" };

@id("forbid-secret")
forbid (principal, action, resource) when { resource.path like "/secret*" };

@id("no-more-after-denial")
forbid (principal, action, resource) when { resource.path like "/after*" && context.deny_count > 0 };

@id("redact-debug")
@modify("redact_header:x-debug")
forbid (principal, action, resource) when { resource.path == "/modify" };

@id("defer-busy")
@defer("1500")
forbid (principal, action, resource) when { resource.path == "/defer" };

@id("step-up-pay")
@step_up("approve the payment in the firma console")
forbid (principal, action, resource) when { resource.path == "/step-up" };

@id("no-destructive-git")
forbid (principal, action == Firma::Action::"code.destructive", resource);
`

const l7Rules = `[[rules]]
method = "*"
host = "*"
action_class = "communication.external.send"

[[rules]]
host = "api.test"
path = "/v1/messages"
action_class = "model.inference.chat"
`

// l7World is a sidecar that intercepts api.test (a fake API) and git.test (git http-backend), with
// l7Policy, a signed audit log, and git.test as its one git host.
type l7World struct {
	*world
	firmaCA string
	pub     string // the audit log's public key
	api     *testutil.Upstream
	git     *testutil.Upstream
	gitRoot string
	// sse, when set, is released by the test to let /events send its second event.
	sse chan struct{}
}

func newL7World(t *testing.T) *l7World {
	t.Helper()
	testutil.RequireRoot(t)
	upCA := testutil.NewCA(t, "firma e2e L7 policy upstream CA")
	caDir := filepath.Join(t.TempDir(), "firma-ca")
	m := &l7World{gitRoot: t.TempDir(), sse: make(chan struct{})}
	m.api = testutil.NewHTTPSUpstream(t, "api", netip.AddrPortFrom(testutil.LoopbackAddr(t), 443), upCA, "api.test")
	m.api.SetHandler(http.HandlerFunc(m.serveAPI), false)
	m.git = testutil.NewHTTPSUpstream(t, "git", netip.AddrPortFrom(testutil.LoopbackAddr(t), 443), upCA, "git.test")
	m.git.SetHandler(gitBackend(t, m.gitRoot), false)
	key, pub := e2e.AuditKey(t)
	m.pub = pub
	opts := e2e.SidecarOptions{
		Policies:  map[string]string{"l7.cedar": l7Policy},
		Rules:     l7Rules,
		Resolve:   map[string]string{"api.test": m.api.Addr.Addr().String(), "git.test": m.git.Addr.Addr().String()},
		AuditTOML: auditTOML(key),
		ExtraTOML: fmt.Sprintf(`
[sidecar.ca]
dir = %q

[sidecar.interceptor.https_mitm]
enabled = true
intercept_hosts = ["api.test", "git.test"]

[sidecar.policy.git]
hosts = ["git.test"]
`, caDir),
	}
	m.world = newWorldWithCA(t, opts, upCA)
	m.firmaCA = filepath.Join(caDir, "firma-ca.crt")
	return m
}

// serveAPI answers like the fake upstream, and streams server-sent events on /events: one event,
// then — once the test has seen it reach the agent — a second.
func (m *l7World) serveAPI(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/events" {
		fmt.Fprintf(w, "hello from api %s\n", r.URL.Path)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	fmt.Fprint(w, "data: one\n\n")
	http.NewResponseController(w).Flush()
	select {
	case <-m.sse:
		fmt.Fprint(w, "data: two\n\n")
	case <-time.After(20 * time.Second):
		fmt.Fprint(w, "data: the first event never reached the agent\n\n")
	}
}

// gitBackend is git's smart-HTTP server (git http-backend, as a CGI) over the repositories in
// root.
func gitBackend(t *testing.T, root string) http.Handler {
	t.Helper()
	git := testutil.RequireTool(t, "git")
	out, err := exec.Command(git, "--exec-path").Output()
	if err != nil {
		t.Fatal(err)
	}
	return &cgi.Handler{
		Path: filepath.Join(strings.TrimSpace(string(out)), "git-http-backend"),
		Env:  []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1"},
	}
}

// fcurl runs curl in the agent cgroup trusting only firma's CA.
func (m *l7World) fcurl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return m.Run(t, "curl", append([]string{"-sS", "--max-time", "20", "--cacert", m.firmaCA}, args...)...)
}

// l7Decisions are the decision records of requests to host whose path is path.
func (m *l7World) l7Decisions(t *testing.T, host, path string) []audit.Event {
	t.Helper()
	var out []audit.Event
	for _, ev := range m.Decisions(t) {
		if ev.Envelope != nil && ev.Envelope.Transport.Mode == "mitm" && ev.Envelope.Intent.Resource.Host == host &&
			ev.Envelope.Intent.Resource.Path == path {
			out = append(out, ev)
		}
	}
	return out
}

// waitL7 waits for the n-th decision record for host and path (the sidecar writes it before it
// answers, so it is there by the time a client has its answer).
func (m *l7World) waitL7(t *testing.T, host, path string, n int) audit.Event {
	t.Helper()
	var evs []audit.Event
	m.WaitEvent(t, fmt.Sprintf("#%d for %s%s", n, host, path), func(audit.Event) bool {
		evs = m.l7Decisions(t, host, path)
		return len(evs) >= n
	})
	return evs[n-1]
}

// 1. A policy forbids POST bodies over 1 MiB to /upload: curl's 2 MiB body, with a Content-Length
// and chunked, is refused and the upstream receives no byte of it (no connection at all); 512 KiB
// passes both ways; server-sent events from the same host stream through unbuffered.
func TestL7BodySizePolicy(t *testing.T) {
	m := newL7World(t)
	dir := t.TempDir()
	big, small := filepath.Join(dir, "big"), filepath.Join(dir, "small")
	if err := os.WriteFile(big, bytes.Repeat([]byte("B"), 2<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(small, bytes.Repeat([]byte("s"), 512<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	post := func(file string, chunked bool) string {
		t.Helper()
		args := []string{"-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "--data-binary", "@" + file}
		if chunked {
			args = append(args, "-H", "Transfer-Encoding: chunked")
		}
		out, err := m.fcurl(t, append(args, "https://api.test/upload")...)
		if err != nil {
			t.Fatalf("curl: %v %s\nsidecar:\n%s", err, out, m.Logs())
		}
		return out
	}
	for i, chunked := range []bool{false, true} {
		if code := post(big, chunked); code != "403" {
			t.Fatalf("2 MiB, chunked=%v: %s", chunked, code)
		}
		ev := m.waitL7(t, "api.test", "/upload", i+1)
		d, c := ev.Decision, ev.Envelope.Intent.Content
		if d.Outcome != "DENY" || !slices.Equal(d.MatchedPolicies, []string{"upload-limit"}) || !slices.Contains(d.Fields, "context.body_size") ||
			c == nil || c.BodySize != 2<<20 || c.BodyBuffered != chunked {
			t.Fatalf("2 MiB, chunked=%v: %+v %+v", chunked, d, c)
		}
	}
	if n, reqs := m.api.Conns(), m.api.Requests(); n != 0 || len(reqs) != 0 {
		t.Fatalf("the upstream got %d connections and %d requests from refused uploads", n, len(reqs))
	}
	for _, chunked := range []bool{false, true} {
		if code := post(small, chunked); code != "200" {
			t.Fatalf("512 KiB, chunked=%v: %s", chunked, code)
		}
	}
	reqs := m.api.Requests()
	if len(reqs) != 2 || len(reqs[0].Body) != 512<<10 || len(reqs[1].Body) != 512<<10 {
		t.Fatalf("the upstream got %d requests", len(reqs))
	}

	// Server-sent events: the first event reaches the agent while the upstream still holds the
	// second (a proxy that buffered the response would deliver neither until the stream ended).
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := m.Agent.Command(ctx, t, "curl", "-sSN", "--max-time", "25", "--cacert", m.firmaCA, "https://api.test/events")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var got []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if line := sc.Text(); line != "" {
			got = append(got, line)
			if line == "data: one" {
				close(m.sse)
			}
		}
	}
	cmd.Wait()
	if !slices.Equal(got, []string{"data: one", "data: two"}) {
		t.Fatalf("events %q", got)
	}
}

// 2. Only one model may be called: python3 posting JSON with another model gets 403, the allowed
// model passes, and the record names the field that decided.
func TestL7ModelPolicy(t *testing.T) {
	m := newL7World(t)
	out, err := m.Run(t, "python3", "-c", fmt.Sprintf(`import http.client, json, ssl
ctx = ssl.create_default_context(cafile=%q)
for model in ["claude-opus-4", "claude-haiku-4-5"]:
    c = http.client.HTTPSConnection("api.test", 443, context=ctx, timeout=10)
    body = json.dumps({"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]})
    c.request("POST", "/v1/messages", body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    print(model, r.status, r.read().decode().strip())`, m.firmaCA))
	want := "claude-opus-4 403 firma: denied: forbidden by policy\nclaude-haiku-4-5 200 hello from api /v1/messages\n"
	if err != nil || out != want {
		t.Fatalf("%v\n%s\nwant:\n%s\nsidecar:\n%s", err, out, want, m.Logs())
	}
	deny, allow := m.waitL7(t, "api.test", "/v1/messages", 1), m.waitL7(t, "api.test", "/v1/messages", 2)
	if d := deny.Decision; d.Outcome != "DENY" || !slices.Equal(d.Fields, []string{"context.json.model"}) ||
		!slices.Equal(d.MatchedPolicies, []string{"only-haiku"}) || *deny.Envelope.Intent.ActionClass != "model.inference.chat" {
		t.Errorf("denied model: %+v", d)
	}
	if c := deny.Envelope.Intent.Content; c == nil || c.ContentType != "application/json" || !c.BodyBuffered {
		t.Errorf("content %+v", c)
	}
	if allow.Decision.Outcome != "ALLOW" {
		t.Errorf("allowed model: %+v", allow.Decision)
	}
	if reqs := m.api.Requests(); len(reqs) != 1 || !strings.Contains(string(reqs[0].Body), `"claude-haiku-4-5"`) {
		t.Errorf("the upstream got %d requests", len(reqs))
	}
}

// 3. Session counters: after one denial, a deny_count > 0 forbid blocks what follows in the same
// session (one `firma run`) and not in another session (a second `firma run`).
func TestL7SessionDenyCount(t *testing.T) {
	m := newL7World(t)
	out, err := m.firmaRun(t, "sh", "-c",
		`for p in /after-1 /secret /after-2; do curl -s -o /dev/null -w "%{http_code}\n" --max-time 10 https://api.test$p; done`)
	if err != nil || out != "200\n403\n403\n" {
		t.Fatalf("first session: %v\n%s\nsidecar:\n%s", err, out, m.Logs())
	}
	out, err = m.firmaRun(t, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}\n", "--max-time", "10", "https://api.test/after-3")
	if err != nil || out != "200\n" {
		t.Fatalf("second session: %v\n%s", err, out)
	}
	first, secret := m.waitL7(t, "api.test", "/after-1", 1), m.waitL7(t, "api.test", "/secret", 1)
	blocked, other := m.waitL7(t, "api.test", "/after-2", 1), m.waitL7(t, "api.test", "/after-3", 1)
	session := func(ev audit.Event) string { return ev.Envelope.Agent.SessionID }
	if session(first) == "" || session(first) != session(secret) || session(secret) != session(blocked) || session(other) == session(blocked) {
		t.Fatalf("sessions %q %q %q %q", session(first), session(secret), session(blocked), session(other))
	}
	if d := blocked.Decision; d.Outcome != "DENY" || !slices.Equal(d.MatchedPolicies, []string{"no-more-after-denial"}) ||
		!slices.Equal(d.Fields, []string{"context.deny_count", "resource.path"}) {
		t.Errorf("blocked: %+v", d)
	}
	if first.Decision.Outcome != "ALLOW" || other.Decision.Outcome != "ALLOW" {
		t.Errorf("first %s, other session %s", first.Decision.Outcome, other.Decision.Outcome)
	}
}

// 4. Each remediation annotation: @modify forwards without the header (MODIFY), @defer answers 429
// with Retry-After (DEFER), @step_up refuses with the challenge (STEP_UP).
func TestL7Annotations(t *testing.T) {
	m := newL7World(t)
	out, err := m.fcurl(t, "-H", "X-Debug: dump-everything", "-H", "X-Keep: 1", "https://api.test/modify")
	if err != nil || out != "hello from api /modify\n" {
		t.Fatalf("modify: %v %q", err, out)
	}
	if reqs := m.api.Requests(); len(reqs) != 1 || reqs[0].Header.Get("X-Debug") != "" || reqs[0].Header.Get("X-Keep") != "1" {
		t.Fatalf("the upstream saw %+v", reqs)
	}
	d := m.waitL7(t, "api.test", "/modify", 1).Decision
	if d.Outcome != "MODIFY" || d.Remediation == nil || !slices.Equal(d.Remediation.RedactHeaders, []string{"x-debug"}) ||
		!slices.Contains(d.MatchedPolicies, "redact-debug") {
		t.Errorf("modify record: %+v", d)
	}

	head := func(path string) (int, http.Header, string) {
		t.Helper()
		out, err := m.fcurl(t, "--http1.1", "-i", "https://api.test"+path)
		if err != nil {
			t.Fatalf("%s: %v %s", path, err, out)
		}
		resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(out)), nil)
		if err != nil {
			t.Fatalf("%s: %v\n%s", path, err, out)
		}
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		return resp.StatusCode, resp.Header, b.String()
	}
	status, h, body := head("/defer")
	if status != 429 || h.Get("Retry-After") != "2" || h.Get("X-Firma-Decision") != "DEFER" || !strings.Contains(body, "retry after 1500 ms") {
		t.Errorf("defer: %d %v %q", status, h, body)
	}
	if d := m.waitL7(t, "api.test", "/defer", 1).Decision; d.Outcome != "DEFER" || d.Remediation == nil || d.Remediation.RetryAfterMS != 1500 {
		t.Errorf("defer record: %+v", d)
	}
	status, h, body = head("/step-up")
	if status != 403 || h.Get("X-Firma-Decision") != "STEP_UP" || !strings.Contains(body, "approve the payment in the firma console") {
		t.Errorf("step-up: %d %v %q", status, h, body)
	}
	if d := m.waitL7(t, "api.test", "/step-up", 1).Decision; d.Outcome != "STEP_UP" || d.Remediation == nil ||
		d.Remediation.Challenge != "approve the payment in the firma console" {
		t.Errorf("step-up record: %+v", d)
	}
	if n := len(m.api.Requests()); n != 1 {
		t.Errorf("refused requests reached the upstream: %d requests", n)
	}
}

// gitCmd runs git with a private HOME and configuration, no proxy variables and no GIT_* from the
// test's environment. in: the agent cgroup (trusting firma's CA), or nil to run outside it.
func (m *l7World) gitCmd(t *testing.T, in *testutil.Cgroup, dir string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	argv := append([]string{"-c", "user.name=agent", "-c", "user.email=agent@example.test", "-c", "init.defaultBranch=main"}, args...)
	var cmd *exec.Cmd
	if in != nil {
		cmd = in.Command(ctx, t, "git", argv...)
	} else {
		cmd = exec.CommandContext(ctx, "git", argv...)
		cmd.Env = testutil.CleanEnv()
	}
	var env []string
	for _, kv := range cmd.Env {
		if !strings.HasPrefix(kv, "GIT_") && !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, "HOME="+t.TempDir(), "GIT_CONFIG_NOSYSTEM=1", "GIT_TERMINAL_PROMPT=0", "GIT_SSL_CAINFO="+m.firmaCA)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (m *l7World) mustGit(t *testing.T, in *testutil.Cgroup, dir string, args ...string) string {
	t.Helper()
	out, err := m.gitCmd(t, in, dir, args...)
	if err != nil {
		t.Fatalf("git %s: %v\n%s\nsidecar:\n%s", strings.Join(args, " "), err, out, m.Logs())
	}
	return out
}

// 5. git over HTTPS with a real git client: clone is code.read and allowed; a normal push is
// code.write and allowed; a force push to a protected branch and a branch deletion are
// code.destructive and refused, and the server's refs stay as they were. The log verifies.
func TestL7GitOverHTTPS(t *testing.T) {
	m := newL7World(t)
	// The server's repository acme/app, with one commit on main.
	bare := filepath.Join(m.gitRoot, "acme", "app.git")
	m.mustGit(t, nil, m.gitRoot, "init", "-q", "--bare", bare)
	m.mustGit(t, nil, bare, "config", "http.receivepack", "true")
	seed := t.TempDir()
	m.mustGit(t, nil, seed, "init", "-q", ".")
	os.WriteFile(filepath.Join(seed, "README"), []byte("hello\n"), 0o644)
	m.mustGit(t, nil, seed, "add", "README")
	m.mustGit(t, nil, seed, "commit", "-q", "-m", "initial")
	m.mustGit(t, nil, seed, "push", "-q", bare, "main")

	work := filepath.Join(t.TempDir(), "app")
	m.mustGit(t, m.Agent, filepath.Dir(work), "clone", "-q", "https://git.test/acme/app.git", work)
	for _, path := range []string{"/acme/app.git/info/refs", "/acme/app.git/git-upload-pack"} {
		ev := m.waitL7(t, "git.test", path, 1)
		g := ev.Envelope.Intent.Git
		if ev.Decision.Outcome != "ALLOW" || *ev.Envelope.Intent.ActionClass != "code.read" || g == nil ||
			g.Service != "git-upload-pack" || g.Owner != "acme" || g.Repo != "app" {
			t.Fatalf("clone %s: %+v %+v", path, ev.Decision, g)
		}
	}

	// A normal push: a fast-forward of main.
	os.WriteFile(filepath.Join(work, "a.txt"), []byte("a\n"), 0o644)
	m.mustGit(t, nil, work, "add", "a.txt")
	m.mustGit(t, nil, work, "commit", "-q", "-m", "add a")
	m.mustGit(t, m.Agent, work, "push", "-q", "origin", "main")
	const receive = "/acme/app.git/git-receive-pack"
	ev := m.waitL7(t, "git.test", receive, 1)
	g := ev.Envelope.Intent.Git
	if ev.Decision.Outcome != "ALLOW" || *ev.Envelope.Intent.ActionClass != "code.write" || g == nil || len(g.Updates) != 1 ||
		g.Updates[0].Ref != "refs/heads/main" || g.Updates[0].Force || !g.Updates[0].Protected || !ev.Envelope.Intent.Content.BodyBuffered {
		t.Fatalf("push: %+v %+v", ev.Decision, g)
	}
	pushed := m.mustGit(t, nil, work, "rev-parse", "HEAD")
	if got := m.mustGit(t, nil, bare, "rev-parse", "main"); got != pushed {
		t.Fatalf("server main %s, want %s", got, pushed)
	}
	// A new branch.
	m.mustGit(t, m.Agent, work, "push", "-q", "origin", "main:refs/heads/feature")
	if ev := m.waitL7(t, "git.test", receive, 2); ev.Decision.Outcome != "ALLOW" || !ev.Envelope.Intent.Git.Updates[0].Create {
		t.Fatalf("new branch: %+v %+v", ev.Decision, ev.Envelope.Intent.Git)
	}

	// Rewriting main: history the server has is dropped.
	m.mustGit(t, nil, work, "reset", "-q", "--hard", "HEAD~1")
	os.WriteFile(filepath.Join(work, "b.txt"), []byte("b\n"), 0o644)
	m.mustGit(t, nil, work, "add", "b.txt")
	m.mustGit(t, nil, work, "commit", "-q", "-m", "rewrite")
	if out, err := m.gitCmd(t, m.Agent, work, "push", "--force", "origin", "main"); err == nil || !strings.Contains(out, "403") {
		t.Fatalf("force push to main: %v\n%s", err, out)
	}
	ev = m.waitL7(t, "git.test", receive, 3)
	g = ev.Envelope.Intent.Git
	if ev.Decision.Outcome != "DENY" || *ev.Envelope.Intent.ActionClass != "code.destructive" ||
		!slices.Equal(ev.Decision.MatchedPolicies, []string{"no-destructive-git"}) || len(g.Updates) != 1 || !g.Updates[0].Force || !g.Updates[0].Protected {
		t.Fatalf("force push: %+v %+v", ev.Decision, g)
	}
	if out, err := m.gitCmd(t, m.Agent, work, "push", "origin", "--delete", "feature"); err == nil {
		t.Fatalf("branch deletion: %s", out)
	}
	ev = m.waitL7(t, "git.test", receive, 4)
	if ev.Decision.Outcome != "DENY" || *ev.Envelope.Intent.ActionClass != "code.destructive" || !ev.Envelope.Intent.Git.Updates[0].Delete {
		t.Fatalf("deletion: %+v %+v", ev.Decision, ev.Envelope.Intent.Git)
	}
	if got := m.mustGit(t, nil, bare, "rev-parse", "main", "feature"); got != pushed+"\n"+pushed {
		t.Fatalf("the server's refs changed: %s", got)
	}

	m.Stop(t)
	if out, code := e2e.VerifyAudit(t, m.pub, m.AuditFiles(t)...); code != 0 {
		t.Fatalf("firma audit verify: exit %d\n%s", code, out)
	}
}
