package l7

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/daemon/judge"
	"github.com/openfirma/firma/internal/testutil"
	"github.com/openfirma/firma/policies"
)

const apiHost = "api.example.test"

// seenRequest is what the judge was asked about one request.
type seenRequest struct {
	Method string
	Host   string
	Port   int
	Path   string
	Mode   judge.Mode
	SNI    string
}

type refusal struct {
	req    seenRequest
	status int // the status the engine answers this refusal with
	reason string
}

type doneCall struct {
	req seenRequest
	v   judge.Verdict
	res judge.Result
}

type handshakeCall struct {
	host   string
	reason string
	strict bool
}

// fakeJudge stands in for the sidecar's judge: it allows every request but those whose path starts
// with a deny prefix, numbers its allowing verdicts (the reason is the number, so that Complete can
// be matched to Decide), and records every call.
type fakeJudge struct {
	mu         sync.Mutex
	decided    []seenRequest
	refused    []refusal
	done       []doneCall
	handshakes []handshakeCall
	// deny lists path prefixes to deny.
	deny []string
}

var _ judge.RequestDecider = (*fakeJudge)(nil)

// NeedsBody: the fake reads no body.
func (h *fakeJudge) NeedsBody(*judge.Flow, judge.Intent) bool { return false }

func (h *fakeJudge) MaxBodyBytes() int64 { return policies.DefaultMaxBodyBytes }

func (h *fakeJudge) Decide(_ context.Context, f *judge.Flow, in judge.Intent) judge.Verdict {
	h.mu.Lock()
	defer h.mu.Unlock()
	req := seenRequest{Method: in.Method, Host: in.Host, Port: in.Port, Path: in.Path, Mode: in.Mode, SNI: in.SNI}
	deny := judge.Verdict{Decision: policies.Decision{Outcome: policies.Deny, Reason: in.Refuse}}
	switch {
	case strings.HasPrefix(in.Refuse, judge.ReasonHandshake):
		h.handshakes = append(h.handshakes, handshakeCall{in.Host, in.Refuse, strings.Contains(in.Refuse, "(strict host)")})
		return deny
	case in.Refuse != "":
		status := http.StatusBadRequest
		switch {
		case strings.HasPrefix(in.Refuse, judge.ReasonFronting):
			status = http.StatusMisdirectedRequest
		case in.Refuse == judge.ReasonConnectInMITM:
			status = http.StatusMethodNotAllowed
		}
		h.refused = append(h.refused, refusal{req, status, in.Refuse})
		return deny
	}
	h.decided = append(h.decided, req)
	for _, p := range h.deny {
		if strings.HasPrefix(in.Path, p) {
			return judge.Verdict{Decision: policies.Decision{Outcome: policies.Deny, Reason: "path " + p + " is forbidden"}}
		}
	}
	return judge.Verdict{Decision: policies.Decision{Outcome: policies.Allow, Reason: strconv.Itoa(len(h.decided))}}
}

func (h *fakeJudge) Complete(v judge.Verdict, res judge.Result) {
	h.mu.Lock()
	defer h.mu.Unlock()
	n, _ := strconv.Atoi(v.Reason)
	var req seenRequest
	if n > 0 && n <= len(h.decided) {
		req = h.decided[n-1]
	}
	h.done = append(h.done, doneCall{req, v, res})
}

func (h *fakeJudge) snapshot() (decided []seenRequest, refused []refusal, done []doneCall, hs []handshakeCall) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append(decided, h.decided...), append(refused, h.refused...), append(done, h.done...),
		append(hs, h.handshakes...)
}

// waitDone waits until Complete has been called n times (it runs after the response is sent).
func (h *fakeJudge) waitDone(tb testing.TB, n int) []doneCall {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, _, done, _ := h.snapshot()
		if len(done) >= n {
			return done
		}
		if time.Now().After(deadline) {
			tb.Fatalf("Complete called %d times, want %d", len(done), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type envOptions struct {
	cfg   func(*Config)
	creds Injector
	hooks *fakeJudge
	// decider, when set, is the judge the engine asks instead of hooks (a real judge.Judge).
	decider judge.RequestDecider
	agent   string // the agent id of every connection (default "agent-1")
	monitor bool   // the agent is in monitor mode
}

// env is a running interceptor behind a loopback listener, with a sniffing accept loop like the
// daemon's, a test CA for upstreams and a dial function that routes hosts to fake upstreams.
type env struct {
	t       testing.TB
	ca      *CA
	upCA    *testutil.CA
	icpt    *Engine
	hooks   *fakeJudge
	agent   string
	monitor bool
	addr    string
	port    int
	logs    *testutil.SyncBuffer
	accepts atomic.Int64
	dials   atomic.Int64

	mu       sync.Mutex
	routes   map[string]string // host → upstream address
	serveErr []error
	metas    []TLSConn
}

func newEnv(tb testing.TB, o envOptions) *env {
	tb.Helper()
	e := &env{t: tb, routes: map[string]string{}, logs: &testutil.SyncBuffer{}}
	e.hooks = o.hooks
	if e.hooks == nil {
		e.hooks = &fakeJudge{}
	}
	e.agent, e.monitor = o.agent, o.monitor
	if e.agent == "" {
		e.agent = "agent-1"
	}
	log := zerolog.New(e.logs).Level(zerolog.DebugLevel)
	ca, err := LoadOrCreateCA(tb.TempDir()+"/ca", log)
	if err != nil {
		tb.Fatal(err)
	}
	e.ca = ca
	e.upCA = testutil.NewCA(tb, "upstream test CA")
	cfg := DefaultConfig()
	cfg.Enabled = true
	cfg.InterceptHosts = []string{apiHost, "*.example.test", "127.0.0.1"}
	if o.cfg != nil {
		o.cfg(&cfg)
	}
	var decider judge.RequestDecider = e.hooks
	if o.decider != nil {
		decider = o.decider
	}
	e.icpt, err = New(Options{
		Config: cfg, CA: ca, Judge: decider, Dial: e.dial, RootCAs: e.upCA.Pool(),
		Credentials: o.creds, Log: log,
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { e.icpt.Close() })

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	e.addr = ln.Addr().String()
	e.port = ln.Addr().(*net.TCPAddr).Port
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	tb.Cleanup(func() {
		cancel()
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.accepts.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				e.serve(ctx, c)
			}()
		}
	}()
	return e
}

// serve does what the daemon does: sniff the ClientHello, then hand a replaying conn to Serve.
func (e *env) serve(ctx context.Context, c net.Conn) {
	hello, prefix, err := sniffClientHello(c)
	if err != nil {
		c.Close()
		return
	}
	host := hello.ServerName
	if host == "" {
		host = "127.0.0.1"
	}
	tc := TLSConn{SNI: hello.ServerName, Host: host, ALPN: hello.SupportedProtos, Port: e.port}
	f := e.flow()
	e.mu.Lock()
	e.metas = append(e.metas, tc)
	e.mu.Unlock()
	if e.icpt.Route(f, host) != ModeIntercept {
		c.Close()
		return
	}
	err = e.icpt.ServeTLS(ctx, &replayConn{Conn: c, r: io.MultiReader(bytes.NewReader(prefix), c)}, f, tc)
	if err != nil {
		e.mu.Lock()
		e.serveErr = append(e.serveErr, err)
		e.mu.Unlock()
	}
}

func (e *env) dial(ctx context.Context, _, hostport string) (net.Conn, error) {
	e.dials.Add(1)
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	addr, ok := e.routes[host]
	e.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("no route to %s", host)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// upstream starts a fake HTTPS upstream for host, certified by the upstream test CA.
func (e *env) upstream(host string) *testutil.Upstream {
	return e.upstreamWithCA(host, e.upCA)
}

func (e *env) upstreamWithCA(host string, ca *testutil.CA) *testutil.Upstream {
	e.t.Helper()
	u := testutil.NewHTTPSUpstream(e.t, host, netip.MustParseAddrPort("127.0.0.1:0"), ca, host)
	e.mu.Lock()
	e.routes[host] = u.Addr.String()
	e.mu.Unlock()
	return u
}

func (e *env) url(host, path string) string {
	return fmt.Sprintf("https://%s:%d%s", host, e.port, path)
}

// transport is an agent's HTTP client transport that trusts roots and reaches every host through
// the interceptor's listener.
func (e *env) transport(h2 bool, roots *x509.CertPool) *http.Transport {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", e.addr)
		},
		TLSClientConfig:   &tls.Config{RootCAs: roots},
		ForceAttemptHTTP2: h2,
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	e.t.Cleanup(tr.CloseIdleConnections)
	return tr
}

func (e *env) client(h2 bool) *http.Client {
	return &http.Client{Transport: e.transport(h2, e.caPool()), Timeout: 10 * time.Second}
}

func (e *env) caPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(e.ca.Certificate())
	return p
}

func (e *env) serveErrors() []error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]error(nil), e.serveErr...)
}

// get performs one request and returns status and body.
func get(tb testing.TB, c *http.Client, method, url string, body io.Reader, hdr http.Header) (int, string) {
	tb.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		tb.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	return resp.StatusCode, string(b)
}

// sniffClientHello reads the first flight of a TLS client and returns what the daemon's sniffer
// would: the ClientHello's server name and ALPN, and the bytes consumed (to be replayed).
func sniffClientHello(c net.Conn) (*tls.ClientHelloInfo, []byte, error) {
	rec := &recordingConn{Conn: c}
	errSniffed := errors.New("sniffed")
	var hello *tls.ClientHelloInfo
	srv := tls.Server(rec, &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		hello = &tls.ClientHelloInfo{ServerName: h.ServerName, SupportedProtos: append([]string(nil), h.SupportedProtos...)}
		return nil, errSniffed
	}})
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	err := srv.Handshake()
	c.SetReadDeadline(time.Time{})
	if !errors.Is(err, errSniffed) {
		return nil, nil, fmt.Errorf("not a TLS ClientHello: %v", err)
	}
	return hello, rec.buf.Bytes(), nil
}

// recordingConn records what is read and swallows writes (no alert reaches the client).
type recordingConn struct {
	net.Conn
	buf bytes.Buffer
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.buf.Write(p[:n])
	return n, err
}

func (c *recordingConn) Write(p []byte) (int, error) { return len(p), nil }
func (c *recordingConn) Close() error                { return nil }

// replayConn returns the sniffed prefix before the rest of the connection.
type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// meta returns the TLSConn of the n-th accepted agent connection.
func (e *env) meta(n int) TLSConn {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.metas[n]
}

// flow is the judged flow of every agent connection in the env.
func (e *env) flow() *judge.Flow {
	return &judge.Flow{AgentID: e.agent, Monitor: e.monitor, OrigDst: netip.MustParseAddrPort("127.0.9.7:443"), Start: time.Now()}
}

// upperEchoWebSocket is an upstream that accepts a WebSocket upgrade and then echoes every line it
// reads, uppercased, until the client closes.
func upperEchoWebSocket() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			http.Error(w, "no upgrade", 400)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			brw.WriteString(strings.ToUpper(line))
			brw.Flush()
		}
	})
}
