package l7

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openfirma/firma/daemon/judge"
	"github.com/openfirma/firma/internal/duration"
	"github.com/openfirma/firma/internal/testutil"
)

// One keep-alive HTTP/1.1 connection: an allowed request reaches the upstream, a denied one gets
// 403 with the reason and never reaches it, and the connection carries on.
func TestKeepAliveAllowThenDeny(t *testing.T) {
	e := newEnv(t, envOptions{hooks: &fakeJudge{deny: []string{"/deny"}}})
	up := e.upstream(apiHost)
	c := e.client(false)

	var conns []net.Conn
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { conns = append(conns, i.Conn) }}
	for _, tc := range []struct {
		path   string
		status int
		body   string
	}{
		{"/v1/ok", 200, "hello from " + apiHost + " /v1/ok\n"},
		{"/deny/secret", 403, "firma: denied: path /deny is forbidden\n"},
		{"/v1/again", 200, "hello from " + apiHost + " /v1/again\n"},
	} {
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", e.url(apiHost, tc.path), nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || string(b) != tc.body {
			t.Errorf("%s: got %d %q, want %d %q", tc.path, resp.StatusCode, b, tc.status, tc.body)
		}
		if resp.Proto != "HTTP/1.1" {
			t.Errorf("%s: proto %s", tc.path, resp.Proto)
		}
	}
	if len(conns) != 3 || conns[1] != conns[0] || conns[2] != conns[0] {
		t.Errorf("requests did not share one keep-alive connection: %v", conns)
	}
	if n := e.accepts.Load(); n != 1 {
		t.Errorf("agent connections: %d, want 1", n)
	}
	var paths []string
	for _, r := range up.Requests() {
		paths = append(paths, r.Path)
	}
	if strings.Join(paths, " ") != "/v1/ok /v1/again" {
		t.Errorf("upstream saw %v, want /v1/ok and /v1/again only", paths)
	}
	done := e.hooks.waitDone(t, 2)
	decided, _, _, _ := e.hooks.snapshot()
	if len(decided) != 3 {
		t.Fatalf("Decide called %d times, want 3", len(decided))
	}
	d := decided[1]
	if d.Method != "GET" || d.Host != apiHost || d.Path != "/deny/secret" || d.Port != e.port || d.Mode != judge.ModeMITM || d.SNI != apiHost {
		t.Errorf("decided %+v", d)
	}
	for _, dc := range done {
		if dc.res.ErrClass != "" || dc.res.UpstreamStatus != 200 || dc.res.BytesDown == 0 {
			t.Errorf("Complete %s: %+v", dc.req.Path, dc.res)
		}
		if dc.res.Dialed.String() != up.Addr.String() {
			t.Errorf("Complete dialed %v, want %s", dc.res.Dialed, up.Addr)
		}
	}
	// Complete runs after the response is sent: the next request's may come first.
	reasons := map[string]string{}
	for _, dc := range done {
		reasons[dc.req.Path] = dc.v.Reason
	}
	if reasons["/v1/ok"] != "1" || reasons["/v1/again"] != "3" {
		t.Errorf("verdicts not handed back to Complete: %v", reasons)
	}
}

// Pipelined HTTP/1.1: three requests written at once are answered in order, the denied one in place.
func TestPipelining(t *testing.T) {
	e := newEnv(t, envOptions{hooks: &fakeJudge{deny: []string{"/deny"}}})
	up := e.upstream(apiHost)
	conn, err := tls.Dial("tcp", e.addr, &tls.Config{ServerName: apiHost, RootCAs: e.caPool(), NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	host := fmt.Sprintf("%s:%d", apiHost, e.port)
	var batch strings.Builder
	for _, p := range []string{"/a", "/deny/b", "/c"} {
		fmt.Fprintf(&batch, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", p, host)
	}
	if _, err := io.WriteString(conn, batch.String()); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	var got []string
	for range 3 {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got = append(got, fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(b))))
	}
	want := []string{
		"200 hello from " + apiHost + " /a",
		"403 firma: denied: path /deny is forbidden",
		"200 hello from " + apiHost + " /c",
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("got %q, want %q", got, want)
	}
	if n := len(up.Requests()); n != 2 {
		t.Errorf("upstream saw %d requests, want 2", n)
	}
}

// HTTP/2: many concurrent streams on one agent connection with mixed verdicts.
func TestHTTP2ConcurrentStreams(t *testing.T) {
	e := newEnv(t, envOptions{hooks: &fakeJudge{deny: []string{"/deny"}}})
	up := e.upstream(apiHost)
	block := make(chan struct{})
	var arrived sync.WaitGroup
	const n = 40
	arrived.Add(n / 2)
	up.SetHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Done()
		<-block // hold every allowed stream open until all have arrived: they really are concurrent
		fmt.Fprintf(w, "ok %s", r.URL.Path)
	}), false)
	c := e.client(true)
	// Warm the connection so that every stream multiplexes over it.
	if st, _ := get(t, c, "GET", e.url(apiHost, "/deny/warm"), nil, nil); st != 403 {
		t.Fatalf("warm-up: %d", st)
	}
	go func() { arrived.Wait(); close(block) }()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for k := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := fmt.Sprintf("/ok/%d", k)
			want := 200
			if k%2 == 1 {
				path, want = fmt.Sprintf("/deny/%d", k), 403
			}
			resp, err := c.Get(e.url(apiHost, path))
			if err != nil {
				errs <- err
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != want || resp.ProtoMajor != 2 {
				errs <- fmt.Errorf("%s: %s %d %q", path, resp.Proto, resp.StatusCode, b)
			}
			if want == 200 && string(b) != "ok "+path {
				errs <- fmt.Errorf("%s: body %q", path, b)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if a := e.accepts.Load(); a != 1 {
		t.Errorf("agent connections: %d, want 1", a)
	}
	for _, r := range up.Requests() {
		if strings.HasPrefix(r.Path, "/deny") {
			t.Errorf("denied %s reached the upstream", r.Path)
		}
	}
	if got := len(up.Requests()); got != n/2 {
		t.Errorf("upstream saw %d requests, want %d", got, n/2)
	}
	e.hooks.waitDone(t, n/2)
}

// A chunked request body with Expect: 100-continue reaches the upstream whole; a denied one is
// answered 403 before the client sends its body.
func TestChunkedAndExpectContinue(t *testing.T) {
	e := newEnv(t, envOptions{hooks: &fakeJudge{deny: []string{"/deny"}}})
	up := e.upstream(apiHost)
	for _, h2 := range []bool{false, true} {
		tr := e.transport(h2, e.caPool())
		tr.ExpectContinueTimeout = 5 * time.Second // the client waits for 100 (or a final status)
		c := &http.Client{Transport: tr}
		payload := strings.Repeat("chunk-", 10000)
		pr, pw := io.Pipe()
		go func() {
			for i := 0; i < len(payload); i += 6000 {
				pw.Write([]byte(payload[i:min(i+6000, len(payload))]))
			}
			pw.Close()
		}()
		req, _ := http.NewRequest("POST", e.url(apiHost, fmt.Sprintf("/upload/%v", h2)), pr)
		req.Header.Set("Expect", "100-continue")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("h2=%v: status %d", h2, resp.StatusCode)
		}
		reqs := up.Requests()
		last := reqs[len(reqs)-1]
		if string(last.Body) != payload {
			t.Errorf("h2=%v: upstream got %d body bytes, want %d", h2, len(last.Body), len(payload))
		}
		if !h2 && last.Header.Get("Expect") != "" {
			// the transport consumed Expect toward the upstream; what matters is the body arrived
			t.Logf("upstream saw Expect %q", last.Header.Get("Expect"))
		}

		// Denied: the body must never be sent, and the upstream never sees the request.
		bodyRead := make(chan struct{}, 1)
		body := &notifyReader{r: strings.NewReader("should not be sent"), read: bodyRead}
		req, _ = http.NewRequest("POST", e.url(apiHost, "/deny/upload"), body)
		req.ContentLength = int64(len("should not be sent"))
		req.Header.Set("Expect", "100-continue")
		resp, err = c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 403 || !strings.Contains(string(b), "forbidden") {
			t.Errorf("h2=%v: denied upload got %d %q", h2, resp.StatusCode, b)
		}
		select {
		case <-bodyRead:
			t.Errorf("h2=%v: client sent the body of a denied 100-continue request", h2)
		default:
		}
	}
	for _, r := range up.Requests() {
		if strings.HasPrefix(r.Path, "/deny") {
			t.Errorf("denied %s reached the upstream", r.Path)
		}
	}
	for _, dc := range e.hooks.waitDone(t, 2) {
		if dc.res.BytesUp != 60000 {
			t.Errorf("%s: BytesUp %d, want 60000", dc.req.Path, dc.res.BytesUp)
		}
	}
}

type notifyReader struct {
	r    io.Reader
	read chan struct{}
}

func (n *notifyReader) Read(p []byte) (int, error) {
	select {
	case n.read <- struct{}{}:
	default:
	}
	return n.r.Read(p)
}

// A WebSocket upgrade is judged at the handshake, then relayed both ways; a denied one gets 403.
func TestWebSocketUpgrade(t *testing.T) {
	e := newEnv(t, envOptions{hooks: &fakeJudge{deny: []string{"/deny"}}})
	up := e.upstream(apiHost)
	up.SetHandler(upperEchoWebSocket(), false)
	dialWS := func(path string) (*tls.Conn, *bufio.Reader, *http.Response) {
		conn, err := tls.Dial("tcp", e.addr, &tls.Config{ServerName: apiHost, RootCAs: e.caPool(), NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", path, apiHost, e.port)
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		return conn, br, resp
	}

	conn, br, resp := dialWS("/deny/ws")
	if resp.StatusCode != 403 {
		t.Fatalf("denied upgrade: %d", resp.StatusCode)
	}
	conn.Close()

	conn, br, resp = dialWS("/ws")
	if resp.StatusCode != 101 {
		t.Fatalf("upgrade: %d", resp.StatusCode)
	}
	for _, msg := range []string{"hello\n", "second frame\n"} {
		io.WriteString(conn, msg)
		got, err := br.ReadString('\n')
		if err != nil || got != strings.ToUpper(msg) {
			t.Fatalf("relay: got %q %v", got, err)
		}
	}
	conn.Close()
	done := e.hooks.waitDone(t, 1)
	r := done[0]
	if r.req.Path != "/ws" || r.req.Method != "GET" {
		t.Errorf("Complete request %+v", r.req)
	}
	if r.res.UpstreamStatus != 101 || r.res.ErrClass != "" {
		t.Errorf("Done result %+v", r.res)
	}
	if r.res.BytesUp != int64(len("hello\nsecond frame\n")) || r.res.BytesDown != int64(len("HELLO\nSECOND FRAME\n")) {
		t.Errorf("relay bytes up %d down %d", r.res.BytesUp, r.res.BytesDown)
	}
	decided, _, _, _ := e.hooks.snapshot()
	if len(decided) != 2 || decided[0].Path != "/deny/ws" {
		t.Errorf("decided %+v", decided)
	}
	if n := len(up.Requests()); n != 1 {
		t.Errorf("upstream saw %d requests, want 1", n)
	}
}

// A Host or :authority naming another host than the SNI is refused with 421 and recorded; it never
// reaches Decide or any upstream.
func TestDomainFronting(t *testing.T) {
	e := newEnv(t, envOptions{})
	up := e.upstream(apiHost)
	evil := e.upstream("evil.example.test")
	for _, h2 := range []bool{false, true} {
		c := e.client(h2)
		for _, host := range []string{
			fmt.Sprintf("evil.example.test:%d", e.port), // another host
			"evil.example.test",
			fmt.Sprintf("%s:%d", apiHost, e.port+1), // another port
		} {
			req, _ := http.NewRequest("GET", e.url(apiHost, "/v1/models"), nil)
			req.Host = host
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 421 || !strings.Contains(string(b), "does not match the TLS server name") {
				t.Errorf("h2=%v Host %s: %d %q", h2, host, resp.StatusCode, b)
			}
		}
		// The same client's honest request still works on that connection.
		if st, _ := get(t, c, "GET", e.url(apiHost, "/fine"), nil, nil); st != 200 {
			t.Errorf("h2=%v: honest request %d", h2, st)
		}
	}
	decided, refused, _, _ := e.hooks.snapshot()
	if len(refused) != 6 {
		t.Fatalf("Refused called %d times, want 6", len(refused))
	}
	for _, r := range refused {
		if r.status != 421 || r.req.Host != apiHost || r.req.Path != "/v1/models" || !strings.Contains(r.reason, "(requested ") {
			t.Errorf("refusal %+v", r)
		}
	}
	if len(decided) != 2 {
		t.Errorf("Decide called %d times, want 2 (the honest requests)", len(decided))
	}
	if n := evil.Conns(); n != 0 {
		t.Errorf("fronted host got %d connections", n)
	}
	if n := len(up.Requests()); n != 2 {
		t.Errorf("upstream saw %d requests, want 2", n)
	}
}

// Absolute-form targets and CONNECT inside an intercepted connection are refused.
func TestAbsoluteFormAndConnectRefused(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.upstream(apiHost)
	conn, err := tls.Dial("tcp", e.addr, &tls.Config{ServerName: apiHost, RootCAs: e.caPool(), NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	for _, tc := range []struct {
		line   string
		status int
	}{
		{fmt.Sprintf("GET https://evil.example.test/x HTTP/1.1\r\nHost: %s:%d", apiHost, e.port), 421},
		{fmt.Sprintf("CONNECT evil.example.test:443 HTTP/1.1\r\nHost: evil.example.test:443"), 405},
		{fmt.Sprintf("GET https://%s:%d/ok HTTP/1.1\r\nHost: %s:%d", apiHost, e.port, apiHost, e.port), 200},
	} {
		fmt.Fprintf(conn, "%s\r\n\r\n", tc.line)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%q: %d, want %d", tc.line, resp.StatusCode, tc.status)
		}
	}
	_, refused, _, _ := e.hooks.snapshot()
	if len(refused) != 2 || refused[0].status != 421 || refused[1].status != 405 {
		t.Errorf("refused %+v", refused)
	}
}

// Credentials: the upstream sees the sidecar's value, never the agent's; other hosts get nothing.
func TestCredentialInjection(t *testing.T) {
	inj := &staticInjector{host: apiHost, header: "X-Api-Key", value: "sk-sidecar-secret"}
	e := newEnv(t, envOptions{creds: inj})
	up := e.upstream(apiHost)
	other := e.upstream("other.example.test")
	for _, h2 := range []bool{false, true} {
		c := e.client(h2)
		hdr := http.Header{
			"X-Api-Key":           {"agent-own-key"},
			"Authorization":       {"Bearer agent-token"},
			"Proxy-Authorization": {"Basic YWdlbnQ6cHc="},
		}
		if st, _ := get(t, c, "GET", e.url(apiHost, "/v1/messages"), nil, hdr); st != 200 {
			t.Fatalf("status %d", st)
		}
		if st, _ := get(t, c, "GET", e.url("other.example.test", "/x"), nil, hdr); st != 200 {
			t.Fatalf("status %d", st)
		}
	}
	for _, r := range up.Requests() {
		if got := r.Header.Values("X-Api-Key"); len(got) != 1 || got[0] != "sk-sidecar-secret" {
			t.Errorf("upstream x-api-key %q", got)
		}
		if r.Header.Get("Authorization") != "" || r.Header.Get("Proxy-Authorization") != "" {
			t.Errorf("agent credentials reached the upstream: %v", r.Header)
		}
	}
	for _, r := range other.Requests() {
		if r.Header.Get("X-Api-Key") != "agent-own-key" || r.Header.Get("Proxy-Authorization") != "" {
			t.Errorf("other host headers %v", r.Header)
		}
	}
	// Complete runs after the response is sent: the next request's may come first.
	injected := 0
	for _, dc := range e.hooks.waitDone(t, 4) {
		got := dc.res.Injected
		switch {
		case dc.req.Host == apiHost && (len(got) != 1 || got[0] != "X-Api-Key"):
			t.Errorf("%s: Injected %v", dc.req.Host, got)
		case dc.req.Host == apiHost:
			injected++
		case len(got) != 0:
			t.Errorf("%s: Injected %v, want nothing", dc.req.Host, got)
		}
	}
	if injected != 2 {
		t.Errorf("%d completions record the injection, want 2", injected)
	}
	if strings.Contains(e.logs.String(), "sk-sidecar-secret") {
		t.Error("the credential appears in the log")
	}
}

// staticInjector stands in for credentials.Injector (tested with the real one in credentials_test).
type staticInjector struct {
	host, header, value string
	err                 error
}

func (s *staticInjector) Apply(host string, h http.Header) ([]string, error) {
	h.Del("Proxy-Authorization")
	if host != s.host {
		return nil, nil
	}
	if s.err != nil {
		return nil, s.err
	}
	h.Del("Authorization")
	h.Del("X-Api-Key")
	h.Set(s.header, s.value)
	return []string{s.header}, nil
}

// A credential that cannot be read aborts the request before any upstream byte.
func TestCredentialFailureAborts(t *testing.T) {
	inj := &staticInjector{host: apiHost, header: "X-Api-Key", err: errors.New("credential injection failed: file gone")}
	e := newEnv(t, envOptions{creds: inj})
	up := e.upstream(apiHost)
	st, body := get(t, e.client(false), "GET", e.url(apiHost, "/v1/messages"), nil, nil)
	if st != 502 || !strings.Contains(body, "credential injection failed") {
		t.Errorf("got %d %q", st, body)
	}
	done := e.hooks.waitDone(t, 1)
	if r := done[0].res; r.ErrClass != judge.ErrorCredentials || r.UpstreamStatus != 0 {
		t.Errorf("result %+v", r)
	}
	if up.Conns() != 0 || e.dials.Load() != 0 {
		t.Errorf("upstream touched: %d conns, %d dials", up.Conns(), e.dials.Load())
	}
}

// An upstream whose certificate the sidecar does not trust is an ABORT (connector_network_error, 502).
func TestUpstreamBadCertificate(t *testing.T) {
	e := newEnv(t, envOptions{})
	rogue := testutil.NewCA(t, "rogue CA")
	up := e.upstreamWithCA(apiHost, rogue)
	for _, h2 := range []bool{false, true} {
		st, body := get(t, e.client(h2), "GET", e.url(apiHost, "/v1/models"), nil, nil)
		if st != 502 || !strings.Contains(body, "certificate") {
			t.Errorf("h2=%v: got %d %q", h2, st, body)
		}
	}
	done := e.hooks.waitDone(t, 2)
	for _, d := range done {
		if d.res.ErrClass != judge.ErrorNetwork || d.res.UpstreamStatus != 0 {
			t.Errorf("result %+v", d.res)
		}
		var uerr x509.UnknownAuthorityError
		if !errors.As(d.res.Err, &uerr) {
			t.Errorf("error %v is not an unknown-authority error", d.res.Err)
		}
	}
	if n := len(up.Requests()); n != 0 {
		t.Errorf("upstream served %d requests over an unverified connection", n)
	}
}

// An upstream that does not answer in time is a 504 with connector_network_error.
func TestUpstreamTimeout(t *testing.T) {
	e := newEnv(t, envOptions{cfg: func(c *Config) { c.UpstreamResponseTimeout = duration.Of(200 * time.Millisecond) }})
	up := e.upstream(apiHost)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	up.SetHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}), false)
	st, _ := get(t, e.client(false), "GET", e.url(apiHost, "/slow"), nil, nil)
	if st != 504 {
		t.Errorf("status %d, want 504", st)
	}
	done := e.hooks.waitDone(t, 1)
	if r := done[0].res; r.ErrClass != judge.ErrorNetwork || !isTimeout(r.Err) {
		t.Errorf("result %+v", r)
	}
}

// A dial the daemon refuses (e.g. a private address) is a 502 ABORT too.
func TestDialRefused(t *testing.T) {
	e := newEnv(t, envOptions{})
	st, _ := get(t, e.client(false), "GET", e.url("noroute.example.test", "/x"), nil, nil)
	if st != 502 {
		t.Errorf("status %d", st)
	}
	done := e.hooks.waitDone(t, 1)
	if r := done[0].res; r.ErrClass != judge.ErrorNetwork || !strings.Contains(r.Err.Error(), "no route to noroute.example.test") {
		t.Errorf("result %+v", r)
	}
}

// Two agent connections to one host share one pooled upstream connection.
func TestUpstreamPoolReuse(t *testing.T) {
	e := newEnv(t, envOptions{})
	up := e.upstream(apiHost)
	for _, h2 := range []bool{false, true, false} {
		tr := e.transport(h2, e.caPool())
		if st, _ := get(t, &http.Client{Transport: tr}, "GET", e.url(apiHost, "/x"), nil, nil); st != 200 {
			t.Fatalf("status %d", st)
		}
		tr.CloseIdleConnections()
	}
	if a := e.accepts.Load(); a != 3 {
		t.Fatalf("agent connections %d, want 3", a)
	}
	if n := up.Conns(); n != 1 {
		t.Errorf("upstream connections %d, want 1 (pooled)", n)
	}
	done := e.hooks.waitDone(t, 3)
	if done[0].res.Dialed != done[1].res.Dialed || done[1].res.Dialed != done[2].res.Dialed {
		t.Errorf("dialed %v %v %v", done[0].res.Dialed, done[1].res.Dialed, done[2].res.Dialed)
	}
	if p := up.Requests()[0].Proto; p != "HTTP/2.0" {
		t.Errorf("upstream proto %s, want HTTP/2.0 (negotiated by the pool)", p)
	}
}

// A client that does not trust the firma CA fails; a non-strict host then falls back, a strict one
// does not. Nothing reaches the upstream.
func TestHandshakeFailureFallback(t *testing.T) {
	e := newEnv(t, envOptions{cfg: func(c *Config) {
		c.StrictHosts = []string{"strict.example.test"}
		c.FallbackPeriod = duration.Of(time.Minute)
	}})
	now := time.Now()
	e.icpt.now = func() time.Time { return now }
	up := e.upstream(apiHost)
	strictUp := e.upstream("strict.example.test")
	untrusting := &http.Client{Transport: e.transport(false, testutil.NewCA(t, "other").Pool())}
	for _, host := range []string{apiHost, "strict.example.test"} {
		_, err := untrusting.Get(e.url(host, "/x"))
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("%s: untrusting client: %v", host, err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(e.serveErrors()) < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	_, _, _, hs := e.hooks.snapshot()
	if len(hs) != 2 {
		t.Fatalf("HandshakeFailed called %d times, want 2", len(hs))
	}
	strictOf := map[string]bool{}
	for _, h := range hs {
		strictOf[h.host] = h.strict
	}
	if s, ok := strictOf[apiHost]; !ok || s {
		t.Errorf("handshake failures %+v: want %s reported non-strict", hs, apiHost)
	}
	if s, ok := strictOf["strict.example.test"]; !ok || !s {
		t.Errorf("handshake failures %+v: want strict.example.test reported strict", hs)
	}
	for _, err := range e.serveErrors() {
		if !errors.Is(err, ErrHandshake) {
			t.Errorf("Serve error %v", err)
		}
	}
	if e.icpt.Route(e.flow(), "API.example.test.") != ModeFallback {
		t.Error("non-strict host does not fall back after a failed handshake")
	}
	if e.icpt.Route(&judge.Flow{AgentID: "another-agent"}, apiHost) != ModeIntercept {
		t.Error("one agent's failed handshake put another agent into fallback")
	}
	if e.icpt.Route(e.flow(), "strict.example.test") != ModeIntercept {
		t.Error("strict host falls back")
	}
	if e.icpt.Route(e.flow(), "other.example.test") != ModeIntercept {
		t.Error("an untouched host falls back")
	}
	for _, h := range hs {
		if !strings.Contains(h.reason, "certificate") {
			t.Errorf("handshake record %q does not say why", h.reason)
		}
	}
	logs := e.logs.String()
	if !strings.Contains(logs, `"message":"mitm_handshake_failed"`) || !strings.Contains(logs, `"host":"api.example.test"`) {
		t.Errorf("no mitm_handshake_failed line with the host:\n%s", logs)
	}
	if up.Conns()+strictUp.Conns() != 0 {
		t.Error("a failed handshake reached an upstream")
	}
	now = now.Add(61 * time.Second)
	if e.icpt.Route(e.flow(), apiHost) != ModeIntercept {
		t.Error("fallback did not expire after fallback_period")
	}
}

// Serve returns when its context ends, even with an idle keep-alive connection open.
func TestServeStopsOnContext(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.upstream(apiHost)
	ca := e.caPool()
	server, client := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- e.icpt.ServeTLS(ctx, server, e.flow(), TLSConn{SNI: apiHost, Port: 443})
	}()
	tc := tls.Client(client, &tls.Config{ServerName: apiHost, RootCAs: ca})
	fmt.Fprintf(tc, "GET /x HTTP/1.1\r\nHost: %s\r\n\r\n", apiHost)
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	cancel() // the connection is now idle in keep-alive
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
}

// Alt-Svc never reaches the agent (it would point it at QUIC), other upstream headers do; the
// startup line counts the configured hosts.
func TestResponseHeadersAndStartupLine(t *testing.T) {
	e := newEnv(t, envOptions{})
	up := e.upstream(apiHost)
	up.SetHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Alt-Svc", `h3=":443"; ma=86400`)
		w.Header().Set("X-Request-Id", "req-1")
		w.WriteHeader(201)
	}), false)
	resp, err := e.client(true).Get(e.url(apiHost, "/v1/x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 201 || resp.Header.Get("Alt-Svc") != "" || resp.Header.Get("X-Request-Id") != "req-1" {
		t.Errorf("got %d %v", resp.StatusCode, resp.Header)
	}
	if !strings.Contains(e.logs.String(), `"message":"https mitm enabled for 3 hosts (0 bypass, 0 strict)"`) {
		t.Errorf("no startup line:\n%s", e.logs.String())
	}
}

// A client dialing an IP literal sends no SNI: the leaf carries an IP SAN and the upstream is
// verified against the IP.
func TestIPLiteralWithoutSNI(t *testing.T) {
	e := newEnv(t, envOptions{})
	up := e.upstream("127.0.0.1")
	st, body := get(t, e.client(false), "GET", e.url("127.0.0.1", "/ip"), nil, nil)
	if st != 200 || body != "hello from 127.0.0.1 /ip\n" {
		t.Fatalf("got %d %q", st, body)
	}
	if m := e.meta(0); m.SNI != "" || m.Host != "127.0.0.1" {
		t.Errorf("meta %+v", m)
	}
	if n := len(up.Requests()); n != 1 {
		t.Errorf("upstream saw %d requests", n)
	}
}

// A client that hangs up after its ClientHello, without an alert, is recorded but opens no
// fallback: an agent cannot downgrade an intercepted host by closing handshakes.
func TestBareCloseOpensNoFallback(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.upstream(apiHost)
	hello := clientHello(t, apiHost)
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write(hello)
	c.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, c) // the server's flight, then its close
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, _, _, hs := e.hooks.snapshot(); len(hs) == 1 {
			if strings.Contains(hs[0].reason, "rejected") {
				t.Errorf("a bare close is recorded as a rejected certificate: %q", hs[0].reason)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the failed handshake was not recorded")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if e.icpt.Route(e.flow(), apiHost) != ModeIntercept {
		t.Fatal("a bare close put the host into fallback")
	}
}

// clientHello returns the first flight of a TLS client for host.
func clientHello(t *testing.T, host string) []byte {
	t.Helper()
	a, b := net.Pipe()
	go tls.Client(a, &tls.Config{ServerName: host}).Handshake()
	buf := make([]byte, 4096)
	n, err := b.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	b.Close()
	return buf[:n]
}

func TestAlertInRecords(t *testing.T) {
	hello := []byte{0x16, 3, 1, 0, 2, 1, 0}
	for _, tc := range []struct {
		name string
		b    []byte
		want bool
	}{
		{"nothing after the hello", hello, false},
		{"unknown_ca alert", append(append([]byte{}, hello...), 0x15, 3, 3, 0, 2, 2, 48), true},
		{"bad_certificate alert", append(append([]byte{}, hello...), 0x15, 3, 3, 0, 2, 2, 42), true},
		{"close_notify", append(append([]byte{}, hello...), 0x15, 3, 3, 0, 2, 1, 0), false},
		{"ccs then encrypted alert", append(append([]byte{}, hello...), 0x14, 3, 3, 0, 1, 1, 0x17, 3, 3, 0, 19,
			1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19), true},
		{"truncated", append(append([]byte{}, hello...), 0x15, 3, 3, 0, 2), false},
	} {
		if got := alertInRecords(tc.b); got != tc.want {
			t.Errorf("%s: %v", tc.name, got)
		}
	}
}
