//go:build linux

package daemon_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/internal/e2e"
	"github.com/openfirma/firma/internal/testutil"
)

// firmaRun runs `firma run` against the world's sidecar as agent test-agent, from outside every
// enforced cgroup, with proxy variables set in its own environment (they must not reach the child).
func (w *world) firmaRun(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := w.firmaRunCmd(context.Background(), t, args...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (w *world) firmaRunCmd(ctx context.Context, t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	argv := append([]string{"run", "--sidecar", w.ControlSocket, "--agent-id", e2e.AgentID, "--profile", "generic", "--"}, args...)
	cmd := exec.CommandContext(ctx, w.Bin, argv...)
	cmd.Env = append(testutil.CleanEnv(), "HTTPS_PROXY=http://127.0.0.1:9", "http_proxy=http://127.0.0.1:9", "ALL_PROXY=socks5://127.0.0.1:9")
	cmd.Dir = t.TempDir()
	return cmd
}

func TestFirmaRunEnforcesWithoutProxyVariables(t *testing.T) {
	w := newWorld(t, e2e.SidecarOptions{})
	ca := w.ca.CertFile
	out, err := w.firmaRun(t, "sh", "-c", fmt.Sprintf(`env | grep -iE '^(http|https|all|no|ftp)_proxy='; echo "---"
curl -sS --max-time 10 --cacert %[1]s https://allowed.test/run && echo curl-allowed-ok
curl -sS --max-time 10 --cacert %[1]s --resolve denied.test:443:%[2]s https://denied.test/ || echo curl-denied-refused
python3 -c 'import ssl, urllib.request as u; print(u.urlopen("https://allowed.test/py", context=ssl.create_default_context(cafile="%[1]s"), timeout=10).read().decode().strip())'
node -e 'require("https").get("https://allowed.test/node", {ca: require("fs").readFileSync("%[1]s")}, r => { let b = ""; r.on("data", d => b += d); r.on("end", () => console.log(b.trim())); }).on("error", e => console.log("node error", e.message))'
`, ca, w.denied.Addr.Addr()))
	if err != nil {
		t.Fatalf("firma run: %v\n%s\nsidecar:\n%s", err, out, w.Logs())
	}
	env, rest, _ := strings.Cut(out, "---\n")
	if strings.TrimSpace(env) != "" {
		t.Errorf("proxy variables reached the child:\n%s", env)
	}
	for _, want := range []string{"hello from allowed /run", "curl-allowed-ok", "curl-denied-refused", "hello from allowed /py", "hello from allowed /node"} {
		if !strings.Contains(rest, want) {
			t.Errorf("want %q in:\n%s", want, rest)
		}
	}
	if n := w.denied.Conns(); n != 0 {
		t.Errorf("denied upstream got %d connections", n)
	}
	// The records name the registered agent and a cgroup below the enforced parent that is not the
	// harness's static agent cgroup.
	ev := w.WaitEvent(t, "ALLOW from firma run", func(ev audit.Event) bool {
		return decisionFor("allowed.test")(ev) && ev.Envelope.Agent.Comm == "curl"
	})
	cg := ev.Envelope.Agent.Cgroup
	if !strings.HasPrefix(cg, w.Parent.Rel+"/") || strings.HasPrefix(cg, w.Agent.Rel) || ev.Envelope.Agent.AgentID != e2e.AgentID {
		t.Errorf("agent = %+v; want %s in a fresh cgroup below %s", ev.Envelope.Agent, e2e.AgentID, w.Parent.Rel)
	}
	// The run's cgroup is gone and its registration with it.
	if _, err := os.Stat(filepath.Join(filepath.Dir(w.Parent.Path), filepath.FromSlash(cg))); !os.IsNotExist(err) {
		t.Errorf("cgroup %s left behind (%v)", cg, err)
	}
}

func TestFirmaRunExitStatusAndSignals(t *testing.T) {
	w := newWorld(t, e2e.SidecarOptions{})
	_, err := w.firmaRun(t, "sh", "-c", "exit 3")
	if code := exitCode(err); code != 3 {
		t.Fatalf("exit code = %d, want 3 (%v)", code, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := w.firmaRunCmd(ctx, t, "sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var child string
	waitFor(t, "the child's cgroup", func() bool {
		entries, _ := os.ReadDir(w.Parent.Path)
		for _, e := range entries {
			if e.IsDir() && e.Name() != filepath.Base(w.Agent.Path) {
				child = filepath.Join(w.Parent.Path, e.Name())
				procs, _ := os.ReadFile(filepath.Join(child, "cgroup.procs"))
				return len(strings.TrimSpace(string(procs))) > 0
			}
		}
		return false
	})
	cmd.Process.Signal(syscall.SIGTERM)
	err = cmd.Wait()
	if code := exitCode(err); code != 128+int(syscall.SIGTERM) {
		t.Fatalf("after SIGTERM: exit code %d (%v), want 143", code, err)
	}
	if _, err := os.Stat(child); !os.IsNotExist(err) {
		t.Fatalf("cgroup %s left behind after SIGTERM", child)
	}
}

func TestFirmaRunWithoutSidecarLaunchesNothing(t *testing.T) {
	bin := e2e.Binary(t, "firma")
	marker := filepath.Join(t.TempDir(), "ran")
	cmd := exec.Command(bin, "run", "--sidecar", filepath.Join(t.TempDir(), "none.sock"), "--", "touch", marker)
	cmd.Env = testutil.CleanEnv()
	out, err := cmd.CombinedOutput()
	if exitCode(err) == 0 || !strings.Contains(string(out), "firma sidecar is not running") {
		t.Fatalf("exit %d: %s", exitCode(err), out)
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Fatal("the command ran without a sidecar")
	}
}

// From inside `firma run`, the ways out that an agent might try each fail, and the enforced parent
// is left as it was.
func TestFirmaRunEscapeAttempts(t *testing.T) {
	w := newWorld(t, e2e.SidecarOptions{})
	procsBefore, _ := os.ReadFile(filepath.Join(w.Agent.Path, "cgroup.procs"))
	script := fmt.Sprintf(`
try() { name=$1; shift; if "$@" >/dev/null 2>&1; then echo "$name ESCAPED"; else echo "$name blocked"; fi; }
try move-to-other-cgroup sh -c 'echo $$ > %[1]s/cgroup.procs'
try move-to-root-cgroup sh -c 'echo $$ > %[2]s/cgroup.procs'
try raw-socket python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)'
try control-socket python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); s.connect("%[3]s")'
try audit-log-content test -s %[4]s
try unshare-net-then-connect unshare -n python3 -c 'import socket; socket.create_connection(("%[5]s", 443), timeout=3)'
try user-ns-net-then-connect unshare -Urn python3 -c 'import socket; socket.create_connection(("%[5]s", 443), timeout=3)'
try direct-to-denied-address python3 -c 'import socket, ssl; c = ssl.create_default_context(cafile="%[6]s"); c.wrap_socket(socket.create_connection(("%[5]s", 443), timeout=3), server_hostname="denied.test").do_handshake()'
`, w.Agent.Path, filepath.Dir(w.Parent.Path), w.ControlSocket, w.AuditPath, w.denied.Addr.Addr(), w.ca.CertFile)
	out, err := w.firmaRun(t, "sh", "-c", script)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if strings.Contains(out, "ESCAPED") || strings.Count(out, "blocked") != 8 {
		t.Fatalf("escape attempts:\n%s", out)
	}
	procsAfter, _ := os.ReadFile(filepath.Join(w.Agent.Path, "cgroup.procs"))
	if string(procsAfter) != string(procsBefore) {
		t.Fatalf("the other cgroup changed: %q -> %q", procsBefore, procsAfter)
	}
	if n := w.denied.Conns(); n != 0 {
		t.Fatalf("denied upstream got %d connections", n)
	}
	if out, err := w.firmaRun(t, "true"); err != nil {
		t.Fatalf("the sidecar no longer serves runs after the attempts: %v %s", err, out)
	}
}
