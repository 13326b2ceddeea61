package l7

import (
	"bytes"
	"context"
	"log"
	"net"
	"net/http"
	"regexp"
	"sync"

	"github.com/openfirma/firma/daemon/judge"
	"github.com/openfirma/firma/policies"
)

// ReasonMalformed is the refusal recorded when the HTTP server rejects what the agent sent before
// any request could be judged (a malformed request line or header, headers too large).
const ReasonMalformed = "malformed HTTP request"

// PlainConn describes a plain-HTTP agent connection.
type PlainConn struct {
	// Proxy: the agent speaks the explicit proxy protocol (absolute-form requests and CONNECT).
	Proxy bool
	// Port is the default port of a Host header without one (the original destination's port).
	Port int
	// Name is the destination's name when a request carries no Host: a learned DNS name or the
	// original address.
	Name string
}

// ServePlain serves plain HTTP/1.x — and HTTP/2 with prior knowledge (h2c) — on conn, judging
// every request (keep-alive and pipelined ones included) and forwarding allowed ones to the host
// each names. With Proxy it speaks the explicit proxy protocol. ServePlain closes conn.
func (e *Engine) ServePlain(ctx context.Context, conn net.Conn, f *judge.Flow, pc PlainConn) {
	defer conn.Close()
	c := &agentConn{e: e, f: f, scheme: "http", mode: judge.ModeHTTP, proxy: pc.Proxy, port: pc.Port, name: pc.Name}
	c.serve(ctx, conn, conn, false)
}

// agentConn is one agent connection served by the engine, either entry point. It tracks requests in
// flight (upgraded ones included) so that serve returns only after every one has completed.
type agentConn struct {
	e      *Engine
	f      *judge.Flow
	scheme string     // "https" (TLS-terminated) or "http"
	mode   judge.Mode // mitm or http
	sni    string

	// TLS: the connection's host and port; every request must name them.
	host string
	port int
	// Plain: the explicit proxy protocol, and the name of the destination for Host-less requests.
	proxy bool
	name  string

	// ctx is the connection's: CONNECT tunnels outlive the request that opened them.
	ctx context.Context

	mu      sync.Mutex
	idle    *sync.Cond
	active  int
	tunnels sync.WaitGroup // CONNECT tunnels hijacked from this connection
}

// serve runs a one-connection http.Server on conn (raw is the TCP connection under it, closed when
// ctx ends). h2 selects HTTP/2 (ALPN agreed on it); a plain connection also accepts h2c with prior
// knowledge.
func (c *agentConn) serve(ctx context.Context, raw, conn net.Conn, h2 bool) {
	c.ctx = ctx
	c.idle = sync.NewCond(&c.mu)
	var ln *oneConnListener
	srv := &http.Server{
		Handler:           c,
		ReadHeaderTimeout: c.e.cfg.ReadHeaderTimeout.Duration,
		IdleTimeout:       c.e.cfg.IdleTimeout.Duration,
		MaxHeaderBytes:    1 << 20,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: c.e.cfg.MaxConcurrentStreams},
		ErrorLog:          log.New(debugWriter{c.e.log}, "", 0),
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateClosed || st == http.StateHijacked {
				ln.Close() // Serve returns
			}
		},
	}
	if c.scheme == "http" {
		srv.Protocols = new(http.Protocols)
		srv.Protocols.SetHTTP1(true)
		srv.Protocols.SetUnencryptedHTTP2(true)
	}
	served := conn
	if !h2 {
		// HTTP/1.x: watch for the server's own rejections. (HTTP/2 needs the *tls.Conn itself, and
		// reports protocol errors as frames, not as responses.)
		served = &rejectWatcher{Conn: conn, c: c}
	}
	ln = newOneConnListener(served)
	// On ctx end close the raw connection: tls.Conn.Close would first try to send close_notify.
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	// Serve runs here, not in a goroutine of its own: an idle connection costs the server's
	// connection goroutine and this one, no third.
	srv.Serve(ln)
	c.wait()
	c.tunnels.Wait()
}

func (c *agentConn) enter() {
	c.mu.Lock()
	c.active++
	c.mu.Unlock()
}

func (c *agentConn) leave() {
	c.mu.Lock()
	c.active--
	if c.active == 0 {
		c.idle.Broadcast()
	}
	c.mu.Unlock()
}

func (c *agentConn) wait() {
	c.mu.Lock()
	for c.active > 0 {
		c.idle.Wait()
	}
	c.mu.Unlock()
}

// serverRejection matches the response net/http writes itself, straight to the connection, when it
// refuses what the client sent before any handler runs (400, 431, 501, 505…).
var serverRejection = regexp.MustCompile(`^HTTP/1\.1 ([45]\d\d) [^\r\n]*\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n`)

// rejectWatcher turns the HTTP server's own rejections into decisions, so that a malformed request
// leaves a record like every other refusal.
type rejectWatcher struct {
	net.Conn
	c *agentConn
}

func (w *rejectWatcher) Write(p []byte) (int, error) {
	if bytes.HasPrefix(p, []byte("HTTP/1.1 ")) {
		if m := serverRejection.FindSubmatch(p); m != nil {
			w.c.refuseMalformed(string(m[1]))
		}
	}
	return w.Conn.Write(p)
}

func (c *agentConn) refuseMalformed(status string) {
	host := c.host
	if host == "" {
		host = c.name
	}
	if host == "" {
		host = "(unknown)"
	}
	c.e.judge.Decide(context.Background(), c.f, judge.Intent{Method: policies.MethodConnect, Host: host, Port: c.port,
		Transport: c.scheme, Mode: c.mode, SNI: c.sni, Refuse: ReasonMalformed + " (" + status + ")"})
}

// oneConnListener hands out one connection, then blocks until closed.
type oneConnListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
	addr   net.Addr
}

func newOneConnListener(c net.Conn) *oneConnListener {
	l := &oneConnListener{conns: make(chan net.Conn, 1), closed: make(chan struct{}), addr: c.LocalAddr()}
	l.conns <- c
	return l
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return l.addr }
