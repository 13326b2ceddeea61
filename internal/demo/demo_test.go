//go:build linux

package demo

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/openfirma/firma/internal/cgroup"
	"github.com/openfirma/firma/internal/e2e"
	"github.com/openfirma/firma/internal/testutil"
)

// The README's first command must keep showing what it says it shows, and leave nothing behind.
func TestDemo(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "curl")
	var out bytes.Buffer
	if err := Run(context.Background(), &out, Options{Firma: e2e.Binary(t, "firma"), Keep: true}); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	s := out.String()
	kept := regexp.MustCompile(`Kept (/[^ ]*/firma-demo-\d+) `).FindStringSubmatch(s)
	if kept == nil {
		t.Fatalf("--keep did not say where:\n%s", s)
	}
	// Every original destination, DNS included, was on loopback: had firma failed to redirect
	// anything, it would not have left the machine.
	var dsts int
	for _, ev := range e2e.ReadEvents(t, filepath.Join(kept[1], "audit", "audit.jsonl")) {
		if ev.Envelope == nil || ev.Envelope.Transport.OrigDst == "" {
			continue
		}
		dsts++
		if ap, err := netip.ParseAddrPort(ev.Envelope.Transport.OrigDst); err != nil || !ap.Addr().IsLoopback() {
			t.Errorf("original destination %s is not on loopback", ev.Envelope.Transport.OrigDst)
		}
	}
	if dsts < 10 {
		t.Errorf("only %d records with an original destination", dsts)
	}
	os.RemoveAll(kept[1])
	for _, want := range []string{
		// Allowed, tunnelled; refused at DNS; refused by TLS server name; 403 for an unclassified host.
		"hello from api.anthropic.com /v1/messages",
		"Could not resolve host: paste.rs",
		"alert access denied",
		"firma: denied: unclassified intent",
		// MITM: the upstream saw the sidecar's key, not the agent's; the audit record names the
		// header injected; the agent trusted firma's CA as an unprivileged user.
		"-H 'Authorization: Bearer sk-agent-own-key' https://api.openai.com/v1/models",
		"api.openai.com: saw the sidecar's key (Bearer sk-firma-demo-…",
		"the agent's own header never arrived",
		"api.openai.com got GET /v1/models with Authorization: Bearer sk-firma-demo-…",
		"ALLOW mitm    GET api.openai.com/v1/models",
		"injected=[Authorization]",
		"uid=65534",
		// The operator's view.
		"firma sidecar at 127.0.0.1:",
		": READY",
		"mitm       1 leaves minted",
		// The sidecar killed: the agent refused and nothing reached the upstream; then served again.
		"Failed to connect to api.anthropic.com port 443",
		"connections that reached api.anthropic.com meanwhile: 0",
		"----- resume: the chain continues after a restart",
		// What reached the upstreams.
		"api.anthropic.com  2 connection(s)",
		"paste.rs           0 connection(s)",
		"example.com        0 connection(s)",
		"api.openai.com     1 connection(s)",
		// The audit log, and firma audit verify passing on it.
		"ALLOW connect api.anthropic.com:443",
		"DENY  connect paste.rs:443",
		"forbid_at_claude-code.cedar_18",
		"chain and signatures verified",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("demo output lacks %q:\n%s", want, s)
		}
	}
	if n := strings.Count(s, "hello from api.anthropic.com /v1/messages"); n != 2 {
		t.Errorf("the allowed request succeeded %d times, want before the kill and after the restart", n)
	}
	if strings.Contains(s, "did NOT see the sidecar's key") || strings.Contains(s, "sk-agent-own-key)") {
		t.Errorf("the upstream saw the agent's own credential:\n%s", s)
	}
	if !regexp.MustCompile(`\nOK \d+ records`).MatchString(strings.ReplaceAll(s, "\n   ", "\n")) {
		t.Errorf("firma audit verify did not pass:\n%s", s)
	}
	assertCleanedUp(t, s, os.Getpid())
}

// An interrupted demo (^C) stops at once and still removes everything.
func TestDemoInterrupted(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "curl")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &watchWriter{on: "3. the same site", do: cancel}
	err := Run(ctx, out, Options{Firma: e2e.Binary(t, "firma")})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted demo: %v\n%s", err, out.String())
	}
	assertCleanedUp(t, out.String(), os.Getpid())
}

// A reader that goes away (firma demo | head) ends the demo, which still removes everything.
func TestDemoReaderGone(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "curl")
	out := &watchWriter{on: "2. a paste site", fail: syscall.EPIPE}
	err := Run(context.Background(), out, Options{Firma: e2e.Binary(t, "firma")})
	if !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("demo with its reader gone: %v\n%s", err, out.String())
	}
	if strings.Contains(out.String(), "4. ") {
		t.Errorf("the demo went on after its reader went away:\n%s", out.String())
	}
	assertCleanedUp(t, out.String(), os.Getpid())
}

// `firma demo` itself, stopped by SIGINT, or with its stdout closed under it, exits non-zero and
// leaves nothing behind.
func TestDemoCommandStopped(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "curl")
	firma := e2e.Binary(t, "firma")
	for _, how := range []string{"SIGINT", "closed stdout"} {
		t.Run(how, func(t *testing.T) {
			cmd := exec.Command(firma, "demo")
			cmd.Env = testutil.CleanEnv()
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var seen strings.Builder
			r := bufio.NewReader(stdout)
			for !strings.Contains(seen.String(), "$ curl") { // step 1's command names the work dir
				line, err := r.ReadString('\n')
				seen.WriteString(line)
				if err != nil {
					t.Fatalf("demo output ended: %v\n%s%s", err, seen.String(), stderr.String())
				}
			}
			if how == "SIGINT" {
				cmd.Process.Signal(os.Interrupt)
				io.Copy(&seen, r)
			} else {
				stdout.Close()
			}
			err = cmd.Wait()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Errorf("firma demo %s: %v\n%s", how, err, stderr.String())
			}
			if how == "SIGINT" && strings.Contains(seen.String(), "What the upstreams saw") {
				t.Errorf("the demo ran on after SIGINT:\n%s", seen.String())
			}
			assertCleanedUp(t, seen.String(), cmd.Process.Pid)
		})
	}
}

// watchWriter records what it is given; once it has seen on, it calls do and, with fail set,
// fails every later write.
type watchWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	on   string
	do   func()
	fail error
	seen bool
}

func (w *watchWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.seen && w.fail != nil {
		return 0, w.fail
	}
	w.buf.Write(p)
	if !w.seen && strings.Contains(w.buf.String(), w.on) {
		w.seen = true
		if w.do != nil {
			w.do()
		}
	}
	return len(p), nil
}

func (w *watchWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// assertCleanedUp checks that the demo whose output is out left no sidecar process, pinned
// programs, cgroup or work dir behind; demoPID is the process that ran it.
func assertCleanedUp(t *testing.T, out string, demoPID int) {
	t.Helper()
	m := regexp.MustCompile(`sidecar running \(pid (\d+)\)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no sidecar pid in the output:\n%s", out)
	}
	pid, _ := strconv.Atoi(m[1])
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("the sidecar (pid %d) is still there: %v", pid, err)
	}
	name := fmt.Sprintf("firma-demo-%d", demoPID)
	if _, err := os.Stat(filepath.Join("/sys/fs/bpf", name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pins left in /sys/fs/bpf/%s: %v", name, err)
	}
	mount, err := cgroup.FindV2Mount()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(mount, name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup %s left: %v", name, err)
	}
	if dir := regexp.MustCompile(`(/[^ ]*/firma-demo-\d+)/`).FindStringSubmatch(out); dir == nil {
		t.Errorf("no work dir in the output:\n%s", out)
	} else if _, err := os.Stat(dir[1]); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("work dir %s left: %v", dir[1], err)
	}
}
