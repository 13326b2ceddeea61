//go:build linux

package daemon_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/openfirma/firma/authority"
	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/internal/e2e"
	"github.com/openfirma/firma/internal/testutil"
)

// The fleet (issue 13): two authority replicas over TLS that authenticate their sidecars, three
// real sidecars (own cgroups and pin dirs) that move between the replicas as one dies and the other
// comes back, a policy edit and a revocation reaching all three, and a sidecar without
// credentials refused.

// fleetLocalPolicy is each sidecar's own [sidecar.policy]: it forbids everything, so that an
// ALLOW can only come from the authority's bundle.
const fleetLocalPolicy = `@id("local-forbid-all")
forbid (principal, action, resource);
`

// fleetEdit forbids the probe's host; it is added, then removed, on the authority.
const fleetEdit = `@id("fleet-edit")
forbid (principal, action, resource)
when { resource has "host" && resource.host == "allowed.test" };
`

// fleetMember is one sidecar of the fleet.
type fleetMember struct {
	*e2e.Sidecar
	name string
}

// probe runs curl https://allowed.test/probe in the member's agent cgroup (by the upstream's
// address, so that no lookup is judged) and returns the decision record of that connection.
func (m *fleetMember) probe(t *testing.T, upstream *testutil.Upstream, ca *testutil.CA) (audit.Event, string) {
	t.Helper()
	before := len(m.Decisions(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, _ := m.Agent.Command(ctx, t, "curl", "-sS", "--max-time", "10", "--cacert", ca.CertFile,
		"--resolve", "allowed.test:443:"+upstream.Addr.Addr().String(), "https://allowed.test/probe").CombinedOutput()
	for _, d := range slices.Backward(m.Decisions(t)[before:]) {
		if decisionFor("allowed.test")(d) {
			return d, string(out)
		}
	}
	t.Fatalf("%s: no decision record for the probe (curl: %q)\nsidecar:\n%s", m.name, out, m.Logs())
	return audit.Event{}, ""
}

// awaitAll probes every member until its decision matches, within a minute.
func awaitAll(t *testing.T, what string, members []*fleetMember, upstream *testutil.Upstream, ca *testutil.CA, match func(audit.Event) bool, auths ...*e2e.Authority) {
	t.Helper()
	start := time.Now()
	for _, m := range members {
		for {
			ev, out := m.probe(t, upstream, ca)
			if match(ev) {
				break
			}
			if time.Since(start) > time.Minute {
				var logs strings.Builder
				for _, a := range auths {
					logs.WriteString(a.Logs())
				}
				t.Fatalf("%s: %s still decided %+v (curl %q)\nsidecar:\n%s\nauthorities:\n%s", what, m.name, ev.Decision, out, m.Logs(), logs.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	t.Logf("%s: all %d sidecars within %s", what, len(members), time.Since(start).Round(time.Millisecond))
}

func TestFleetReplicasOverTLS(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "curl")
	ca := testutil.NewCA(t, "firma fleet upstream CA")
	upstream := testutil.NewHTTPSUpstream(t, "allowed", netip.AddrPortFrom(testutil.LoopbackAddr(t), 443), ca, "allowed.test")

	a1 := e2e.NewAuthority(t, e2e.AuthorityOptions{TLS: true, Sidecars: []string{"s1", "s2", "s3"}})
	a2 := a1.Replica(t)
	capFile := filepath.Join(t.TempDir(), "capability-test-agent.toml")
	tokenID := a1.Issue(t, e2e.AgentID, "*.test*", 3600, capFile)

	// s1 by certificate, s2 by token, s3 by both and preferring the second replica.
	specs := []struct {
		cred  e2e.Credential
		order []*e2e.Authority
	}{
		{e2e.Credential{Sidecar: "s1", Cert: true}, []*e2e.Authority{a1, a2}},
		{e2e.Credential{Sidecar: "s2", Token: true}, []*e2e.Authority{a1, a2}},
		{e2e.Credential{Sidecar: "s3", Cert: true, Token: true}, []*e2e.Authority{a2, a1}},
	}
	opts := e2e.SidecarOptions{
		NoAgent:    true,
		Policies:   map[string]string{"local.cedar": fleetLocalPolicy},
		Resolve:    map[string]string{"allowed.test": upstream.Addr.Addr().String()},
		UpstreamCA: ca.CertFile,
	}
	var fleet []*fleetMember
	for _, sp := range specs {
		m := &fleetMember{Sidecar: e2e.PrepareSidecar(t, opts), name: sp.cred.Sidecar}
		m.Reconfigure(t, e2e.AgentTOML(m.Agent, e2e.AgentID, capFile)+"\n"+
			e2e.FleetTOML(filepath.Join(m.Dir, "authority-cache"), sp.cred, sp.order...))
		fleet = append(fleet, m)
	}
	allowed := decidedAs("ALLOW", "")
	awaitAll(t, "first bundle", fleet, upstream, ca, allowed, a1, a2)
	for _, m := range fleet {
		ev, _ := m.probe(t, upstream, ca)
		if ev.Capability == nil || ev.Capability.TokenID != tokenID || !contains(ev.Decision.MatchedPolicies, "permit-test-hosts") {
			t.Errorf("%s: %+v %+v, want the bundle's permit and token %s", m.name, ev.Decision, ev.Capability, tokenID)
		}
	}

	// The first replica dies: s1 and s2 move to the second, which serves the policy edit.
	a1.Kill(t)
	a1.WritePolicy(t, "edit.cedar", fleetEdit)
	awaitAll(t, "policy edit with the first replica down", fleet, upstream, ca, func(ev audit.Event) bool {
		return decidedAs("DENY", "forbidden by policy")(ev) && contains(ev.Decision.MatchedPolicies, "fleet-edit")
	}, a2)
	for _, m := range fleet[:2] {
		if !strings.Contains(m.Logs(), "failing over to the next authority url") {
			t.Errorf("%s did not log its failover:\n%s", m.name, m.Logs())
		}
	}

	// It comes back and the second dies: s3 moves, and s1 and s2 with it; the edit is undone.
	a1.Start(t)
	a2.Kill(t)
	if err := os.Remove(filepath.Join(a1.PolicyDir, "edit.cedar")); err != nil {
		t.Fatal(err)
	}
	awaitAll(t, "edit undone with the second replica down", fleet, upstream, ca, allowed, a1)
	if !strings.Contains(fleet[2].Logs(), "failing over to the next authority url") {
		t.Errorf("s3 did not log its failover:\n%s", fleet[2].Logs())
	}

	// A revocation, with `firma authority revoke` as an operator runs it, reaches everyone.
	a1.Revoke(t, tokenID, "e2e: fleet revocation")
	revoked := decidedAs("DENY", "capability revoked")
	awaitAll(t, "revocation", fleet, upstream, ca, revoked, a1)
	conns := upstream.Conns()
	for _, m := range fleet {
		if ev, out := m.probe(t, upstream, ca); !revoked(ev) {
			t.Errorf("%s after the revocation: %+v (curl %q)", m.name, ev.Decision, out)
		}
	}
	if n := upstream.Conns() - conns; n != 0 {
		t.Errorf("the upstream got %d connections with a revoked capability", n)
	}

	// Moving between replicas re-applied nothing and rejected nothing: each sidecar adopted the
	// first bundle, the edit and the return to the first — three adoptions, whatever the moves.
	for _, m := range fleet {
		logs := m.Logs()
		if n := strings.Count(logs, "policy bundle adopted"); n != 3 {
			t.Errorf("%s adopted %d bundles, want 3:\n%s", m.name, n, logs)
		}
		if strings.Contains(logs, "authority answer rejected") || strings.Contains(logs, "refused this sidecar") {
			t.Errorf("%s rejected an answer or was refused:\n%s", m.name, logs)
		}
	}

	// A sidecar without credentials gets nothing: the authority refuses and says so, and the
	// sidecar, without a bundle, denies as stale.
	stranger := &fleetMember{Sidecar: e2e.PrepareSidecar(t, opts), name: "stranger"}
	stranger.Reconfigure(t, e2e.AgentTOML(stranger.Agent, e2e.AgentID, capFile)+"\n"+
		e2e.FleetTOML(filepath.Join(stranger.Dir, "authority-cache"), e2e.Credential{}, a1))
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(stranger.Logs(), "the authority refused this sidecar's credentials") {
		if time.Now().After(deadline) {
			t.Fatalf("the unauthenticated sidecar did not report its refusal:\n%s", stranger.Logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if ev, out := stranger.probe(t, upstream, ca); !decidedAs("DENY", "policy bundle stale")(ev) {
		t.Errorf("the unauthenticated sidecar decided %+v (curl %q)", ev.Decision, out)
	}
	if !strings.Contains(a1.Logs(), "request refused: not an authenticated sidecar") {
		t.Errorf("the authority did not log the refusal:\n%s", a1.Logs())
	}

	// curl, as any other client: 401 without credentials, a TLS failure with a certificate from
	// another CA, 200 with a sidecar's token.
	out, _ := exec.Command("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert",
		filepath.Join(a1.TLSDir, authority.TLSCACert), a1.URL()+authority.PathBundle).Output()
	if string(out) != "401" {
		t.Errorf("curl without credentials: %q, want 401", out)
	}
	otherDir := filepath.Join(t.TempDir(), "other-ca")
	a1.Firma(t, "authority", "init-tls", "--dir", otherDir, "--hosts", "127.0.0.1", "--sidecars", "s1")
	cert, key, _ := authority.SidecarFiles(otherDir, "s1")
	if out, err := exec.Command("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", filepath.Join(a1.TLSDir, authority.TLSCACert),
		"--cert", cert, "--key", key, a1.URL()+authority.PathBundle).CombinedOutput(); err == nil {
		t.Errorf("curl with a certificate from another CA got an answer: %s", out)
	}
	_, _, tokenFile := authority.SidecarFiles(a1.TLSDir, "s2")
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	out, _ = exec.Command("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", filepath.Join(a1.TLSDir, authority.TLSCACert),
		"-H", fmt.Sprintf("Authorization: Bearer %s", strings.TrimSpace(string(token))), a1.URL()+authority.PathBundle).Output()
	if string(out) != "200" {
		t.Errorf("curl with s2's token: %q, want 200", out)
	}
}
