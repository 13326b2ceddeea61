package l7

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/openfirma/firma/internal/testutil"
)

// curl, a real agent-side client, over HTTP/1.1 and HTTP/2: it sees the firma CA as issuer, an
// allowed then a denied request on one connection behave as they should, and a curl that does not
// trust the CA fails the handshake.
func TestCurl(t *testing.T) {
	testutil.RequireTool(t, "curl")
	for _, proto := range []string{"--http1.1", "--http2"} {
		t.Run(proto, func(t *testing.T) {
			e := newEnv(t, envOptions{hooks: &fakeJudge{deny: []string{"/deny"}}})
			up := e.upstream(apiHost)
			resolve := fmt.Sprintf("%s:%d:127.0.0.1", apiHost, e.port)
			out, err := exec.Command("curl", "-sS", "-v", proto, "--cacert", e.ca.CertPath(), "--resolve", resolve,
				"-w", "status=%{http_code} version=%{http_version}\n",
				e.url(apiHost, "/v1/models"), e.url(apiHost, "/deny/upload")).CombinedOutput()
			if err != nil {
				t.Fatalf("curl: %v\n%s", err, out)
			}
			s := string(out)
			if !strings.Contains(s, "issuer: O=firma") || !strings.Contains(s, "CN=Firma Sidecar CA") {
				t.Errorf("curl -v does not show the firma CA as issuer:\n%s", s)
			}
			want := []string{"status=200", "status=403"}
			version := map[string]string{"--http1.1": "version=1.1", "--http2": "version=2"}[proto]
			for _, w := range append(want, "hello from "+apiHost+" /v1/models", "firma: denied: path /deny is forbidden", version) {
				if !strings.Contains(s, w) {
					t.Errorf("curl output lacks %q:\n%s", w, s)
				}
			}
			if n := e.accepts.Load(); n != 1 {
				t.Errorf("curl used %d connections, want 1 (keep-alive / one h2 connection)", n)
			}
			reqs := up.Requests()
			if len(reqs) != 1 || reqs[0].Path != "/v1/models" {
				t.Errorf("upstream saw %+v, want /v1/models only", reqs)
			}

			// Without the CA: curl refuses, the interceptor reports the failed handshake.
			out, err = exec.Command("curl", "-sS", proto, "--resolve", resolve, "--cacert", e.upCA.CertFile,
				e.url(apiHost, "/v1/models")).CombinedOutput()
			if err == nil {
				t.Fatalf("curl trusted a leaf from an untrusted CA:\n%s", out)
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				if _, _, _, hs := e.hooks.snapshot(); len(hs) == 1 {
					if !strings.Contains(hs[0].reason, "the agent rejected firma's certificate") {
						t.Errorf("the refusal does not say the agent rejected the certificate: %q", hs[0].reason)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("HandshakeFailed not called")
				}
				time.Sleep(5 * time.Millisecond)
			}
			if e.icpt.Route(e.flow(), apiHost) != ModeFallback {
				t.Error("no fallback after curl rejected the leaf")
			}
		})
	}
}

// Node (the runtime of most coding agents), trusting the CA through NODE_EXTRA_CA_CERTS as the
// guide says: keep-alive allowed then denied on one socket.
func TestNodeClient(t *testing.T) {
	testutil.RequireTool(t, "node")
	e := newEnv(t, envOptions{hooks: &fakeJudge{deny: []string{"/deny"}}})
	up := e.upstream(apiHost)
	const script = `
const https = require('https');
const [host, port] = [process.argv[1], Number(process.argv[2])];
const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
const lookup = (h, o, cb) => o && o.all ? cb(null, [{ address: '127.0.0.1', family: 4 }]) : cb(null, '127.0.0.1', 4);
const get = (path) => new Promise((resolve, reject) => {
  https.get({ host, port, path, agent, lookup }, (res) => {
    let body = '';
    const local = res.socket.localPort;
    res.on('data', (d) => body += d);
    res.on('end', () => resolve(res.statusCode + ' ' + local + ' ' + body.trim()));
  }).on('error', reject);
});
(async () => {
  for (const p of ['/v1/ok', '/deny/x', '/v1/ok2']) console.log(await get(p));
  agent.destroy();
})().catch((e) => { console.error(e.message); process.exit(1); });
`
	cmd := exec.Command("node", "-e", script, apiHost, fmt.Sprint(e.port))
	cmd.Env = append(cmd.Environ(), "NODE_EXTRA_CA_CERTS="+e.ca.CertPath())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 3 {
		t.Fatalf("node output:\n%s", out)
	}
	var ports []string
	for i, want := range []string{"200", "403", "200"} {
		f := strings.SplitN(lines[i], " ", 3)
		if f[0] != want {
			t.Errorf("request %d: %s", i, lines[i])
		}
		ports = append(ports, f[1])
	}
	if ports[0] != ports[1] || ports[1] != ports[2] {
		t.Errorf("node used several sockets: %v", ports)
	}
	if n := len(up.Requests()); n != 2 {
		t.Errorf("upstream saw %d requests, want 2", n)
	}
}
