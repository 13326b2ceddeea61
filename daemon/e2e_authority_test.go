//go:build linux

package daemon_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/internal/e2e"
	"github.com/openfirma/firma/internal/testutil"
)

// The authority and the sidecar as separate processes (issue 5): the authority serves the policy
// bundle and revocations, the sidecar follows it and runs Stage 1 on every decision.

// authorityPolicy is the bundle the authority serves: the harness's policy, plus allowed.test for
// other-agent, so that only Stage 1 can refuse other-agent.
const authorityPolicy = e2e.TestPolicy + `
@id("permit-other-agent")
permit (
    principal == Firma::Agent::"other-agent",
    action == Firma::Action::"communication.external.send",
    resource
) when {
    resource has "host" && resource.host == "allowed.test"
};
`

// trustLocalPolicy is the sidecar's own [sidecar.policy] dir. It forbids everything, so an ALLOW
// can only come from the authority's bundle.
const trustLocalPolicy = `@id("local-forbid-all")
forbid (principal, action, resource);
`

// trustScope is the capability's resource scope: every host under .test, any port, any path.
const trustScope = "*.test*"

// trustWorld is a world whose sidecar follows an authority, with a capability issued for the
// harness's agent.
type trustWorld struct {
	*world
	auth     *e2e.Authority
	capFile  string // the capability issued for e2e.AgentID
	tokenID  string
	cacheDir string
}

// newTrustWorld starts an authority with bundle_ttl_seconds ttl and a sidecar that follows it.
// agents returns the [[sidecar.agents]] entries, once the sidecar's cgroups exist; nil gives the
// harness's agent the issued capability.
func newTrustWorld(t *testing.T, ttl int, agents func(tw *trustWorld) string) *trustWorld {
	t.Helper()
	testutil.RequireRoot(t)
	tw := &trustWorld{
		auth: e2e.NewAuthority(t, e2e.AuthorityOptions{
			Policies:         map[string]string{"firma.cedar": authorityPolicy},
			BundleTTLSeconds: ttl,
		}),
		cacheDir: filepath.Join(t.TempDir(), "authority-cache"),
	}
	tw.capFile = filepath.Join(t.TempDir(), "capability-test-agent.toml")
	tw.tokenID = tw.auth.Issue(t, e2e.AgentID, trustScope, 3600, tw.capFile)
	tw.world = newWorld(t, e2e.SidecarOptions{NoAgent: true, Policies: map[string]string{"local.cedar": trustLocalPolicy}})
	if agents == nil {
		agents = func(tw *trustWorld) string { return e2e.AgentTOML(tw.Agent, e2e.AgentID, tw.capFile) }
	}
	tw.Reconfigure(t, agents(tw)+"\n"+tw.auth.SidecarTOML(tw.cacheDir))
	return tw
}

// probe runs curl https://allowed.test/probe inside cg, dialing the upstream's address (so no DNS
// lookup is judged), and returns the decision record of that connection with curl's output.
func (tw *trustWorld) probe(t *testing.T, cg *testutil.Cgroup) (audit.Event, string, error) {
	t.Helper()
	before := len(tw.Decisions(t))
	out, err := tw.curlIn(t, cg, "--resolve", "allowed.test:443:"+tw.allowed.Addr.Addr().String(), "https://allowed.test/probe")
	// The sidecar appends the decision record before it forwards or refuses anything, so it is on
	// disk by the time curl returns.
	var ev *audit.Event
	for _, d := range tw.Decisions(t)[before:] {
		if decisionFor("allowed.test")(d) {
			ev = &d
		}
	}
	if ev == nil {
		t.Fatalf("no decision record for the probe (curl: %v %q)\naudit log:\n%s\nsidecar:\n%s",
			err, out, dumpDecisions(tw.Events(t)), tw.Logs())
	}
	return *ev, out, err
}

// curlIn runs curl inside cg, trusting only the test CA.
func (tw *trustWorld) curlIn(t *testing.T, cg *testutil.Cgroup, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	base := []string{"-sS", "--max-time", "10", "--cacert", tw.ca.CertFile}
	out, err := cg.Command(ctx, t, "curl", append(base, args...)...).CombinedOutput()
	return string(out), err
}

// probeUntil probes from cg until match holds for the probe's decision or deadline passes, and
// returns the matching record.
func (tw *trustWorld) probeUntil(t *testing.T, cg *testutil.Cgroup, deadline time.Time, what string, match func(audit.Event) bool) audit.Event {
	t.Helper()
	for {
		ev, _, _ := tw.probe(t, cg)
		if match(ev) {
			return ev
		}
		if time.Now().After(deadline) {
			t.Fatalf("no decision %s by the deadline; last: %+v\nsidecar:\n%s\nauthority:\n%s",
				what, ev.Decision, tw.Logs(), tw.auth.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitAllowed waits (up to 10 s) for the first bundle to arrive and the probe from cg to be allowed.
func (tw *trustWorld) waitAllowed(t *testing.T, cg *testutil.Cgroup) audit.Event {
	t.Helper()
	return tw.probeUntil(t, cg, time.Now().Add(10*time.Second), "ALLOW", decidedAs("ALLOW", ""))
}

// decidedAs matches a decision by outcome and (when non-empty) a reason substring.
func decidedAs(want, reason string) func(audit.Event) bool {
	return func(ev audit.Event) bool {
		return ev.Decision != nil && ev.Decision.Outcome == want && strings.Contains(ev.Decision.Reason, reason)
	}
}

func TestAuthorityAgentMismatch(t *testing.T) {
	var other *testutil.Cgroup
	tw := newTrustWorld(t, 60, func(tw *trustWorld) string {
		// A second agent, holding the capability issued for test-agent.
		other = testutil.NewCgroup(t, tw.Parent)
		return e2e.AgentTOML(tw.Agent, e2e.AgentID, tw.capFile) + "\n" + e2e.AgentTOML(other, "other-agent", tw.capFile)
	})
	if !strings.Contains(tw.Logs(), "capability is for another agent") {
		t.Errorf("the sidecar did not warn about other-agent's capability:\n%s", tw.Logs())
	}

	ev := tw.waitAllowed(t, tw.Agent)
	if ev.Capability == nil || ev.Capability.TokenID != tw.tokenID {
		t.Errorf("capability = %+v, want token_id %s", ev.Capability, tw.tokenID)
	}
	if !contains(ev.Decision.MatchedPolicies, "permit-test-hosts") {
		t.Errorf("matched_policies = %v, want the bundle's permit-test-hosts", ev.Decision.MatchedPolicies)
	}
	if ev.Envelope.Agent.AgentID != e2e.AgentID {
		t.Errorf("agent_id = %q", ev.Envelope.Agent.AgentID)
	}

	conns := tw.allowed.Conns()
	ev, out, err := tw.probe(t, other)
	if err == nil {
		t.Fatalf("other-agent reached allowed.test with test-agent's capability: %q", out)
	}
	if !decidedAs("DENY", "capability agent mismatch")(ev) {
		t.Fatalf("other-agent's decision = %+v, want DENY for capability agent mismatch", ev.Decision)
	}
	if ev.Envelope.Agent.AgentID != "other-agent" || ev.Capability != nil {
		t.Errorf("agent_id = %q, capability = %+v; want other-agent and no token", ev.Envelope.Agent.AgentID, ev.Capability)
	}
	if n := tw.allowed.Conns() - conns; n != 0 {
		t.Errorf("the upstream got %d connections from other-agent", n)
	}

	// By name, as an agent would: the lookup goes through Stage 1 too.
	if out, err := tw.curlIn(t, tw.Agent, "https://allowed.test/byname"); err != nil || out != "hello from allowed /byname\n" {
		t.Fatalf("test-agent by name: %v %q", err, out)
	}
	if out, err := tw.curlIn(t, other, "https://allowed.test/byname"); err == nil || !strings.Contains(out, "resolve") {
		t.Fatalf("other-agent resolved allowed.test with test-agent's capability: %v %q", err, out)
	}
	lookup := tw.WaitEvent(t, "for other-agent's lookup", func(ev audit.Event) bool {
		return ev.Envelope != nil && ev.Envelope.Transport.Mode == "dns" && ev.Envelope.Agent.AgentID == "other-agent"
	})
	if !decidedAs("DENY", "capability agent mismatch")(lookup) {
		t.Errorf("other-agent's lookup: %+v, want DENY for capability agent mismatch", lookup.Decision)
	}
}

func TestAuthorityRevocationWithinTwoSeconds(t *testing.T) {
	tw := newTrustWorld(t, 60, nil)
	tw.waitAllowed(t, tw.Agent)

	tw.auth.Revoke(t, tw.tokenID, "e2e: laptop lost")
	revoked := time.Now()
	ev := tw.probeUntil(t, tw.Agent, revoked.Add(2*time.Second), "DENY for capability revoked", decidedAs("DENY", "capability revoked"))
	took := ev.Time.Sub(revoked)
	t.Logf("revocation denied a connection %s after the revoke command returned", took)
	if took > 2*time.Second {
		t.Errorf("revocation took %s, want at most 2s", took)
	}

	conns := tw.allowed.Conns()
	if ev, out, err := tw.probe(t, tw.Agent); err == nil || !decidedAs("DENY", "capability revoked")(ev) {
		t.Fatalf("after the revocation: %v %q, decision %+v", err, out, ev.Decision)
	}
	if n := tw.allowed.Conns() - conns; n != 0 {
		t.Errorf("the upstream got %d connections with a revoked capability", n)
	}
}

func TestAuthorityStoppedCacheThenStale(t *testing.T) {
	const ttl = 5 * time.Second
	tw := newTrustWorld(t, int(ttl/time.Second), nil)
	tw.waitAllowed(t, tw.Agent)

	tw.auth.Kill(t)
	killed := time.Now()
	if ev, out, err := tw.probe(t, tw.Agent); err != nil || !decidedAs("ALLOW", "")(ev) {
		t.Fatalf("right after the authority died: %v %q, decision %+v", err, out, ev.Decision)
	}

	// A sidecar restarted while the authority is down enforces the cached bundle (the local policy
	// would forbid everything) until the cached deadline, which the restart does not extend.
	time.Sleep(time.Until(killed.Add(2 * time.Second)))
	tw.Stop(t)
	tw.Start(t)
	if !strings.Contains(tw.Logs(), "authority cache loaded") {
		t.Errorf("restarted sidecar did not load the authority cache:\n%s", tw.Logs())
	}
	ev, out, err := tw.probe(t, tw.Agent)
	restarted := ev.Time.Sub(killed)
	if err != nil || !decidedAs("ALLOW", "")(ev) || !contains(ev.Decision.MatchedPolicies, "permit-test-hosts") {
		t.Fatalf("restarted sidecar %s after the authority died: %v %q, decision %+v", restarted, err, out, ev.Decision)
	}
	t.Logf("restarted sidecar allowed from the cache %s after the authority died", restarted)

	ev = tw.probeUntil(t, tw.Agent, killed.Add(ttl+time.Second), "DENY for a stale bundle", decidedAs("DENY", "policy bundle stale"))
	flipped := ev.Time.Sub(killed)
	t.Logf("stale %s after the authority died (bundle_ttl_seconds = %d)", flipped, int(ttl/time.Second))
	// The last heartbeat came at most a long poll (a third of the TTL) before the kill.
	if flipped < ttl/2 {
		t.Errorf("failed closed after %s, before the cached bundle's TTL (%s) was near", flipped, ttl)
	}
	if ev.Decision.Reason != "policy bundle stale" {
		t.Errorf("reason = %q", ev.Decision.Reason)
	}
	conns := tw.allowed.Conns()
	if ev, out, err := tw.probe(t, tw.Agent); err == nil || !decidedAs("DENY", "policy bundle stale")(ev) {
		t.Fatalf("stale: %v %q, decision %+v", err, out, ev.Decision)
	}
	if n := tw.allowed.Conns() - conns; n != 0 {
		t.Errorf("the upstream got %d connections while the bundle was stale", n)
	}

	// The authority comes back: the sidecar reconnects (its backoff is at most about 5 s) and allows
	// again.
	tw.auth.Start(t)
	back := time.Now()
	ev = tw.probeUntil(t, tw.Agent, back.Add(8*time.Second), "ALLOW after the authority came back", decidedAs("ALLOW", ""))
	t.Logf("fresh again %s after the authority came back", ev.Time.Sub(back))
}

func TestAuthorityPolicyEditWithinTwoSeconds(t *testing.T) {
	tw := newTrustWorld(t, 60, nil)
	tw.waitAllowed(t, tw.Agent)

	tw.auth.WritePolicy(t, "edit.cedar", `@id("forbid-allowed-edit")
forbid (principal, action, resource)
when { resource has "host" && resource.host == "allowed.test" };
`)
	edited := time.Now()
	ev := tw.probeUntil(t, tw.Agent, edited.Add(2*time.Second), "DENY by the edited policy", func(ev audit.Event) bool {
		return decidedAs("DENY", "forbidden by policy")(ev) && contains(ev.Decision.MatchedPolicies, "forbid-allowed-edit")
	})
	took := ev.Time.Sub(edited)
	t.Logf("policy edit denied a connection %s after the file was written", took)
	if took > 2*time.Second {
		t.Errorf("policy edit took %s, want at most 2s", took)
	}
}

func TestAuthorityCapabilityMissing(t *testing.T) {
	tw := newTrustWorld(t, 60, func(tw *trustWorld) string { return e2e.AgentTOML(tw.Agent, e2e.AgentID, "") })
	// Until the first bundle arrives the sidecar denies as stale; then Stage 1 refuses.
	ev := tw.probeUntil(t, tw.Agent, time.Now().Add(10*time.Second), "DENY for capability missing", decidedAs("DENY", "capability missing"))
	if ev.Capability != nil {
		t.Errorf("capability = %+v on a deny for a missing capability", ev.Capability)
	}
	if n := tw.allowed.Conns(); n != 0 {
		t.Errorf("the upstream got %d connections from an agent without a capability", n)
	}
}

// dumpDecisions renders decision records one a line, for failure messages.
func dumpDecisions(evs []audit.Event) string {
	var b strings.Builder
	for _, ev := range evs {
		if ev.Decision != nil && ev.Envelope != nil {
			b.WriteString(ev.Envelope.Agent.AgentID + " " + ev.Envelope.Intent.Resource.Host + " " +
				ev.Decision.Outcome + " " + ev.Decision.Reason + "\n")
		}
	}
	return b.String()
}

// firma run refuses to launch with a revoked capability: the sidecar's registration fails and the
// agent never runs.
func TestFirmaRunRefusesRevokedCapability(t *testing.T) {
	tw := newTrustWorld(t, 60, nil)
	tw.waitAllowed(t, tw.Agent)
	tw.auth.Revoke(t, tw.tokenID, "e2e: revoked before launch")
	tw.probeUntil(t, tw.Agent, time.Now().Add(5*time.Second), "the revocation to reach the sidecar", decidedAs("DENY", "capability revoked"))

	marker := filepath.Join(t.TempDir(), "ran")
	cmd := exec.Command(tw.Bin, "run", "--sidecar", tw.ControlSocket, "--capability-file", tw.capFile, "--profile", "generic",
		"--", "sh", "-c", "echo > "+marker)
	cmd.Env = testutil.CleanEnv()
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "capability revoked") {
		t.Fatalf("firma run with a revoked capability: %v\n%s", err, out)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the agent ran")
	}
}
