//go:build linux

package daemon_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/internal/e2e"
)

// Every client stack resolves through the redirected resolver and connects with no proxy
// variable; each must reach the allowed host and be refused the denied one.
func TestClientsInCgroup(t *testing.T) {
	w := newWorld(t, e2e.SidecarOptions{})
	denied := w.denied.Addr.Addr().String()
	clients := []struct {
		name string
		cmd  []string
	}{
		{"python3", []string{"python3", "-c", fmt.Sprintf(`import ssl, urllib.request, socket
ctx = ssl.create_default_context(cafile=%q)
print(urllib.request.urlopen("https://allowed.test/py", context=ctx, timeout=10).read().decode().strip())
try:
    s = socket.create_connection((%q, 443), timeout=5)
    ctx.wrap_socket(s, server_hostname="denied.test").do_handshake()
    print("DENIED-HOST-REACHED")
except (OSError, ssl.SSLError) as e:
    print("refused")`, w.ca.CertFile, denied)}},
		{"node", []string{"node", "-e", fmt.Sprintf(`const https = require("https"), fs = require("fs"), tls = require("tls");
const ca = fs.readFileSync(%q);
https.get("https://allowed.test/node", {ca}, res => {
  let b = ""; res.on("data", d => b += d);
  res.on("end", () => {
    console.log(b.trim());
    const s = tls.connect({host: %q, port: 443, servername: "denied.test", ca}, () => { console.log("DENIED-HOST-REACHED"); s.end(); });
    s.on("error", () => console.log("refused"));
  });
}).on("error", e => console.log("error " + e.message));`, w.ca.CertFile, denied)}},
		{"go", []string{e2e.Binary(t, "httpclient"), "-cacert", w.ca.CertFile, "-resolve", "denied.test:443:" + denied,
			"https://allowed.test/go", "https://denied.test/"}},
	}
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			out, _ := w.Run(t, c.cmd[0], c.cmd[1:]...)
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 2 || !strings.HasSuffix(lines[0], "hello from allowed /"+map[string]string{"python3": "py", "node": "node", "go": "go"}[c.name]) {
				t.Fatalf("output:\n%s", out)
			}
			if strings.Contains(out, "DENIED-HOST-REACHED") || !(lines[1] == "refused" || strings.HasPrefix(lines[1], "ERROR")) {
				t.Fatalf("denied host:\n%s", out)
			}
			comm := map[string]string{"python3": "python3", "node": "node", "go": "httpclient"}[c.name]
			w.WaitEvent(t, "ALLOW from "+comm, func(ev audit.Event) bool {
				return decisionFor("allowed.test")(ev) && ev.Envelope.Agent.Comm == comm && ev.Decision.Outcome == "ALLOW"
			})
		})
	}
	if n := w.denied.Conns(); n != 0 {
		t.Fatalf("denied upstream got %d connections", n)
	}
}

// Plain HTTP is judged per request: on one keep-alive connection an allowed request, a denied one,
// then an allowed one again.
func TestPlainHTTPJudgedPerRequest(t *testing.T) {
	w := newWorld(t, e2e.SidecarOptions{})
	out, err := w.Run(t, "python3", "-c", `import http.client
c = http.client.HTTPConnection("plain.test", 80, timeout=10)
for p in ["/ok", "/secret/key", "/ok2"]:
    c.request("GET", p)
    r = c.getresponse()
    print(r.status, r.read().decode().strip())
print("socket reused:", c.sock is not None)`)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := "200 hello from plain /ok\n403 firma: denied: forbidden by policy\n200 hello from plain /ok2\nsocket reused: True\n"
	if out != want {
		t.Fatalf("got:\n%s\nwant:\n%s", out, want)
	}
	for _, r := range w.plain.Requests() {
		if strings.HasPrefix(r.Path, "/secret") {
			t.Fatalf("denied request reached the upstream: %s", r.Path)
		}
	}
	ev := w.WaitEvent(t, "for /secret/key", func(ev audit.Event) bool {
		return ev.Envelope != nil && ev.Envelope.Intent.Resource.Path == "/secret/key"
	})
	if ev.Decision.Outcome != "DENY" || !contains(ev.Decision.MatchedPolicies, "forbid-secret-paths") {
		t.Fatalf("decision = %+v", ev.Decision)
	}
}

// A ClientHello dribbled out a few bytes per TCP segment is still read whole and judged by SNI.
func TestClientHelloSplitAcrossSegments(t *testing.T) {
	w := newWorld(t, e2e.SidecarOptions{})
	out, err := w.Run(t, e2e.Binary(t, "httpclient"), "-cacert", w.ca.CertFile, "-split", "40", "-delay", "15ms",
		"https://allowed.test/split")
	if err != nil || strings.TrimSpace(out) != "200 hello from allowed /split" {
		t.Fatalf("%v: %q\n%s", err, out, w.Logs())
	}
	ev := w.WaitEvent(t, "for allowed.test", decisionFor("allowed.test"))
	if ev.Envelope.Transport.SNI != "allowed.test" || ev.Envelope.Agent.Comm != "httpclient" {
		t.Fatalf("record = %+v", ev.Envelope)
	}
}

// The explicit proxy serves the guides' `curl --proxy http://127.0.0.1:8080` on hosts without
// eBPF, and a process inside an enforced cgroup that uses it keeps its kernel identity.
func TestExplicitProxy(t *testing.T) {
	w := newWorld(t, e2e.SidecarOptions{})
	proxy := fmt.Sprintf("http://127.0.0.1:%d", w.ProxyPort)

	// From inside the cgroup: redirected, served as a proxy, judged as test-agent.
	out, err := w.curl(t, "--proxy", proxy, "https://allowed.test/via-proxy")
	if err != nil || out != "hello from allowed /via-proxy\n" {
		t.Fatalf("inside, CONNECT: %v %q\n%s", err, out, w.Logs())
	}
	out, err = w.curl(t, "--proxy", proxy, "http://plain.test/abs")
	if err != nil || out != "hello from plain /abs\n" {
		t.Fatalf("inside, absolute-form: %v %q", err, out)
	}
	out, _ = w.curl(t, "--proxy", proxy, "-i", "http://plain.test/secret")
	if !strings.Contains(out, "403") {
		t.Fatalf("inside, denied path: %q", out)
	}
	ev := w.WaitEvent(t, "proxy CONNECT", func(ev audit.Event) bool {
		return decisionFor("allowed.test")(ev) && ev.Envelope.Agent.AgentID == e2e.AgentID && ev.Envelope.Agent.Comm == "curl"
	})
	if ev.Decision.Outcome != "ALLOW" || ev.Envelope.Transport.SNI != "allowed.test" {
		t.Fatalf("record = %+v %+v", ev.Envelope, ev.Decision)
	}

	// From outside any enforced cgroup there is no kernel identity and no agent_id is configured:
	// denied as an unknown agent, and nothing reaches the upstream.
	before := len(w.plain.Requests())
	out, err = curlOutside(t, w, "--proxy", proxy, "-i", "http://plain.test/outside")
	if err != nil || !strings.Contains(out, "403") || !strings.Contains(out, "unknown agent") {
		t.Fatalf("outside: %v %q", err, out)
	}
	if len(w.plain.Requests()) != before {
		t.Fatal("an unknown proxy client reached the upstream")
	}
	// Its CONNECT is refused as such, with the key to set in the answer, before any tunnel.
	conns := w.allowed.Conns()
	out, err = curlOutside(t, w, "--proxy", proxy, "-v", "https://allowed.test/outside")
	if err == nil || !strings.Contains(out, "< HTTP/1.1 403") || !strings.Contains(out, "set [sidecar.interceptor] agent_id") {
		t.Fatalf("outside, CONNECT: %v %q", err, out)
	}
	w.WaitEvent(t, "the unknown client's CONNECT", func(ev audit.Event) bool {
		return decisionFor("allowed.test")(ev) && ev.Decision.Outcome == "DENY" && strings.Contains(ev.Decision.Reason, "outside every enforced cgroup")
	})
	if w.allowed.Conns() != conns {
		t.Fatal("an unknown proxy client's CONNECT reached the upstream")
	}
}

// The kernel gives the agent its original peer back, and the ways around connect(2) that a
// program might try are refused or redirected all the same.
func TestBypassAttempts(t *testing.T) {
	w := newWorld(t, e2e.SidecarOptions{})
	allowed := w.allowed.Addr.Addr().String()
	script := fmt.Sprintf(`import socket, ssl
# getpeername reports the address the agent asked for, not the sidecar.
s = socket.create_connection(("127.113.0.5", 443), timeout=5)
print("peer", s.getpeername())
s.close()
# TCP Fast Open sends data with the SYN without connect(): still redirected and judged.
try:
    f = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    f.sendto(b"GET /tfo HTTP/1.1\r\nHost: plain.test\r\nConnection: close\r\n\r\n", socket.MSG_FASTOPEN, ("127.100.0.80", 80))
    f.settimeout(5)
    print("tfo", f.recv(200).split(b"\r\n")[0].decode())
except OSError as e:
    print("tfo error", e.errno)
# QUIC and other UDP is refused in the kernel.
for port in (443, 8443):
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", (%q, port))
        print("udp", port, "sent")
    except OSError as e:
        print("udp", port, "refused", e.errno)
`, allowed)
	out, err := w.Run(t, "python3", "-c", script)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"peer ('127.113.0.5', 443)", "tfo HTTP/1.1 200 OK", "udp 443 refused 1", "udp 8443 refused 1"} {
		if !strings.Contains(out, want) {
			t.Errorf("want %q in:\n%s", want, out)
		}
	}
	w.WaitEvent(t, "for the fast-open request", func(ev audit.Event) bool {
		return ev.Envelope != nil && ev.Envelope.Intent.Resource.Path == "/tfo" && ev.Envelope.Transport.OrigDst == "127.100.0.80:80"
	})
}

// DNS over UDP and TCP is redirected, judged by name, and answered.
func TestDNSJudgedByName(t *testing.T) {
	w := newWorld(t, e2e.SidecarOptions{})
	out, err := w.Run(t, "python3", "-c", `import socket, struct
def q(name, tcp=False):
    hdr = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    body = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00" + struct.pack(">HH", 1, 1)
    msg = hdr + body
    if tcp:
        s = socket.create_connection(("127.0.2.53", 53), timeout=5)
        s.sendall(struct.pack(">H", len(msg)) + msg)
        resp = s.recv(512)[2:]
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.sendto(msg, ("127.0.2.53", 53))
        resp, src = s.recvfrom(512)
        print("from", src)
    rcode = resp[3] & 0xF
    print(name, "tcp" if tcp else "udp", "rcode", rcode, "answer", ".".join(str(b) for b in resp[-4:]) if rcode == 0 else "-")
q("allowed.test"); q("denied.test"); q("allowed.test", tcp=True)
print(socket.gethostbyname("plain.test"))`)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{
		"from ('127.0.2.53', 53)",
		"allowed.test udp rcode 0 answer " + w.allowed.Addr.Addr().String(),
		"denied.test udp rcode 5 answer -",
		"allowed.test tcp rcode 0 answer " + w.allowed.Addr.Addr().String(),
		w.plain.Addr.Addr().String(),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("want %q in:\n%s", want, out)
		}
	}
	ev := w.WaitEvent(t, "dns deny", func(ev audit.Event) bool {
		return ev.Envelope != nil && ev.Envelope.Transport.Mode == "dns" && ev.Decision.Outcome == "DENY"
	})
	if ev.Envelope.Transport.OrigDst != "127.0.2.53:53" || ev.Envelope.Agent.Comm != "python3" {
		t.Errorf("dns record = %+v", ev.Envelope)
	}
}
