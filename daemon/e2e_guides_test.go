//go:build linux

package daemon_test

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/internal/e2e"
	"github.com/openfirma/firma/internal/testutil"
	"github.com/openfirma/firma/policies"
)

// The guide "Enable HTTPS MITM", with its blocks as written (only the CA dir is a temp dir), the
// built-in mapping rules, and a policy permitting the proxy client to list OpenAI's models.
func TestGuideHTTPSMITM(t *testing.T) {
	testutil.RequireRoot(t)
	caDir := filepath.Join(t.TempDir(), "firma-standalone", "firma-ca")
	upCA := testutil.NewCA(t, "guide upstream CA")
	openai := testutil.NewHTTPSUpstream(t, "openai", netip.AddrPortFrom(testutil.LoopbackAddr(t), 443), upCA, "api.openai.com")
	s := e2e.NewSidecar(t, e2e.SidecarOptions{
		ProxyAgentID: "guide-agent",
		Policies: map[string]string{"guide.cedar": `permit (
    principal == Firma::Agent::"guide-agent",
    action in [Firma::Action::"model.inference.chat", Firma::Action::"communication.external.send"],
    resource
) when { resource.host == "api.openai.com" };`},
		Rules:      string(policies.EmbeddedRulesText()),
		Resolve:    map[string]string{"api.openai.com": openai.Addr.Addr().String()},
		UpstreamCA: upCA.CertFile,
		ExtraTOML: fmt.Sprintf(`
[sidecar.ca]
dir = %q

[sidecar.interceptor.https_mitm]
enabled = true
intercept_hosts = [
"api.openai.com",
"api.anthropic.com",
"api.stripe.com",
]
bypass_hosts = []
strict_hosts = ["api.stripe.com"]
`, caDir),
	})
	// Step 1: the CA is bootstrapped with the guide's log lines; the key is 0600.
	for _, line := range []string{"bootstrapping CA at " + caDir, "wrote firma-ca.crt and firma-ca.key", "sidecar ready", "https mitm enabled for 3 hosts"} {
		if !strings.Contains(s.Logs(), line) {
			t.Errorf("startup log lacks %q:\n%s", line, s.Logs())
		}
	}
	entries, _ := os.ReadDir(caDir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "firma-ca.crt firma-ca.key" {
		t.Errorf("ls %s = %v", caDir, names)
	}
	if st, err := os.Stat(filepath.Join(caDir, "firma-ca.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("firma-ca.key mode: %v %v", st.Mode(), err)
	}

	// Step 4, as written: the CA trusted through CURL_CA_BUNDLE in the agent's shell.
	cmd := exec.Command("sh", "-c", fmt.Sprintf(`curl --proxy http://127.0.0.1:%d -v https://api.openai.com/v1/models 2>&1 | grep -E "issuer:|subject:"`, s.ProxyPort))
	cmd.Env = append(testutil.CleanEnv(), "CURL_CA_BUNDLE="+filepath.Join(caDir, "firma-ca.crt"))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "issuer: O=firma") || !strings.Contains(string(out), "CN=Firma Sidecar CA") {
		t.Fatalf("issuer check: %v\n%s\nsidecar:\n%s", err, out, s.Logs())
	}
	ev := s.WaitEvent(t, "the L7 record", func(ev audit.Event) bool {
		return ev.Envelope != nil && ev.Envelope.Intent.Resource.Path == "/v1/models"
	})
	in := ev.Envelope.Intent
	if in.ActionClass == nil || *in.ActionClass != "model.inference.chat" || in.Resource.Host != "api.openai.com" ||
		in.Resource.Method != "GET" || ev.Decision.Outcome != "ALLOW" {
		t.Errorf("record: action %v resource %+v decision %+v", in.ActionClass, in.Resource, ev.Decision)
	}
	if reqs := openai.Requests(); len(reqs) != 1 || reqs[0].Path != "/v1/models" {
		t.Errorf("upstream saw %+v", reqs)
	}
}
