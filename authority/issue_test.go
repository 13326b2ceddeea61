package authority

import (
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// guideIssuance is .local/issuance/issuance.cedar from the guide, as written.
const guideIssuance = `permit (
principal == Firma::Agent::"claude-code",
action == Firma::Action::"communication.external.send",
resource
);
`

func newTestIssuer(t *testing.T, policy string, maxTTL time.Duration) (*Issuer, *Key) {
	t.Helper()
	key, _, _ := newTestKey(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "issuance.cedar"), []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	is, err := NewIssuer(key, dir, nil, maxTTL)
	if err != nil {
		t.Fatal(err)
	}
	return is, key
}

func guideRequest() IssueRequest {
	return IssueRequest{
		AgentID:       "claude-code",
		SessionID:     "0b6f0d1e-8a53-4a56-9c1c-2a1e5b7d9f00",
		Actions:       []string{"communication.external.send"},
		ResourceScope: "*.anthropic.com*",
		TTL:           28800 * time.Second,
	}
}

func TestIssuePermitted(t *testing.T) {
	is, key := newTestIssuer(t, guideIssuance, 28800*time.Second)
	issued, err := is.Issue(guideRequest())
	if err != nil {
		t.Fatal(err)
	}
	if issued.Clamped {
		t.Error("28800 s clamped under a 28800 s maximum")
	}
	c, err := VerifyCapability(key.Public().(ed25519.PublicKey), issued.Raw, time.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if c.AgentID != "claude-code" || c.ResourceScope != "*.anthropic.com*" || c.Expires.Sub(c.IssuedAt) != 8*time.Hour {
		t.Fatalf("claims %+v", c)
	}
}

func TestIssueDenied(t *testing.T) {
	policy := guideIssuance + `
@id("no-paste")
forbid (principal, action, resource) when { resource.host like "*paste*" };
`
	is, _ := newTestIssuer(t, policy, time.Hour)
	cases := []struct {
		name   string
		mutate func(*IssueRequest)
		want   []string
	}{
		{"action not permitted", func(r *IssueRequest) {
			r.Actions = []string{"communication.external.send", "model.inference.chat"}
		}, []string{`"model.inference.chat"`, "no issuance policy permits it"}},
		{"other agent", func(r *IssueRequest) { r.AgentID = "codex" }, []string{`"codex"`, "no issuance policy permits it"}},
		{"forbidden", func(r *IssueRequest) { r.ResourceScope = "paste.rs*" }, []string{"forbidden by no-paste"}},
	}
	for _, tc := range cases {
		req := guideRequest()
		tc.mutate(&req)
		issued, err := is.Issue(req)
		if !errors.Is(err, ErrIssuanceDenied) {
			t.Errorf("%s: %v (issued %v), want ErrIssuanceDenied", tc.name, err, issued != nil)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not say %s", tc.name, err, w)
			}
		}
	}
}

func TestIssueRefusesBadRequests(t *testing.T) {
	is, _ := newTestIssuer(t, guideIssuance, time.Hour)
	bad := map[string]func(*IssueRequest){
		"unknown action": func(r *IssueRequest) { r.Actions = []string{"communication.externall.send"} },
		"no action":      func(r *IssueRequest) { r.Actions = nil },
		"bad scope":      func(r *IssueRequest) { r.ResourceScope = "" },
		"bad session":    func(r *IssueRequest) { r.SessionID = "" },
		"sub-second ttl": func(r *IssueRequest) { r.TTL = time.Millisecond },
		"agent with \"":  func(r *IssueRequest) { r.AgentID = `claude"code` },
	}
	for name, mutate := range bad {
		req := guideRequest()
		mutate(&req)
		if _, err := is.Issue(req); err == nil || errors.Is(err, ErrIssuanceDenied) {
			t.Errorf("%s: %v, want a request error", name, err)
		}
	}
}

func TestIssueClampsTTL(t *testing.T) {
	is, _ := newTestIssuer(t, guideIssuance, 28800*time.Second)
	req := guideRequest()
	req.TTL = 7 * 24 * time.Hour
	issued, err := is.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	if !issued.Clamped {
		t.Error("not marked clamped")
	}
	if got := issued.Claims.Expires.Sub(issued.Claims.IssuedAt); got != 28800*time.Second {
		t.Errorf("lifetime %s, want 8h", got)
	}
}

func TestNewIssuerRejectsBrokenPolicies(t *testing.T) {
	key, _, _ := newTestKey(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "issuance.cedar"), []byte("permit (\nprincipal == Firma::Agent::\"x\",\naction == Firma::Action::\"no.such.class\",\nresource\n);\n"), 0o644)
	_, err := NewIssuer(key, dir, nil, time.Hour)
	if err == nil || !strings.Contains(err.Error(), "issuance.cedar:") {
		t.Fatalf("NewIssuer: %v, want an error naming the file and line", err)
	}
}
