package policies

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"context"
	"crypto/sha1"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/openfirma/firma/internal/testutil"
)

func TestClassifyGit(t *testing.T) {
	for _, tc := range []struct {
		method, path, query string
		ok                  bool
		service, owner      string
		repo                string
		push                bool
	}{
		{"GET", "/octo-org/hello.git/info/refs", "service=git-upload-pack", true, GitUploadPack, "octo-org", "hello", false},
		{"GET", "/Octo-Org/Hello/info/refs", "service=git-receive-pack", true, GitReceivePack, "octo-org", "hello", false},
		{"POST", "/octo-org/hello.git/git-upload-pack", "", true, GitUploadPack, "octo-org", "hello", false},
		{"POST", "/octo-org/hello.git/git-receive-pack", "", true, GitReceivePack, "octo-org", "hello", true},
		{"POST", "/group/sub/project.git/git-receive-pack", "", true, GitReceivePack, "group/sub", "project", true},
		{"GET", "/repo.git/info/refs", "", true, GitUploadPack, "", "repo", false}, // dumb protocol: a fetch
		// A query that names receive-pack at all, or does not parse, is a push advertisement.
		{"GET", "/o/r/info/refs", "service=git-upload-pack&service=git-receive-pack", true, GitReceivePack, "o", "r", false},
		{"GET", "/o/r/info/refs", "service=%zz", true, GitReceivePack, "o", "r", false},
		{"GET", "/o/r/git-receive-pack", "", false, "", "", "", false},
		{"POST", "/o/r/info/refs", "service=git-upload-pack", false, "", "", "", false},
		// Any POST that a server could route to receive-pack is a push, and must parse as one.
		{"POST", "/git-receive-pack", "", true, GitReceivePack, "", "", true},
		{"POST", "/o/r.git/git-receive-pack;jsessionid=1", "", true, GitReceivePack, "o", "r", true},
		{"POST", "/o/r.git/GIT-RECEIVE-PACK", "", true, GitReceivePack, "o", "r", true},
		{"POST", "/o/r.git/git-receive-pack/x", "", true, GitReceivePack, "o", "r", true},
		{"POST", "/git-upload-pack", "", false, "", "", "", false},
		{"GET", "/o/r/pulls", "", false, "", "", "", false},
	} {
		g, ok := ClassifyGit(tc.method, tc.path, tc.query)
		if ok != tc.ok || ok && (g.Service != tc.service || g.Owner != tc.owner || g.Repo != tc.repo || g.Push != tc.push) {
			t.Errorf("%s %s?%s: %+v %v", tc.method, tc.path, tc.query, g, ok)
		}
	}
}

func TestProtectedBranches(t *testing.T) {
	g, err := GitConfig{}.parse()
	if err != nil {
		t.Fatal(err)
	}
	for ref, want := range map[string]bool{
		"refs/heads/main": true, "refs/heads/MAIN": true, "refs/heads/master": true, "refs/heads/release/1.2": true,
		"refs/heads/feature": false, "refs/heads/main-x": false, "refs/tags/main": false, "refs/heads/releases": false,
	} {
		if got := g.isProtected(ref); got != want {
			t.Errorf("default: %s protected %v, want %v", ref, got, want)
		}
	}
	g, _ = GitConfig{ProtectedBranches: []string{"prod", "refs/tags/*"}}.parse()
	if !g.isProtected("refs/tags/v1") || !g.isProtected("refs/heads/prod") || g.isProtected("refs/heads/main") {
		t.Error("configured patterns")
	}
	g, _ = GitConfig{ProtectedBranches: []string{}, Hosts: []string{}}.parse()
	if g.isProtected("refs/heads/main") || g.isGitHost("github.com") {
		t.Error("empty lists protect and classify nothing")
	}
}

// gitServer is a smart-HTTP git server on 127.0.0.1: git http-backend behind net/http/cgi, which
// keeps the body of every receive-pack request.
type gitServer struct {
	url  string
	root string
	mu   sync.Mutex
	// pushes are the receive-pack request bodies, as sent (Content-Encoding not undone), with the
	// header they came with.
	pushes []capturedPush
}

type capturedPush struct {
	header http.Header
	body   []byte
}

func startGitServer(t *testing.T) *gitServer {
	t.Helper()
	git := testutil.RequireTool(t, "git")
	out, err := exec.Command(git, "--exec-path").Output()
	if err != nil {
		t.Fatal(err)
	}
	s := &gitServer{root: t.TempDir()}
	backend := &cgi.Handler{
		Path: filepath.Join(strings.TrimSpace(string(out)), "git-http-backend"),
		Env:  []string{"GIT_PROJECT_ROOT=" + s.root, "GIT_HTTP_EXPORT_ALL=1"},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/git-receive-pack") {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			s.mu.Lock()
			s.pushes = append(s.pushes, capturedPush{r.Header.Clone(), body})
			s.mu.Unlock()
			r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
			r.TransferEncoding = nil
		}
		backend.ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	s.url = "http://" + ln.Addr().String()
	return s
}

// lastPush returns the decoded body of the last receive-pack request.
func (s *gitServer) lastPush(t *testing.T) []byte {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pushes) == 0 {
		t.Fatal("no push captured")
	}
	p := s.pushes[len(s.pushes)-1]
	body, _, err := decodeBody(p.header, p.body, 64<<20, false)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// gitEnv runs git with a private HOME and configuration and without proxy variables: it talks only
// to the test's server on 127.0.0.1.
func gitRun(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-c", "user.name=t", "-c", "user.email=t@example.com",
		"-c", "init.defaultBranch=main", "-c", "protocol.version=2", "-c", "http.postBuffer=1048576"}, args...)...)
	cmd.Dir = dir
	for _, kv := range os.Environ() {
		if !strings.Contains(strings.ToLower(kv), "proxy") && !strings.HasPrefix(kv, "GIT_") && !strings.HasPrefix(kv, "HOME=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "HOME="+t.TempDir(), "GIT_CONFIG_NOSYSTEM=1", "GIT_TERMINAL_PROMPT=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// newRepo creates a bare repository on the server, with one commit on main, and a clone of it
// over HTTP.
func (s *gitServer) newRepo(t *testing.T, name string, format string) (clone string) {
	t.Helper()
	bare := filepath.Join(s.root, name+".git")
	gitRun(t, s.root, "init", "-q", "--bare", "--object-format="+format, bare)
	gitRun(t, bare, "config", "http.receivepack", "true")
	seed := t.TempDir()
	gitRun(t, seed, "init", "-q", "--object-format="+format, ".")
	os.WriteFile(filepath.Join(seed, "README"), []byte("hello\n"), 0o644)
	gitRun(t, seed, "add", "README")
	gitRun(t, seed, "commit", "-q", "-m", "initial")
	gitRun(t, seed, "push", "-q", bare, "main")
	clone = filepath.Join(t.TempDir(), name)
	gitRun(t, filepath.Dir(clone), "clone", "-q", s.url+"/"+name+".git", clone)
	return clone
}

func commitFile(t *testing.T, dir, file, content, msg string) string {
	t.Helper()
	os.WriteFile(filepath.Join(dir, file), []byte(content), 0o644)
	gitRun(t, dir, "add", file)
	gitRun(t, dir, "commit", "-q", "-m", msg)
	return gitRun(t, dir, "rev-parse", "HEAD")
}

func defaultProtected(ref string) bool {
	g, _ := GitConfig{}.parse()
	return g.isProtected(ref)
}

// TestParsePushRealGit feeds the receive-pack bodies a real git client sends to the parser: a
// normal push is a fast-forward, a force push to a protected branch and a deletion are
// destructive, a force push elsewhere is a write that says it forces.
func TestParsePushRealGit(t *testing.T) {
	for _, format := range []string{"sha1", "sha256"} {
		t.Run(format, func(t *testing.T) {
			t.Parallel()
			s := startGitServer(t)
			repo := s.newRepo(t, "hello", format)
			base := gitRun(t, repo, "rev-parse", "HEAD")
			parse := func() ([]RefUpdate, string) {
				t.Helper()
				updates, problem, err := ParsePush(s.lastPush(t), false, 1<<30, defaultProtected)
				if err != nil {
					t.Fatal(err)
				}
				return updates, problem
			}
			check := func(name string, updates []RefUpdate, want RefUpdate, class string) {
				t.Helper()
				if len(updates) != 1 {
					t.Fatalf("%s: %d updates: %+v", name, len(updates), updates)
				}
				if updates[0] != want {
					t.Errorf("%s:\n\tgot  %+v\n\twant %+v", name, updates[0], want)
				}
				g := &GitRequest{Service: GitReceivePack, Push: true, Updates: updates}
				if g.ActionClass() != class {
					t.Errorf("%s: class %s, want %s", name, g.ActionClass(), class)
				}
			}

			// A normal push of two commits.
			commitFile(t, repo, "a", "a\n", "a")
			tip := commitFile(t, repo, "b", "b\n", "b")
			gitRun(t, repo, "push", "-q", "origin", "main")
			updates, problem := parse()
			check("push", updates, RefUpdate{Ref: "refs/heads/main", Old: base, New: tip, FastForward: true, Protected: true}, ClassCodeWrite)
			if problem != "" {
				t.Errorf("push: pack problem %q", problem)
			}

			// A force push that drops them.
			gitRun(t, repo, "reset", "-q", "--hard", base)
			rewritten := commitFile(t, repo, "c", "c\n", "rewrite")
			gitRun(t, repo, "push", "-q", "--force", "origin", "main")
			updates, _ = parse()
			check("force push", updates, RefUpdate{Ref: "refs/heads/main", Old: tip, New: rewritten, Protected: true}, ClassCodeDestructive)

			// A new branch, then a force push to it: a write, but a forced one.
			gitRun(t, repo, "checkout", "-q", "-b", "feature")
			f1 := commitFile(t, repo, "f", "1\n", "f1")
			gitRun(t, repo, "push", "-q", "origin", "feature")
			updates, _ = parse()
			check("create", updates, RefUpdate{Ref: "refs/heads/feature", Old: strings.Repeat("0", len(base)), New: f1, Create: true}, ClassCodeWrite)
			gitRun(t, repo, "commit", "-q", "--amend", "-m", "f1 amended")
			f2 := gitRun(t, repo, "rev-parse", "HEAD")
			gitRun(t, repo, "push", "-q", "--force", "origin", "feature")
			updates, _ = parse()
			check("force feature", updates, RefUpdate{Ref: "refs/heads/feature", Old: f1, New: f2}, ClassCodeWrite)
			if !updates[0].Force() {
				t.Error("force feature: not a force")
			}

			// Deleting a branch: no pack at all.
			gitRun(t, repo, "push", "-q", "origin", "--delete", "feature")
			updates, _ = parse()
			check("delete", updates, RefUpdate{Ref: "refs/heads/feature", Old: f2, New: strings.Repeat("0", len(base)), Delete: true}, ClassCodeDestructive)

			// Many commits with large, similar messages, so that pack-objects stores some as deltas
			// of others: the parser must resolve them to prove the fast-forward.
			gitRun(t, repo, "checkout", "-q", "main")
			msg := strings.Repeat("a long commit message line that repeats\n", 400)
			for i := 0; i < 12; i++ {
				gitRun(t, repo, "commit", "-q", "--allow-empty", "-m", msg+strings.Repeat("y", i))
			}
			last := gitRun(t, repo, "rev-parse", "HEAD")
			gitRun(t, repo, "push", "-q", "origin", "main")
			if n := packTypes(t, s.lastPush(t))[objOfsDelta]; n == 0 {
				t.Fatal("git stored no commit as a delta: the test no longer exercises delta resolution")
			}
			updates, problem = parse()
			check("deltified push", updates, RefUpdate{Ref: "refs/heads/main", Old: rewritten, New: last, FastForward: true, Protected: true}, ClassCodeWrite)
			if problem != "" {
				t.Errorf("deltified push: pack problem %q", problem)
			}

			// The same force push, cut short: the ref updates are all there, the pack proves nothing.
			body := s.lastPush(t)
			updates, problem, err := ParsePush(body[:len(body)/2], true, 1<<30, defaultProtected)
			if err != nil || len(updates) != 1 || updates[0].FastForward || !strings.Contains(problem, "max_body_bytes") {
				t.Errorf("truncated: %+v %q %v", updates, problem, err)
			}
			// And with too small an inflation budget.
			updates, problem, _ = ParsePush(body, false, 1024, defaultProtected)
			if len(updates) != 1 || updates[0].FastForward || !strings.Contains(problem, "budget") {
				t.Errorf("budget: %+v %q", updates, problem)
			}
		})
	}
}

// TestGitPushDecisions runs captured pushes through Decide on a git host: the class, the context's
// git attributes, and the body the HTTP engine must buffer.
func TestGitPushDecisions(t *testing.T) {
	s := startGitServer(t)
	repo := s.newRepo(t, "app", "sha1")
	commitFile(t, repo, "a", "a\n", "a")
	gitRun(t, repo, "push", "-q", "origin", "main")
	normal := s.lastPush(t)
	base := gitRun(t, repo, "rev-parse", "HEAD~1")
	gitRun(t, repo, "reset", "-q", "--hard", base)
	commitFile(t, repo, "b", "b\n", "b")
	gitRun(t, repo, "push", "-q", "--force", "origin", "main")
	force := s.lastPush(t)

	e := l7Engine(t, Config{}, `
@id("code") permit (principal, action in Firma::Action::"code", resource);
@id("no-destruction") forbid (principal, action == Firma::Action::"code.destructive", resource);
@id("only-app") forbid (principal, action == Firma::Action::"code.write", resource) unless { context.git_repo == "app" };
@id("no-force") forbid (principal, action, resource) when { context.git_force && context.git_refs.contains("refs/heads/dev") };
`)
	push := func(path string, body []byte, gz bool) Request {
		h := http.Header{"Content-Type": {"application/x-git-receive-pack-request"}}
		if gz {
			var b bytes.Buffer
			w := gzip.NewWriter(&b)
			w.Write(body)
			w.Close()
			body = b.Bytes()
			h.Set("Content-Encoding", "gzip")
		}
		return Request{AgentID: "coder", Method: "POST", Host: "github.com", Path: path, Transport: "https",
			Content: Content{Header: h, BodySize: int64(len(body)), Body: body}}
	}
	for _, tc := range []struct {
		name    string
		r       Request
		outcome Outcome
		class   string
		reason  string
	}{
		{"normal push", push("/acme/app.git/git-receive-pack", normal, false), Allow, ClassCodeWrite, ReasonPermitted},
		{"gzipped push", push("/acme/app.git/git-receive-pack", normal, true), Allow, ClassCodeWrite, ReasonPermitted},
		{"another repo", push("/acme/infra.git/git-receive-pack", normal, false), Deny, ClassCodeWrite, ReasonForbidden},
		{"force push to main", push("/acme/app.git/git-receive-pack", force, false), Deny, ClassCodeDestructive, ReasonForbidden},
		{"garbage", push("/acme/app.git/git-receive-pack", []byte("0010not a command"), false), Deny, ClassCodeWrite, "malformed request body"},
		{"not buffered", Request{AgentID: "coder", Method: "POST", Host: "github.com", Path: "/acme/app.git/git-receive-pack",
			Content: Content{BodySize: -1}}, Deny, ClassCodeWrite, errBodyNotGiven.Error()},
	} {
		d := decide(t, e, tc.r)
		if d.Outcome != tc.outcome || d.ActionClass != tc.class || !strings.HasPrefix(d.Reason, tc.reason) {
			t.Errorf("%s: %s %s %q, want %s %s %q", tc.name, d.Outcome, d.ActionClass, d.Reason, tc.outcome, tc.class, tc.reason)
		}
		if d.Git == nil || d.Git.Repo == "" {
			t.Errorf("%s: no git in the decision: %+v", tc.name, d)
		}
	}
	d := decide(t, e, push("/acme/app.git/git-receive-pack", force, false))
	if len(d.Git.Updates) != 1 || !d.Git.Updates[0].Protected || !d.Git.Updates[0].Force() || d.Provider != "github" {
		t.Errorf("force push record: %+v %+v", d.Git, d)
	}
	// Fetches and the advertisements are classified without a body.
	for path, class := range map[string]string{
		"/acme/app.git/info/refs?service=git-upload-pack":  ClassCodeRead,
		"/acme/app.git/info/refs?service=git-receive-pack": ClassCodeWrite,
	} {
		r := Request{AgentID: "coder", Method: "GET", Host: "github.com", Path: path, Transport: "https"}
		if d := decide(t, e, r); d.Outcome != Allow || d.ActionClass != class || e.NeedsBody(r) {
			t.Errorf("GET %s: %s %s", path, d.Outcome, d.ActionClass)
		}
	}
	// Not a git host: the mapping rules classify.
	r := push("/acme/app.git/git-receive-pack", normal, false)
	r.Host = "git.example.org"
	if d := decide(t, e, r); d.Git != nil || d.Reason != ReasonUnclassified {
		t.Errorf("non-git host: %+v", d)
	}
}

// TestGitClone: a real clone through a git host's smart HTTP is code.read at every step, as
// Decide sees the requests git sends.
func TestGitCloneRequests(t *testing.T) {
	s := startGitServer(t)
	s.newRepo(t, "lib", "sha1")
	var mu sync.Mutex
	var seen []string
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := l7Engine(t, Config{Git: GitConfig{Hosts: []string{"127.0.0.1"}}}, `permit (principal, action == Firma::Action::"code.read", resource);`)
	upstream := s.url
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d := decide(t, e, Request{AgentID: "coder", Method: r.Method, Host: "127.0.0.1", Path: r.URL.RequestURI(), Transport: "http",
			Content: Content{Header: r.Header, BodySize: r.ContentLength}})
		mu.Lock()
		seen = append(seen, r.Method+" "+d.ActionClass+" "+string(d.Outcome))
		mu.Unlock()
		if d.Outcome != Allow {
			http.Error(w, d.Reason, http.StatusForbidden)
			return
		}
		proxyTo(t, w, r, upstream)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	gitRun(t, t.TempDir(), "clone", "-q", "http://"+ln.Addr().String()+"/lib.git", "lib")
	mu.Lock()
	defer mu.Unlock()
	if len(seen) < 2 || slices.ContainsFunc(seen, func(s string) bool { return !strings.HasSuffix(s, " code.read ALLOW") }) {
		t.Errorf("clone requests: %q", seen)
	}
}

// proxyTo forwards a request to the git server, as the sidecar would after an ALLOW.
func proxyTo(t *testing.T, w http.ResponseWriter, r *http.Request, base string) {
	req, err := http.NewRequestWithContext(context.Background(), r.Method, base+r.URL.RequestURI(), r.Body)
	if err != nil {
		t.Error(err)
		return
	}
	req.Header = r.Header.Clone()
	req.ContentLength = r.ContentLength
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Error(err)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}

func TestParsePushSynthetic(t *testing.T) {
	zero := strings.Repeat("0", 40)
	a, b := strings.Repeat("a", 40), strings.Repeat("b", 40)
	pkt := func(s string) string { return hex4(len(s)+4) + s }
	for _, tc := range []struct {
		name, body string
		want       []string
		err        string
	}{
		{"delete only, no pack", pkt(a+" "+zero+" refs/heads/x\x00report-status delete-refs\n") + "0000", []string{"refs/heads/x"}, ""},
		{"shallow first", pkt("shallow "+b+"\n") + pkt(a+" "+zero+" refs/heads/x\x00report-status\n") + "0000", []string{"refs/heads/x"}, ""},
		{"push options", pkt(a+" "+zero+" refs/heads/x\x00push-options\n") + "0000" + pkt("ci.skip\n") + "0000", []string{"refs/heads/x"}, ""},
		{"signed push", pkt("push-cert\x00report-status\n") + pkt("certificate version 0.1\n") + pkt("pusher t\n") + pkt("\n") +
			pkt(a+" "+zero+" refs/heads/x\n") + pkt("-----BEGIN PGP SIGNATURE-----\n") + pkt("xyz\n") + pkt("-----END PGP SIGNATURE-----\n") +
			pkt("push-cert-end\n") + "0000", []string{"refs/heads/x"}, ""},
		{"no commands", "0000", nil, "no ref updates"},
		{"bad command", pkt("hello\n") + "0000", nil, "bad ref update"},
		{"uppercase id", pkt(strings.ToUpper(a)+" "+zero+" refs/heads/x\n") + "0000", nil, "bad ref update"},
		{"cut short", pkt(a + " " + zero + " refs/heads/x\n"), nil, "cut short"},
		{"bad length", "zzzz", nil, "bad pkt-line length"},
		{"mixed id lengths", pkt(a+" "+strings.Repeat("0", 64)+" refs/heads/x\n") + "0000", nil, "object ids of mixed length"},
	} {
		updates, _, err := ParsePush([]byte(tc.body), false, 1<<20, defaultProtected)
		var refs []string
		for _, u := range updates {
			refs = append(refs, u.Ref)
		}
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, errPush) {
				t.Errorf("%s: %v, want %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || !slices.Equal(refs, tc.want) {
			t.Errorf("%s: %v %v", tc.name, refs, err)
		}
	}
	// An update whose body was cut in the commands is over the limit, not malformed.
	if _, _, err := ParsePush([]byte(pkt(a + " " + b + " refs/heads/x\n")[:20]), true, 1<<20, nil); !errors.Is(err, errBodyTooLarge) {
		t.Errorf("truncated commands: %v", err)
	}
	// An update without a pack proves nothing: a protected update is destructive.
	updates, problem, err := ParsePush([]byte(pkt(a+" "+b+" refs/heads/main\n")+"0000"), false, 1<<20, defaultProtected)
	if err != nil || len(updates) != 1 || updates[0].FastForward || problem != "no pack" {
		t.Errorf("no pack: %+v %q %v", updates, problem, err)
	}
	if g := (&GitRequest{Service: GitReceivePack, Updates: updates}); g.ActionClass() != ClassCodeDestructive {
		t.Errorf("unproven protected update: %s", g.ActionClass())
	}
}

func hex4(n int) string {
	const digits = "0123456789abcdef"
	return string([]byte{digits[n>>12&15], digits[n>>8&15], digits[n>>4&15], digits[n&15]})
}

// packObject is one object of a synthetic pack: a full object, or a delta whose base is given by
// offset index (OFS_DELTA) or by id (REF_DELTA).
type packObject struct {
	typ     int
	data    []byte
	baseIdx int    // OFS_DELTA: index of the base object
	baseID  string // REF_DELTA: hex id of the base
}

// buildPack writes a version 2 pack of objects (no trailing checksum: firma does not read it).
func buildPack(t testing.TB, objects []packObject) []byte {
	var b bytes.Buffer
	b.WriteString("PACK\x00\x00\x00\x02")
	b.Write([]byte{byte(len(objects) >> 24), byte(len(objects) >> 16), byte(len(objects) >> 8), byte(len(objects))})
	offsets := make([]int, len(objects))
	for i, o := range objects {
		offsets[i] = b.Len()
		size := len(o.data)
		c := byte(o.typ<<4) | byte(size&15)
		size >>= 4
		for size > 0 {
			b.WriteByte(c | 0x80)
			c = byte(size & 0x7f)
			size >>= 7
		}
		b.WriteByte(c)
		switch o.typ {
		case objOfsDelta:
			off := offsets[i] - offsets[o.baseIdx]
			enc := []byte{byte(off & 0x7f)}
			for off >>= 7; off > 0; off >>= 7 {
				off--
				enc = append([]byte{byte(0x80 | off&0x7f)}, enc...)
			}
			b.Write(enc)
		case objRefDelta:
			id, err := hex.DecodeString(o.baseID)
			if err != nil {
				t.Fatal(err)
			}
			b.Write(id)
		}
		var z bytes.Buffer
		w := zlib.NewWriter(&z)
		w.Write(o.data)
		w.Close()
		b.Write(z.Bytes())
	}
	return b.Bytes()
}

// makeDelta encodes target as a delta of base: copy base's first half, insert the rest.
func makeDelta(base, target []byte) []byte {
	varint := func(n int) []byte {
		var out []byte
		for {
			c := byte(n & 0x7f)
			n >>= 7
			if n == 0 {
				return append(out, c)
			}
			out = append(out, c|0x80)
		}
	}
	d := append(varint(len(base)), varint(len(target))...)
	common := 0
	for common < len(base) && common < len(target) && base[common] == target[common] && common < 0xffff {
		common++
	}
	if common > 0 {
		d = append(d, 0x80|0x10|0x20, byte(common), byte(common>>8))
	}
	for rest := target[common:]; len(rest) > 0; {
		n := min(len(rest), 127)
		d = append(d, byte(n))
		d = append(d, rest[:n]...)
		rest = rest[n:]
	}
	return d
}

func commitText(parent string) []byte {
	text := "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n"
	if parent != "" {
		text += "parent " + parent + "\n"
	}
	return []byte(text + "author t <t@example.com> 1 +0000\ncommitter t <t@example.com> 1 +0000\n\nmessage\n")
}

func commitID(data []byte) string {
	h := sha1.New()
	h.Write([]byte("commit " + strconv.Itoa(len(data)) + "\x00"))
	h.Write(data)
	return hex.EncodeToString(h.Sum(nil))
}

// TestPackDeltas: commits stored as OFS_DELTA and REF_DELTA (base before or after) resolve, and a
// delta whose base is not in the pack proves nothing.
func TestPackDeltas(t *testing.T) {
	old := strings.Repeat("1", 40)
	c1 := commitText(old)
	id1 := commitID(c1)
	c2 := commitText(id1)
	id2 := commitID(c2)
	c3 := commitText(id2)
	id3 := commitID(c3)
	for _, tc := range []struct {
		name    string
		objects []packObject
		ff      bool
	}{
		{"full commits", []packObject{{typ: objCommit, data: c1}, {typ: objCommit, data: c2}, {typ: objCommit, data: c3}}, true},
		{"ofs deltas", []packObject{{typ: objCommit, data: c1}, {typ: objOfsDelta, data: makeDelta(c1, c2), baseIdx: 0},
			{typ: objOfsDelta, data: makeDelta(c2, c3), baseIdx: 1}}, true},
		{"ref delta, base first", []packObject{{typ: objCommit, data: c1}, {typ: objRefDelta, data: makeDelta(c1, c2), baseID: id1},
			{typ: objCommit, data: c3}}, true},
		{"ref delta, base later", []packObject{{typ: objRefDelta, data: makeDelta(c2, c3), baseID: id2},
			{typ: objRefDelta, data: makeDelta(c1, c2), baseID: id1}, {typ: objCommit, data: c1}}, true},
		{"thin: base outside the pack", []packObject{{typ: objRefDelta, data: makeDelta(c1, c2), baseID: strings.Repeat("9", 40)},
			{typ: objCommit, data: c3}}, false},
		{"a commit missing", []packObject{{typ: objCommit, data: c1}, {typ: objCommit, data: c3}}, false},
		{"blobs and trees are skipped", []packObject{{typ: objBlob, data: bytes.Repeat([]byte("b"), 5000)}, {typ: objTree, data: []byte{}},
			{typ: objCommit, data: c1}, {typ: objOfsDelta, data: makeDelta(bytes.Repeat([]byte("b"), 5000), []byte("bb")), baseIdx: 0},
			{typ: objCommit, data: c2}, {typ: objCommit, data: c3}}, true},
	} {
		commits, err := packCommits(buildPack(t, tc.objects), 20, false, 1<<20)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if got := descends(commits, id3, old); got != tc.ff {
			t.Errorf("%s: fast-forward %v, want %v (commits %v)", tc.name, got, tc.ff, commits)
		}
	}
	// Malformed packs: an error, and nothing proved past it.
	good := buildPack(t, []packObject{{typ: objCommit, data: c1}})
	for name, pack := range map[string][]byte{
		"not a pack":        []byte("NOPE\x00\x00\x00\x02\x00\x00\x00\x01"),
		"version 4":         append([]byte("PACK\x00\x00\x00\x04"), good[8:]...),
		"more than it has":  append(append([]byte(nil), good[:11]...), append([]byte{9}, good[12:]...)...),
		"bad zlib":          append(append([]byte(nil), good[:14]...), 0xff, 0xff),
		"delta off the end": buildPack(t, []packObject{{typ: objCommit, data: c1}, {typ: objOfsDelta, data: []byte{0x7f, 0x01, 0x90, 0xff}, baseIdx: 0}}),
	} {
		if _, err := packCommits(pack, 20, false, 1<<20); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// packTypes counts the object types of the pack in a receive-pack body.
func packTypes(t *testing.T, body []byte) map[int]int {
	t.Helper()
	_, caps, pack, err := parseCommands(body, false)
	if err != nil {
		t.Fatal(err)
	}
	hashLen := 20
	if slices.Contains(caps, "object-format=sha256") {
		hashLen = 32
	}
	counts := map[int]int{}
	pos := 12
	for i := uint32(0); i < binary.BigEndian.Uint32(pack[8:12]); i++ {
		typ, size, n, err := objectHeader(pack[pos:])
		if err != nil {
			t.Fatal(err)
		}
		pos += n
		switch typ {
		case objOfsDelta:
			_, n, _ := ofsDeltaOffset(pack[pos:])
			pos += n
		case objRefDelta:
			pos += hashLen
		}
		_, used, err := inflate(pack[pos:], size, false)
		if err != nil {
			t.Fatal(err)
		}
		pos += used
		counts[typ]++
	}
	return counts
}
