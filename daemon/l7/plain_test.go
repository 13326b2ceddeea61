package l7

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openfirma/firma/daemon/judge"
	"github.com/openfirma/firma/internal/testutil"
)

// plainEnv serves the engine's plain entry point on a loopback listener, as the front end does for
// a redirected plain-HTTP flow (port 80) or, with proxy, for the explicit proxy.
type plainEnv struct {
	*env
	addr    string
	mu      sync.Mutex
	tunnels []string // host:port + prefix of each CONNECT tunnel handed to the front end
}

func newPlainEnv(t *testing.T, hooks *fakeJudge, proxy bool) *plainEnv {
	t.Helper()
	return newPlainEnvWith(t, envOptions{hooks: hooks}, proxy)
}

func newPlainEnvWith(t *testing.T, o envOptions, proxy bool) *plainEnv {
	t.Helper()
	p := &plainEnv{env: newEnv(t, o)}
	p.icpt.tunnel = func(ctx context.Context, conn net.Conn, prefix []byte, f *judge.Flow, host string, port int) {
		time.Sleep(10 * time.Millisecond) // the CONNECT handler has returned by now
		p.mu.Lock()
		p.tunnels = append(p.tunnels, fmt.Sprintf("%s:%d %q %s ctx=%v", host, port, prefix, f.AgentID, ctx.Err()))
		p.mu.Unlock()
		io.WriteString(conn, "tunnel for "+host)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.icpt.ServePlain(ctx, c, p.flow(), PlainConn{Proxy: proxy, Port: 80, Name: "plain.example.test"})
			}()
		}
	}()
	return p
}

// plainUpstream starts a fake plain-HTTP upstream for host and routes the engine's dials to it.
func (p *plainEnv) plainUpstream(host string) *testutil.Upstream {
	u := testutil.NewHTTPUpstream(p.t, host, netip.MustParseAddrPort("127.0.0.1:0"))
	p.mu.Lock()
	p.routes[host] = u.Addr.String()
	p.mu.Unlock()
	return u
}

func (p *plainEnv) roundTrip(t *testing.T, raw string) *http.Response {
	t.Helper()
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	io.WriteString(c, raw)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func body(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return string(b)
}

// TestPlainAllowDenyError: the plain entry point judges by Host, answers a denial exactly as the TLS
// entry point does, and maps an upstream failure to the same status and audit class.
func TestPlainAllowDenyError(t *testing.T) {
	p := newPlainEnv(t, &fakeJudge{deny: []string{"/deny"}}, false)
	up := p.plainUpstream("plain.example.test")

	resp := p.roundTrip(t, "GET /ok HTTP/1.1\r\nHost: plain.example.test\r\n\r\n")
	if b := body(t, resp); resp.StatusCode != 200 || b != "hello from plain.example.test /ok\n" {
		t.Fatalf("allowed: %d %q", resp.StatusCode, b)
	}
	resp = p.roundTrip(t, "POST /deny/x HTTP/1.1\r\nHost: plain.example.test\r\nContent-Length: 3\r\n\r\nabc")
	if b := body(t, resp); resp.StatusCode != 403 || b != "firma: denied: path /deny is forbidden\n" ||
		resp.Header.Get("X-Firma-Decision") != "DENY" || resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Fatalf("denied: %d %q %v", resp.StatusCode, b, resp.Header)
	}
	resp = p.roundTrip(t, "GET /x HTTP/1.1\r\nHost: unrouted.example.test\r\n\r\n")
	if b := body(t, resp); resp.StatusCode != 502 || !strings.Contains(b, "(connector_network_error)") {
		t.Fatalf("upstream failure: %d %q", resp.StatusCode, b)
	}
	done := p.hooks.waitDone(t, 2)
	if done[0].req.Host != "plain.example.test" { // Complete runs after the response: either may come first
		done[0], done[1] = done[1], done[0]
	}
	if done[0].req.Mode != judge.ModeHTTP || done[0].req.Host != "plain.example.test" || done[0].req.Port != 80 ||
		done[0].res.UpstreamStatus != 200 || done[0].res.Dialed.String() != up.Addr.String() {
		t.Errorf("allowed: %+v %+v", done[0].req, done[0].res)
	}
	if done[1].res.ErrClass != judge.ErrorNetwork || done[1].res.Err == nil {
		t.Errorf("failed: %+v", done[1].res)
	}
	if n := len(up.Requests()); n != 1 {
		t.Errorf("upstream saw %d requests", n)
	}
}

// TestErrorMappingSameOnBothEntries: the same upstream failure gives the same status, body prefix
// and audit class through the TLS-terminated and the plain entry point.
func TestErrorMappingSameOnBothEntries(t *testing.T) {
	p := newPlainEnv(t, &fakeJudge{}, false)
	resp := p.roundTrip(t, "GET /x HTTP/1.1\r\nHost: noroute.example.test\r\n\r\n")
	plainStatus, plainBody := resp.StatusCode, body(t, resp)
	tlsStatus, tlsBody := get(t, p.client(false), "GET", p.url("noroute.example.test", "/x"), nil, nil)
	if plainStatus != 502 || tlsStatus != 502 {
		t.Fatalf("statuses %d %d", plainStatus, tlsStatus)
	}
	prefix := "firma: upstream bad gateway (connector_network_error): "
	if !strings.HasPrefix(plainBody, prefix) || !strings.HasPrefix(tlsBody, prefix) {
		t.Fatalf("bodies %q %q", plainBody, tlsBody)
	}
	done := p.hooks.waitDone(t, 2)
	if done[0].res.ErrClass != done[1].res.ErrClass {
		t.Fatalf("classes %q %q", done[0].res.ErrClass, done[1].res.ErrClass)
	}
}

// TestPlainMalformedIsRecorded: a request the HTTP server rejects before any handler runs still
// leaves a refusal with its status.
func TestPlainMalformedIsRecorded(t *testing.T) {
	p := newPlainEnv(t, &fakeJudge{}, false)
	for _, raw := range []string{
		"GET /x HTTP/1.1\r\nHost: a\r\nBad Header Line\r\n\r\n",
		"GET /x HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("a", 2<<20) + "\r\n\r\n",
	} {
		resp := p.roundTrip(t, raw)
		body(t, resp)
		if resp.StatusCode != 400 && resp.StatusCode != 431 {
			t.Errorf("status %d", resp.StatusCode)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, refused, _, _ := p.hooks.snapshot()
		if len(refused) == 2 {
			if !strings.HasPrefix(refused[0].reason, ReasonMalformed+" (400)") || !strings.HasPrefix(refused[1].reason, ReasonMalformed+" (431)") {
				t.Fatalf("refusals %+v", refused)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("refusals %+v", refused)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPlainAnyMethod: a request line with a method outside the usual list is judged like any other.
func TestPlainAnyMethod(t *testing.T) {
	p := newPlainEnv(t, &fakeJudge{deny: []string{"/deny"}}, false)
	p.plainUpstream("plain.example.test")
	resp := p.roundTrip(t, "MKCOL /deny/dir HTTP/1.1\r\nHost: plain.example.test\r\n\r\n")
	if body(t, resp); resp.StatusCode != 403 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	decided, _, _, _ := p.hooks.snapshot()
	if len(decided) != 1 || decided[0].Method != "MKCOL" {
		t.Fatalf("decided %+v", decided)
	}
}

// TestPlainH2C: HTTP/2 with prior knowledge is served and judged per stream.
func TestPlainH2C(t *testing.T) {
	p := newPlainEnv(t, &fakeJudge{deny: []string{"/deny"}}, false)
	up := p.plainUpstream("plain.example.test")
	tr := &http.Transport{Protocols: new(http.Protocols), DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, p.addr)
	}}
	tr.Protocols.SetUnencryptedHTTP2(true)
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	for path, want := range map[string]int{"/ok": 200, "/deny/x": 403} {
		resp, err := c.Get("http://plain.example.test" + path)
		if err != nil {
			t.Fatal(err)
		}
		body(t, resp)
		if resp.StatusCode != want || resp.ProtoMajor != 2 {
			t.Errorf("%s: %s %d", path, resp.Proto, resp.StatusCode)
		}
	}
	if n := len(up.Requests()); n != 1 {
		t.Fatalf("upstream saw %d requests", n)
	}
}

// TestPlainWebSocket: an allowed upgrade on plain HTTP is relayed both ways until the agent closes
// (it used to be cut right after the 101).
func TestPlainWebSocket(t *testing.T) {
	p := newPlainEnv(t, &fakeJudge{}, false)
	up := p.plainUpstream("plain.example.test")
	up.SetHandler(upperEchoWebSocket(), false)
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: plain.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	for _, msg := range []string{"one\n", "two\n"} {
		time.Sleep(20 * time.Millisecond)
		io.WriteString(c, msg)
		got, err := br.ReadString('\n')
		if err != nil || got != strings.ToUpper(msg) {
			t.Fatalf("relay: %q %v", got, err)
		}
	}
	c.Close()
	done := p.hooks.waitDone(t, 1)
	if r := done[0].res; r.UpstreamStatus != 101 || r.BytesUp != 8 || r.BytesDown != 8 {
		t.Fatalf("result %+v", r)
	}
}

// TestProxyConnectAndAbsolute: on the explicit proxy, absolute-form requests are judged by their URL
// and CONNECT hands the tunnel, with what the agent already sent, to the front end.
func TestProxyConnectAndAbsolute(t *testing.T) {
	p := newPlainEnv(t, &fakeJudge{}, true)
	up := p.plainUpstream("abs.example.test")
	resp := p.roundTrip(t, "GET http://abs.example.test/p HTTP/1.1\r\nHost: abs.example.test\r\nProxy-Authorization: Basic eDp5\r\n\r\n")
	if b := body(t, resp); resp.StatusCode != 200 || b != "hello from abs.example.test /p\n" {
		t.Fatalf("absolute: %d %q", resp.StatusCode, b)
	}
	if r := up.Requests(); len(r) != 1 || r[0].Header.Get("Proxy-Authorization") != "" {
		t.Fatalf("upstream saw %+v", r)
	}
	resp = p.roundTrip(t, "GET /p HTTP/1.1\r\nHost: abs.example.test\r\n\r\n")
	if b := body(t, resp); resp.StatusCode != 400 || !strings.Contains(b, "absolute URL") {
		t.Fatalf("origin-form on the proxy: %d %q", resp.StatusCode, b)
	}

	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "CONNECT tunnel.example.test:443 HTTP/1.1\r\nHost: tunnel.example.test:443\r\n\r\nEARLY")
	br := bufio.NewReader(c)
	resp, err = http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	rest, _ := io.ReadAll(br)
	if string(rest) != "tunnel for tunnel.example.test" {
		t.Fatalf("tunnel: %q", rest)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.tunnels) != 1 || p.tunnels[0] != `tunnel.example.test:443 "EARLY" agent-1 ctx=<nil>` {
		t.Fatalf("tunnels %q", p.tunnels)
	}
}
