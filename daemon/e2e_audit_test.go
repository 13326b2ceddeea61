//go:build linux

package daemon_test

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/internal/e2e"
)

// auditTOML signs the log with key and fsyncs it often, so that tests see every line promptly.
func auditTOML(key string) string {
	return fmt.Sprintf("signing_key_path = %q\nfsync_interval = \"50ms\"", key)
}

// A log written by a real run, rotated once on SIGHUP, verifies with the public key; each kind of
// tampering, done on a copy, is found at the right file and line.
func TestAuditVerifyRealLog(t *testing.T) {
	key, pub := e2e.AuditKey(t)
	w := newWorld(t, e2e.SidecarOptions{AuditTOML: auditTOML(key)})
	denied := w.denied.Addr.Addr().String()

	mustCurl := func(want string, args ...string) {
		t.Helper()
		if out, err := w.curl(t, args...); err != nil || out != want {
			t.Fatalf("curl %v: %v: %q\n%s", args, err, out, w.Logs())
		}
	}
	mustCurl("hello from allowed /one\n", "https://allowed.test/one")
	if out, err := w.curl(t, "https://denied.test/"); err == nil {
		t.Fatalf("denied.test resolved and answered: %q", out)
	}
	if out, err := w.curl(t, "--resolve", "denied.test:443:"+denied, "https://denied.test/"); err == nil {
		t.Fatalf("denied.test answered by address: %q", out)
	}
	mustCurl("hello from plain /page\n", "http://plain.test/page")

	w.Signal(t, syscall.SIGHUP)
	auditWaitFor(t, "the audit log to rotate on SIGHUP", func() bool { return len(w.AuditFiles(t)) == 2 })

	mustCurl("hello from allowed /two\n", "https://allowed.test/two")
	mustCurl("hello from plain /again\n", "http://plain.test/again")
	w.Stop(t)

	files := w.AuditFiles(t)
	if len(files) != 2 {
		t.Fatalf("audit files %v, want one rotated and the live file", files)
	}
	// The log holds every kind of record the run made.
	kinds := map[string]bool{}
	for _, f := range files {
		for _, ev := range e2e.ReadEvents(t, f) {
			switch {
			case ev.Kind == audit.KindDecision:
				kinds[ev.Envelope.Transport.Mode+" "+ev.Decision.Outcome] = true
			case ev.Kind == audit.KindLog:
				kinds["log "+string(ev.Log.Event)] = true
			default:
				kinds[string(ev.Kind)] = true
			}
		}
	}
	for _, want := range []string{"dns ALLOW", "dns DENY", "connect ALLOW", "connect DENY", "http ALLOW", "completion", "log open", "log close"} {
		if !kinds[want] {
			t.Errorf("no %q record in the log; have %v", want, kinds)
		}
	}
	total := len(auditFileLines(t, files[0])) + len(auditFileLines(t, files[1]))
	out, code := e2e.VerifyAudit(t, pub, files...)
	if code != 0 || !strings.Contains(out, fmt.Sprintf("OK %d records", total)) ||
		!strings.Contains(out, "chain and signatures verified") {
		t.Fatalf("verify of the untouched log: exit %d, want 0 with %d records\n%s", code, total, out)
	}

	// The live file's allowed HTTPS decision is a line in the middle of it.
	live := auditFileLines(t, files[1])
	k := auditLineOf(t, live, func(ev audit.Event) bool {
		return decisionFor("allowed.test")(ev) && ev.Decision.Outcome == "ALLOW"
	})
	if k < 2 || k >= len(live) {
		t.Fatalf("the allowed decision is line %d of %d: not in the middle", k, len(live))
	}
	rotatedLen := len(auditFileLines(t, files[0]))

	_, otherPub := e2e.AuditKey(t)
	cases := []struct {
		name   string
		pub    string
		edit   func(rotated, live []string) ([]string, []string)
		inLive bool // the problem is in the live file, else in the rotated one
		line   int
		kind   audit.ProblemKind
	}{
		{"edit one field", pub, func(r, l []string) ([]string, []string) {
			l[k-1] = strings.Replace(l[k-1], `"outcome":"ALLOW"`, `"outcome":"DENY"`, 1)
			return r, l
		}, true, k, audit.ProblemSignature},
		{"delete a line", pub, func(r, l []string) ([]string, []string) {
			return r, append(l[:k-1:k-1], l[k:]...)
		}, true, k, audit.ProblemRemoved},
		{"swap two lines", pub, func(r, l []string) ([]string, []string) {
			l[k-1], l[k] = l[k], l[k-1]
			return r, l
		}, true, k, audit.ProblemReordered},
		{"truncate the tail", pub, func(r, l []string) ([]string, []string) {
			last := len(l) - 1
			l[last] = l[last][:len(l[last])-20] // cuts the newline and the end of the close record
			return r, l
		}, true, len(live), audit.ProblemTruncated},
		{"delete the rotated file's last line", pub, func(r, l []string) ([]string, []string) {
			return r[:len(r)-1], l
		}, false, rotatedLen, audit.ProblemRemoved},
		{"another key", otherPub, func(r, l []string) ([]string, []string) { return r, l }, false, 1, audit.ProblemSignature},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			rotated, liveCopy := c.edit(auditFileLines(t, files[0]), auditFileLines(t, files[1]))
			copies := []string{filepath.Join(dir, filepath.Base(files[0])), filepath.Join(dir, filepath.Base(files[1]))}
			auditWriteLines(t, copies[0], rotated)
			auditWriteLines(t, copies[1], liveCopy)
			at := copies[0]
			if c.inLive {
				at = copies[1]
			}
			out, code := e2e.VerifyAudit(t, c.pub, copies...)
			want := fmt.Sprintf("FAIL %s:%d: %s:", at, c.line, c.kind)
			if code != 1 || !strings.Contains(out, want) {
				t.Fatalf("exit %d, want 1 and %q in:\n%s", code, want, out)
			}
		})
	}
}

// With the audit log's filesystem full, no connection reaches an upstream and the sidecar says
// why; once space is freed, service comes back and the log still verifies.
func TestAuditDiskFullDeniesConnections(t *testing.T) {
	dir := e2e.MountTmpfs(t, 256<<10)
	key, pub := e2e.AuditKey(t)
	w := newWorld(t, e2e.SidecarOptions{AuditPath: filepath.Join(dir, "audit.jsonl"), AuditTOML: auditTOML(key)})
	allowed, plain := w.allowed.Addr.Addr().String(), w.plain.Addr.Addr().String()

	if out, err := w.curl(t, "https://allowed.test/before"); err != nil || out != "hello from allowed /before\n" {
		t.Fatalf("before the disk filled: %v %q\n%s", err, out, w.Logs())
	}

	filler := filepath.Join(dir, "filler")
	auditFillDisk(t, filler)
	// The live file's last page may still hold a few lines. Spend it with a short record, a denied
	// lookup of one A record for "x." by getent, one at a time until a write fails: from then on the
	// room left is smaller than that record, and every record below is some 30 bytes longer.
	for i := 0; !strings.Contains(w.Logs(), "audit append failed"); i++ {
		if i == 40 {
			t.Fatalf("the audit log kept accepting records with its filesystem full:\n%s", w.Logs())
		}
		if out, err := w.Run(t, "getent", "ahostsv4", "x."); err == nil {
			t.Fatalf("x. resolved: %s", out)
		}
	}

	before, beforePlain := w.allowed.Conns(), len(w.plain.Requests())
	if out, err := w.curl(t, "https://allowed.test/during"); err == nil {
		t.Errorf("allowed.test answered with the audit log full: %q", out)
	}
	if out, err := w.curl(t, "--resolve", "allowed.test:443:"+allowed, "https://allowed.test/during"); err == nil {
		t.Errorf("allowed.test answered, dialed by address, with the audit log full: %q", out)
	}
	out, err := w.curl(t, "-i", "--resolve", "plain.test:80:"+plain, "http://plain.test/during")
	if err != nil || !strings.Contains(out, "403 Forbidden") || !strings.Contains(out, "audit log unavailable") {
		t.Errorf("plain HTTP with the audit log full: %v, want a 403 naming the audit log:\n%s", err, out)
	}
	if n := w.allowed.Conns(); n != before {
		t.Errorf("the allowed upstream got %d unaudited connections", n-before)
	}
	if n := len(w.plain.Requests()); n != beforePlain {
		t.Errorf("the plain upstream got %d unaudited requests", n-beforePlain)
	}
	for _, want := range []string{"audit log not writable", "no space left on device", "audit append failed: denying"} {
		if !strings.Contains(w.Logs(), want) {
			t.Errorf("the sidecar log does not say %q:\n%s", want, w.Logs())
		}
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := w.curl(t, "https://allowed.test/after")
		if err == nil && out == "hello from allowed /after\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("service did not come back within 5s of freeing space: %v %q\n%s", err, out, w.Logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	w.Stop(t)

	evs := w.Events(t)
	var allows int64
	recovered := false
	for _, ev := range evs {
		if decisionFor("allowed.test")(ev) && ev.Decision.Outcome == "ALLOW" {
			allows++
		}
		if ev.Kind == audit.KindLog && ev.Log.Event == audit.LogRecovered && ev.Log.Refused > 0 &&
			strings.Contains(ev.Log.Error, "no space left on device") {
			recovered = true
		}
		if ev.Envelope != nil && ev.Envelope.Intent.Resource.Path == "/during" {
			t.Errorf("a refused request has a record: %+v", ev)
		}
	}
	if allows != w.allowed.Conns() {
		t.Errorf("%d ALLOW records for allowed.test but %d upstream connections", allows, w.allowed.Conns())
	}
	if !recovered {
		t.Errorf("no recovered record naming the refused records and the error in the log")
	}
	if out, code := e2e.VerifyAudit(t, pub, w.AuditFiles(t)...); code != 0 {
		t.Fatalf("verify after the outage: exit %d\n%s", code, out)
	}
}

// auditFillDisk writes path until the filesystem has no room left.
func auditFillDisk(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling %s: %v", path, err)
			}
			return
		}
	}
}

// 200 connections at once from eight processes, curl and python3: every one has a record naming
// the process that opened it, and the log verifies.
func TestAuditConcurrentAttribution(t *testing.T) {
	key, pub := e2e.AuditKey(t)
	w := newWorld(t, e2e.SidecarOptions{AuditTOML: auditTOML(key)})
	const procs, conns = 4, 25
	curlExe := auditRealPath(t, "curl")

	// Two of the curl processes run as nobody: the records must carry their uid.
	caDir, err := os.MkdirTemp("", "firma-audit-ca-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(caDir) })
	caFile := filepath.Join(caDir, "ca.pem")
	ca, err := os.ReadFile(w.ca.CertFile)
	if err == nil {
		err = os.WriteFile(caFile, ca, 0o644)
	}
	if err == nil {
		err = os.Chmod(caDir, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}

	type client struct {
		exe, comm string
		uid       int
		cmd       *exec.Cmd
		out       []byte
		err       error
	}
	var clients []*client
	for p := range procs {
		urls := make([]string, conns)
		for i := range urls {
			urls[i] = fmt.Sprintf("https://allowed.test/c%d-%d", p, i)
		}
		// One HTTP/1.1 connection per URL, all opened at once.
		curl := fmt.Sprintf(`curl -sS --max-time 30 --cacert %q --http1.1 -H "Connection: close" --parallel --parallel-immediate --parallel-max %d %s`,
			caFile, conns, strings.Join(urls, " "))
		uid := 0
		if p < 2 {
			uid, curl = 65534, "setpriv --reuid 65534 --regid 65534 --clear-groups "+curl
		}
		clients = append(clients, &client{exe: curlExe, comm: "curl", uid: uid,
			cmd: w.Agent.Command(t.Context(), t, "sh", "-c", "echo $$; exec "+curl)})

		// python3 may be a shim (pyenv) that execs the interpreter: the interpreter names itself.
		py := fmt.Sprintf(`import os, ssl, sys, threading, urllib.request
print(os.getpid(), os.path.realpath(sys.executable), flush=True)
ctx = ssl.create_default_context(cafile=%q)
start = threading.Barrier(%d)
lock, got = threading.Lock(), []
def fetch(i):
    start.wait()
    try:
        body = urllib.request.urlopen("https://allowed.test/p%d-%%d" %% i, context=ctx, timeout=30).read().decode()
    except Exception as e:
        body = "error %%r" %% e
    with lock:
        got.append(body)
threads = [threading.Thread(target=fetch, args=(i,)) for i in range(%d)]
for t in threads: t.start()
for t in threads: t.join()
print("".join(got), end="")`, w.ca.CertFile, conns, p, conns)
		clients = append(clients, &client{comm: "python3", cmd: w.Agent.Command(t.Context(), t, "python3", "-c", py)})
	}
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Go(func() { c.out, c.err = c.cmd.CombinedOutput() })
	}
	wg.Wait()

	byPID := map[int]*client{}
	for _, c := range clients {
		first, rest, _ := strings.Cut(string(c.out), "\n")
		pidText, exe, named := strings.Cut(first, " ")
		if named {
			c.exe = exe
		}
		pid, err := strconv.Atoi(pidText)
		if c.err != nil || err != nil || strings.Count(rest, "hello from allowed /") != conns {
			t.Fatalf("%s: %v: want its pid and %d answers, got:\n%s", c.comm, c.err, conns, c.out)
		}
		byPID[pid] = c
	}
	w.Stop(t)

	perPID := map[int]int{}
	decisions, wrong := 0, 0
	bad := func(format string, a ...any) {
		t.Helper()
		if wrong++; wrong <= 5 {
			t.Errorf(format, a...)
		}
	}
	for _, ev := range w.Decisions(t) {
		decisions++
		a := ev.Envelope.Agent
		c, ok := byPID[a.PID]
		if !ok {
			bad("record %d (%s %s) names pid %d, none of the clients", ev.Seq, ev.Envelope.Transport.Mode, ev.Envelope.Intent.Resource.Host, a.PID)
			continue
		}
		if a.Exe != c.exe || a.Comm != c.comm || a.UID != c.uid || a.AgentID != e2e.AgentID || a.Cgroup != w.Agent.Rel {
			bad("record %d of pid %d: agent %+v, want exe %s comm %s uid %d in %s", ev.Seq, a.PID, a, c.exe, c.comm, c.uid, w.Agent.Rel)
		}
		if ev.Envelope.Transport.Mode == "dns" {
			continue
		}
		if ev.Decision.Outcome != "ALLOW" || ev.Envelope.Intent.Resource.Host != "allowed.test:443" {
			bad("record %d: %s %s, want ALLOW allowed.test:443", ev.Seq, ev.Decision.Outcome, ev.Envelope.Intent.Resource.Host)
		}
		perPID[a.PID]++
	}
	if wrong > 5 {
		t.Errorf("… %d wrong records in all", wrong)
	}
	for pid, c := range byPID {
		if perPID[pid] != conns {
			t.Errorf("%s pid %d has %d connection records, want %d", c.comm, pid, perPID[pid], conns)
		}
	}
	if decisions < procs*2*conns {
		t.Errorf("%d decision records, want at least %d", decisions, procs*2*conns)
	}
	files := w.AuditFiles(t)
	lines := 0
	for _, f := range files {
		lines += len(auditFileLines(t, f))
	}
	if out, code := e2e.VerifyAudit(t, pub, files...); code != 0 || !strings.Contains(out, fmt.Sprintf("OK %d records", lines)) {
		t.Fatalf("verify: exit %d, want 0 with %d records\n%s", code, lines, out)
	}
}

// An allowed flow ends with a completion record that names its decision and says what happened.
func TestAuditCompletionRecords(t *testing.T) {
	w := newWorld(t, e2e.SidecarOptions{})
	if !strings.Contains(w.Logs(), "audit log unsigned") {
		t.Errorf("the startup log of a sidecar without signing_key_path does not say the log is unsigned:\n%s", w.Logs())
	}
	const slow = 150 * time.Millisecond
	w.allowed.SetHandler(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		time.Sleep(slow)
		fmt.Fprintf(rw, "slow hello %s\n", r.URL.Path)
	}), false)
	w.plain.SetHandler(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/missing" {
			http.NotFound(rw, r)
			return
		}
		fmt.Fprintf(rw, "hello from plain %s\n", r.URL.Path)
	}), false)

	if out, err := w.curl(t, "-d", "posted body", "https://allowed.test/slow"); err != nil || out != "slow hello /slow\n" {
		t.Fatalf("https: %v %q\n%s", err, out, w.Logs())
	}
	if out, err := w.curl(t, "http://plain.test/page"); err != nil || out != "hello from plain /page\n" {
		t.Fatalf("http: %v %q", err, out)
	}
	if out, err := w.curl(t, "-o", "/dev/null", "-w", "%{http_code}", "http://plain.test/missing"); err != nil || out != "404" {
		t.Fatalf("http 404: %v %q", err, out)
	}
	if out, err := w.curl(t, "--resolve", "denied.test:443:"+w.denied.Addr.Addr().String(), "https://denied.test/"); err == nil {
		t.Fatalf("denied: %q", out)
	}
	w.Stop(t) // every flow has ended: every completion is written

	evs := w.Events(t)
	byID := map[string]audit.Event{}
	completions := map[string][]audit.Event{}
	for _, ev := range evs {
		switch ev.Kind {
		case audit.KindDecision:
			byID[ev.ID] = ev
		case audit.KindCompletion:
			completions[ev.DecisionID] = append(completions[ev.DecisionID], ev)
		}
	}
	for id, cs := range completions {
		d, ok := byID[id]
		if !ok {
			t.Errorf("completion %d names decision %q, which is not in the log", cs[0].Seq, id)
			continue
		}
		if len(cs) != 1 || cs[0].Seq <= d.Seq {
			t.Errorf("decision %d has %d completions (first at seq %d), want one after it", d.Seq, len(cs), cs[0].Seq)
		}
	}
	completionOf := func(what string, match func(audit.Event) bool) (audit.Event, audit.Result) {
		t.Helper()
		for _, ev := range evs {
			if ev.Kind == audit.KindDecision && match(ev) {
				cs := completions[ev.ID]
				if len(cs) != 1 || cs[0].Result == nil {
					t.Fatalf("decision %s (seq %d) has completions %+v, want one with a result", what, ev.Seq, cs)
				}
				return ev, *cs[0].Result
			}
		}
		t.Fatalf("no decision %s in the log", what)
		return audit.Event{}, audit.Result{}
	}

	httpsDecision, res := completionOf("for allowed.test", func(ev audit.Event) bool {
		return decisionFor("allowed.test")(ev) && ev.Decision.Outcome == "ALLOW"
	})
	// Through the TLS tunnel the sidecar counts TLS bytes: more than the request and response.
	if res.BytesUp <= int64(len("posted body")) || res.BytesDown <= int64(len("slow hello /slow\n")) ||
		res.DurationMS < slow.Milliseconds() || res.Error != "" {
		t.Errorf("https completion %+v, want bytes both ways, at least %dms, no error", res, slow.Milliseconds())
	}
	if c := completions[httpsDecision.ID][0]; c.Envelope == nil || c.Envelope.Transport.Dialed != w.allowed.Addr.String() {
		t.Errorf("https completion does not name the dialed address %s: %+v", w.allowed.Addr, c.Envelope)
	}

	pageDecision, res := completionOf("for /page", func(ev audit.Event) bool {
		return ev.Envelope.Intent.Resource.Path == "/page"
	})
	if res.UpstreamStatus != 200 || res.BytesDown != int64(len("hello from plain /page\n")) || res.Error != "" {
		t.Errorf("http completion %+v, want status 200 and the body's %d bytes down", res, len("hello from plain /page\n"))
	}
	_, res = completionOf("for /missing", func(ev audit.Event) bool {
		return ev.Envelope.Intent.Resource.Path == "/missing"
	})
	if res.UpstreamStatus != 404 {
		t.Errorf("http completion for /missing has status %d, want 404", res.UpstreamStatus)
	}
	for _, ev := range evs {
		if decisionFor("denied.test")(ev) && len(completions[ev.ID]) != 0 {
			t.Errorf("the denied decision %d has a completion: nothing flowed", ev.Seq)
		}
	}

	// Attribution in every record: a completion names the same process as its decision.
	t.Run("attribution", func(t *testing.T) {
		for _, d := range []audit.Event{httpsDecision, pageDecision} {
			c := completions[d.ID][0]
			if c.Envelope == nil || c.Envelope.Agent != d.Envelope.Agent {
				var got any
				if c.Envelope != nil {
					got = c.Envelope.Agent
				}
				t.Errorf("%s completion (seq %d): agent %+v, want its decision's %+v", d.Envelope.Transport.Mode, c.Seq, got, d.Envelope.Agent)
			}
		}
	})
}

// auditFileLines returns the lines of path, each with its "\n" (the last one may lack it).
func auditFileLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(b), "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return lines
}

func auditWriteLines(t *testing.T, path string, lines []string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(strings.Join(lines, "")), 0o600); err != nil {
		t.Fatal(err)
	}
}

// auditLineOf is the 1-based number of the first line whose record matches, or 0.
func auditLineOf(t *testing.T, lines []string, match func(audit.Event) bool) int {
	t.Helper()
	path := filepath.Join(t.TempDir(), "lines.jsonl")
	auditWriteLines(t, path, lines)
	for i, ev := range e2e.ReadEvents(t, path) {
		if match(ev) {
			return i + 1
		}
	}
	return 0
}

// auditRealPath is where the kernel says name's executable is: the target of every symlink.
func auditRealPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatal(err)
	}
	if p, err = filepath.EvalSymlinks(p); err != nil {
		t.Fatal(err)
	}
	return p
}

func auditWaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}
