package runner_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/internal/e2e"
	"github.com/openfirma/firma/internal/testutil"
)

// sidecarPID finds the real sidecar's process by the config it was started with.
func sidecarPID(t *testing.T, s *e2e.Sidecar) int {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if strings.Contains(string(cmdline), "sidecar\x00-c\x00"+s.ConfigPath) {
			return pid
		}
	}
	t.Fatalf("no sidecar process with config %s", s.ConfigPath)
	return 0
}

// TestRunSandboxWithTheRealSidecar runs the escape program under firma run against the real
// sidecar, aiming at the sidecar's own process, and checks that the audit records still name the
// agent's process by the pid the host knows it by.
func TestRunSandboxWithTheRealSidecar(t *testing.T) {
	testutil.RequireRoot(t)
	ca := testutil.NewCA(t, "firma runner e2e upstream CA")
	up := testutil.NewHTTPSUpstream(t, "allowed", netip.AddrPortFrom(testutil.LoopbackAddr(t), 443), ca, "allowed.test")
	s := e2e.NewSidecar(t, e2e.SidecarOptions{
		Resolve:    map[string]string{"allowed.test": up.Addr.Addr().String()},
		UpstreamCA: ca.CertFile,
	})
	pid := sidecarPID(t, s)
	firmaRun := func(ctx context.Context, args ...string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, s.Bin, append([]string{"run", "--sidecar", s.ControlSocket, "--agent-id", e2e.AgentID}, args...)...)
		cmd.Env = testutil.CleanEnv()
		cmd.Dir = "/"
		return cmd
	}

	for _, user := range []string{"", "nobody"} {
		t.Run("escape as "+map[string]string{"": "root", "nobody": "nobody"}[user], func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			args := []string{"--", escapeBin, "-outside-pid", strconv.Itoa(pid)}
			if user != "" {
				args = append([]string{"--user", user}, args...)
			}
			var stdout, stderr bytes.Buffer
			cmd := firmaRun(ctx, args...)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("%v\n%s", err, stderr.String())
			}
			var r escapeReport
			if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
				t.Fatalf("%q: %v", stdout.String(), err)
			}
			for p, want := range map[string]string{"signal-outside": "ESRCH", "pidfd-open-outside": "ESRCH", "ptrace-outside": "EPERM",
				"socket-packet": "EAFNOSUPPORT", "socket-vsock": "EAFNOSUPPORT", "socket-netlink": "EAFNOSUPPORT", "bpf": "EPERM"} {
				if got := r.Probes[p]; got.OK || got.Err != want {
					t.Errorf("%s against the sidecar (pid %d): %+v, want %s", p, pid, got, want)
				}
			}
		})
	}
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("the sidecar is gone after the attempts: %v\n%s", err, s.Logs())
	}

	// A connection held open from inside firma run: its audit record names the process by its
	// host pid, which is in the run's cgroup and, seen from the host, in a PID namespace of its own.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := firmaRun(ctx, "--", "python3", "-c", fmt.Sprintf(`import socket, ssl, sys
c = ssl.create_default_context(cafile=%q)
s = c.wrap_socket(socket.create_connection(("allowed.test", 443), timeout=10), server_hostname="allowed.test")
print("connected", flush=True)
sys.stdin.read()
s.close()`, ca.CertFile))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	startUntil(t, cmd, "connected")
	defer cmd.Wait()
	defer stdin.Close()
	ev := s.WaitEvent(t, "for python3's connection to allowed.test", func(ev audit.Event) bool {
		return ev.Kind == audit.KindDecision && ev.Envelope != nil && ev.Envelope.Agent.Comm == "python3" &&
			strings.HasPrefix(ev.Envelope.Intent.Resource.Host, "allowed.test")
	})
	agent := ev.Envelope.Agent
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", agent.PID))
	if err != nil {
		t.Fatalf("the audit record's pid %d is not a live host process: %v", agent.PID, err)
	}
	nspid := strings.Fields(lineValue(string(status), "NSpid:"))
	if len(nspid) != 2 || nspid[0] != strconv.Itoa(agent.PID) {
		t.Errorf("pid %d: NSpid %v, want the host pid then the pid in firma run's namespace", agent.PID, nspid)
	}
	cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", agent.PID))
	if !strings.Contains(string(cg), "::"+agent.Cgroup+"\n") || !strings.HasPrefix(agent.Cgroup, s.Parent.Rel+"/firma-run-") {
		t.Errorf("pid %d is in %q; the record says %s", agent.PID, cg, agent.Cgroup)
	}
	if ev.Decision == nil || ev.Decision.Outcome != "ALLOW" || up.Conns() == 0 {
		t.Errorf("decision %+v, upstream connections %d", ev.Decision, up.Conns())
	}
}
