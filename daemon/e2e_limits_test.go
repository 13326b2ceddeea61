//go:build linux

package daemon_test

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/daemon/dns"
	"github.com/openfirma/firma/daemon/judge"
	"github.com/openfirma/firma/internal/e2e"
	"github.com/openfirma/firma/internal/testutil"
)

// holdFlows opens n connections to allowed.test:443 at once, then, on each in turn, a TLS request
// (a connection the sidecar cuts may already fail to connect);
// it prints how many were answered and how many were cut, and holds every connection open until
// its stdin closes.
const holdFlows = `import socket, ssl, sys
n, ca = int(sys.argv[1]), sys.argv[2]
def dial():
    try:
        return socket.create_connection(("allowed.test", 443), timeout=10)
    except OSError:
        return None  # cut before connect returned
socks = [dial() for _ in range(n)]
ctx = ssl.create_default_context(cafile=ca)
ok = cut = 0
held = []
for s in socks:
    try:
        if s is None:
            raise OSError("cut")
        t = ctx.wrap_socket(s, server_hostname="allowed.test")
        t.sendall(b"GET /limits HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
        if t.recv(12).startswith(b"HTTP/1.1 200"):
            ok += 1
            held.append(t)
        else:
            cut += 1
    except (OSError, ssl.SSLError):
        cut += 1
print(ok, cut, flush=True)
sys.stdin.read()
`

var limitRecord = regexp.MustCompile(`^flow limit: concurrent flows \(max_flows 4\): (\d+) connection\(s\) refused`)

// TestFlowLimits: an agent that opens more flows than [sidecar.limits] max_flows gets the excess
// cut at once, the audit log counts every one under its pid, and another agent — with more room of
// its own in [sidecar.limits.agents] — opens as many as it likes meanwhile.
func TestFlowLimits(t *testing.T) {
	w := newWorld(t, e2e.SidecarOptions{
		Policies: map[string]string{"test.cedar": e2e.TestPolicy, "other.cedar": `permit (
    principal == Firma::Agent::"other-agent",
    action == Firma::Action::"communication.external.send",
    resource
) when { resource has "host" && resource.host == "allowed.test" };`},
		ExtraTOML: "[sidecar.limits]\nmax_flows = 4\n\n[sidecar.limits.agents.other-agent]\nmax_flows = 64\n",
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	greedy := testutil.StartPiped(t, w.Command(ctx, t, w.Agent, "python3", "-c", holdFlows, "10", w.ca.CertFile), nil)
	if got := greedy.Line(); got != "4 6" {
		t.Fatalf("the greedy agent's 10 flows: %q answered/cut, want \"4 6\"\n%s\n%s", got, greedy.Stderr.String(), w.Logs())
	}

	// Meanwhile another agent opens 10 at once, all answered.
	other := w.FirmaRun(ctx, t, []string{"--agent-id", "other-agent"}, "python3", "-c", holdFlows, "10", w.ca.CertFile)
	other.Stdin = strings.NewReader("")
	out, err := other.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "10 0" {
		t.Fatalf("the other agent, while the greedy one is at its limit: %v: %q", err, out)
	}
	greedy.Stdin.Close()
	greedy.Cmd.Wait()

	// Every cut flow is counted, in records that each say how many they stand for, under the greedy
	// agent's pid.
	pid := greedy.Cmd.Process.Pid
	deadline := time.Now().Add(10 * time.Second)
	for {
		counted, records := 0, 0
		for _, ev := range w.Decisions(t) {
			if m := limitRecord.FindStringSubmatch(ev.Decision.Reason); m != nil && ev.Envelope.Agent.PID == pid {
				k, _ := strconv.Atoi(m[1])
				counted += k
				records++
				if ev.Decision.Outcome != "DENY" || ev.Envelope.Agent.AgentID != e2e.AgentID {
					t.Errorf("limit record: %+v %+v", ev.Envelope.Agent, ev.Decision)
				}
			}
		}
		if counted == 6 {
			break // at most one record a second: judge's TestLimiterRecords holds it to that
		}
		if counted > 6 || time.Now().After(deadline) {
			t.Fatalf("limit records count %d refusals in %d records, want 6\n%s", counted, records, w.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, ev := range w.Decisions(t) {
		if ev.Envelope.Agent.AgentID == "other-agent" && strings.HasPrefix(ev.Decision.Reason, "flow limit") {
			t.Errorf("the other agent was limited: %+v", ev.Decision)
		}
	}
	if n := countAllowed(t, w, "other-agent"); n != 10 {
		t.Errorf("%d allowed flows for the other agent, want 10", n)
	}
}

func countAllowed(t *testing.T, w *world, agent string) int {
	n := 0
	for _, ev := range w.Decisions(t) {
		if ev.Envelope.Agent.AgentID == agent && ev.Decision.Outcome == "ALLOW" && ev.Envelope.Transport.Mode == "connect" {
			n++
		}
	}
	return n
}

// refusalFlood makes n refusals of two kinds the sidecar itself must record: TLS connections whose
// hello does not parse, and DNS over TCP that is not DNS. Both go to an address of 127.0.0.0/8:
// redirected like any other, and nowhere else if they were not.
const refusalFlood = `import socket, sys
n = int(sys.argv[1])
for port, payload in ((443, b"\x16\x03\x01\x00\x05hello"), (53, b"\x00\x05hello")):
    for _ in range(n):
        s = socket.create_connection(("127.3.3.3", port), timeout=10)
        s.sendall(payload)
        try:
            s.recv(64)
        except OSError:
            pass
        s.close()
print("done", flush=True)
`

// TestRefusalFloodIsRateLimited: a flood of refusals the sidecar makes (unparsable TLS hellos,
// DNS that is not DNS) writes at most refusal_burst records a class, plus one a second, and counts
// the rest in "suppressed" records — every refusal is in one or the other. An allowed flow right
// after the flood has its records all the same.
func TestRefusalFloodIsRateLimited(t *testing.T) {
	const n, burst = 150, 10
	w := newWorld(t, e2e.SidecarOptions{AuditTOML: fmt.Sprintf("refusal_rate = 1.0\nrefusal_burst = %d\nrefusal_window = \"1s\"", burst)})
	start := time.Now()
	if out, err := w.Run(t, "python3", "-c", refusalFlood, fmt.Sprint(n)); err != nil || strings.TrimSpace(out) != "done" {
		t.Fatalf("flood: %v: %s", err, out)
	}
	elapsed := time.Since(start)
	if out, err := w.curl(t, "https://allowed.test/after-the-flood"); err != nil || out != "hello from allowed /after-the-flood\n" {
		t.Fatalf("after the flood: %v %q", err, out)
	}

	classes := map[string]string{judge.ClassRefused: judge.ReasonBadHello, judge.ClassDNS: dns.ReasonMalformed}
	deadline := time.Now().Add(15 * time.Second)
	for {
		written, suppressed := map[string]int{}, map[string]int64{}
		allowed := false
		for _, ev := range w.Events(t) {
			switch {
			case ev.Kind == audit.KindLog && ev.Log.Event == audit.LogSuppressed && ev.Log.AgentID == e2e.AgentID:
				suppressed[ev.Log.Class] += ev.Log.Suppressed
			case ev.Kind == audit.KindDecision && ev.Decision.Outcome == "DENY":
				for class, reason := range classes {
					if ev.Decision.Reason == reason {
						written[class]++
					}
				}
			case ev.Kind == audit.KindDecision && ev.Decision.Outcome == "ALLOW" && ev.Envelope.Intent.Resource.Host == "allowed.test:443":
				allowed = true
			}
		}
		done := allowed
		for class := range classes {
			done = done && int64(written[class])+suppressed[class] == n
		}
		if done {
			for class := range classes {
				// The bucket: the burst, one a second after it, and one for rounding.
				if most := burst + int(elapsed.Seconds()) + 1; written[class] > most {
					t.Errorf("%s: %d records written in %v, want at most %d", class, written[class], elapsed, most)
				}
			}
			t.Logf("written %v, suppressed %v, in %v", written, suppressed, elapsed)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %d refusals a class: written %v, suppressed %v, allowed record %v", n, written, suppressed, allowed)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
