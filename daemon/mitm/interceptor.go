package mitm

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/internal/hostname"
	"github.com/openfirma/firma/internal/logfields"
)

// DialFunc opens an upstream TCP connection. The daemon implements it: it resolves host with its own
// resolver, refuses addresses that policy forbids (loopback, private, metadata unless configured) and
// dials exactly the classified address. The context carries the ConnMeta of the agent connection
// whose request caused the dial (MetaFromContext), but a pooled connection is later reused by
// requests from other agent connections to the same host and port.
type DialFunc func(ctx context.Context, host string, port int) (net.Conn, error)

// Hooks is the daemon's side of every request. The interceptor calls them from many goroutines.
type Hooks interface {
	// Decide judges one L7 request and writes its audit record before returning. No upstream byte
	// is sent for req before Decide returns an allowing verdict.
	Decide(ctx context.Context, meta *ConnMeta, req *Request) Verdict
	// Refused records a request the interceptor refused by itself without asking Decide: a
	// Host/:authority that does not match the connection's host (status 421, domain fronting) or a
	// CONNECT inside the intercepted connection (405). The daemon writes a DENY record with reason.
	Refused(ctx context.Context, meta *ConnMeta, req *Request, status int, reason string)
	// Done reports how a request that Decide allowed ended. It is called exactly once per allowing
	// verdict, after the response (or the WebSocket relay) has finished.
	Done(ctx context.Context, meta *ConnMeta, req *Request, v Verdict, res Result)
	// HandshakeFailed reports that the agent's TLS handshake with the minted leaf failed
	// (mitm_handshake_failed). For a strict host the daemon writes a DENY record; otherwise it may
	// record that the host now falls back to CONNECT-only (Route returns ModeFallback).
	HandshakeFailed(ctx context.Context, meta *ConnMeta, err error, strict bool)
}

// Injector sets upstream credentials on an allowed request. *credentials.Injector implements it.
type Injector interface {
	// Apply strips the agent's credential headers and sets the sidecar's for host. It returns the
	// names of the headers it set; an error means the request must not be sent.
	Apply(host string, h http.Header) ([]string, error)
}

// ConnMeta describes one intercepted agent connection. The daemon fills the exported fields before
// Serve; Serve fills Host (when empty) and Negotiated. Hooks receive the same pointer.
type ConnMeta struct {
	SNI      string         // server name from the ClientHello; "" when the client sent none
	Host     string         // the connection's host: the SNI, or the name/IP the daemon judged; "" = SNI
	ALPN     []string       // protocols the client offered, from the ClientHello
	Port     int            // the port the agent connected to (443 for HTTPS)
	OrigDst  netip.AddrPort // the agent's original destination: recorded, never dialed
	Identity any            // opaque to the interceptor: the daemon's agent/connection identity

	Negotiated string // ALPN agreed with the agent: "h2", "http/1.1" or "" (HTTP/1.1)
}

// Request is one L7 intent on an intercepted connection.
type Request struct {
	Method        string
	Host          string // the connection's normalized host (== ConnMeta.Host), without port
	Port          int
	Path          string // path and query as sent, e.g. "/v1/models?limit=5"; "*" for OPTIONS *
	Proto         string // "HTTP/1.1", "HTTP/2.0"
	Upgrade       string // requested protocol upgrade, e.g. "websocket"; "" for plain requests
	ContentLength int64  // -1 when unknown (chunked, HTTP/2 without content-length)
	// Authority is the Host header or :authority the client sent; only differs from Host (modulo
	// case and port) on requests passed to Refused.
	Authority string
}

// Verdict is Decide's answer.
type Verdict struct {
	Allow  bool
	Reason string // for a deny: sent to the agent in the 403 body
	// Ref is opaque to the interceptor and handed back in Done, so that the daemon can link the
	// completion to its decision record.
	Ref any
}

// Error classes in Result.Error.
const (
	ErrorNetwork        = "connector_network_error"     // dialing, upstream TLS, timeout, reset
	ErrorCredentials    = "credential injection failed" // nothing was sent upstream
	ErrorClientCanceled = "client_canceled"             // the agent went away first
)

// Result is how an allowed request ended.
type Result struct {
	Status         int   // status sent to the agent (0 when the agent went away before any)
	UpstreamStatus int   // status the upstream answered; 0 when none
	BytesUp        int64 // request body bytes (after a WebSocket upgrade: bytes relayed to the upstream)
	BytesDown      int64 // response body bytes (after an upgrade: bytes relayed to the agent)
	Duration       time.Duration
	Upstream       string   // remote address of the upstream connection used
	Reused         bool     // that connection came from the pool
	Injected       []string // names of credential headers set (never their values)
	Error          string   // "" on success, else one of the Error* classes: an ABORT
	Err            error    // detail behind Error; never holds a credential value
}

// Errors Serve returns.
var (
	ErrHandshake = errors.New("mitm handshake failed")
	ErrNoHost    = errors.New("connection has neither SNI nor host")
)

// Options configure New.
type Options struct {
	Config      Config // validated
	CA          *CA
	Hooks       Hooks
	Dial        DialFunc
	RootCAs     *x509.CertPool // verifies upstreams; nil = system roots (UpstreamRoots adds a ca_file)
	Credentials Injector       // nil = inject nothing (Proxy-Authorization is still stripped)
	Log         zerolog.Logger
}

// Interceptor terminates TLS on intercepted connections, judges every request through Hooks and
// forwards allowed ones over a shared pool of verified upstream connections.
type Interceptor struct {
	cfg       Config
	hosts     *hostLists
	leaves    *leafCache
	hooks     Hooks
	creds     Injector
	transport *http.Transport
	proxy     *httputil.ReverseProxy
	log       zerolog.Logger
	now       func() time.Time

	mu       sync.Mutex
	fallback map[string]time.Time // host → end of its CONNECT-only period
}

// New builds an Interceptor. It opens no connection.
func New(opts Options) (*Interceptor, error) {
	switch {
	case opts.CA == nil:
		return nil, errors.New("mitm: no CA")
	case opts.Hooks == nil:
		return nil, errors.New("mitm: no hooks")
	case opts.Dial == nil:
		return nil, errors.New("mitm: no dial function")
	}
	cfg := opts.Config
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("mitm config: %w", err)
	}
	i := &Interceptor{
		cfg:      cfg,
		hosts:    cfg.compiled,
		leaves:   newLeafCache(opts.CA, cfg.LeafLifetime.Duration, cfg.LeafCacheSize),
		hooks:    opts.Hooks,
		creds:    opts.Credentials,
		log:      opts.Log,
		now:      time.Now,
		fallback: map[string]time.Time{},
	}
	i.transport = newTransport(&cfg, opts.Dial, opts.RootCAs)
	i.proxy = i.newReverseProxy()
	if cfg.Enabled {
		opts.Log.Info().Int(logfields.InterceptHosts, len(i.hosts.intercept)).
			Int(logfields.BypassHosts, len(i.hosts.bypass)).Int(logfields.StrictHosts, len(i.hosts.strict)).
			Str(logfields.Fingerprint, opts.CA.Fingerprint()).
			Msgf("https mitm enabled for %d hosts (%d bypass, %d strict)",
				len(i.hosts.intercept), len(i.hosts.bypass), len(i.hosts.strict))
	}
	return i, nil
}

// Close drops idle upstream connections. Serve calls in flight are ended by their contexts.
func (i *Interceptor) Close() error {
	i.transport.CloseIdleConnections()
	return nil
}

// Route is how the daemon treats a TLS connection to host: ModeIntercept (call Serve), ModeBypass
// or ModeDefault (CONNECT-only), or ModeFallback (CONNECT-only, audited as a fallback, because a
// recent MITM handshake to this non-strict host failed).
func (i *Interceptor) Route(host string) Mode {
	m := i.cfg.Mode(host)
	if m == ModeIntercept && i.ShouldFallback(host) {
		return ModeFallback
	}
	return m
}

// Strict reports whether host is in strict_hosts.
func (i *Interceptor) Strict(host string) bool { return i.hosts.strict.Match(host) }

// ShouldFallback reports whether host is inside its fallback period. Strict hosts never fall back.
func (i *Interceptor) ShouldFallback(host string) bool {
	host = hostname.Normalize(host)
	if i.hosts.strict.Match(host) {
		return false
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	until, ok := i.fallback[host]
	if ok && !i.now().Before(until) {
		delete(i.fallback, host)
		return false
	}
	return ok
}

// Stats are counters for metrics and tests.
type Stats struct {
	LeafMints     int64 // leaves signed
	LeafCacheHits int64 // handshakes served from the cache
	LeafCached    int   // leaves currently cached
}

func (i *Interceptor) Stats() Stats {
	return Stats{LeafMints: i.leaves.mints.Load(), LeafCacheHits: i.leaves.hits.Load(), LeafCached: i.leaves.len()}
}

// Serve terminates TLS on conn with a leaf for meta's host and serves HTTP/1.1 or HTTP/2 on it until
// the agent closes it, it idles out or ctx ends. conn must replay the ClientHello the daemon sniffed.
// Serve closes conn. It returns nil after a connection that was served, or an error wrapping
// ErrHandshake (after calling HandshakeFailed) when the agent's handshake failed.
func (i *Interceptor) Serve(ctx context.Context, conn net.Conn, meta *ConnMeta) error {
	defer conn.Close()
	if meta.Host == "" {
		meta.Host = meta.SNI
	}
	meta.Host = hostname.Normalize(meta.Host)
	if meta.Host == "" {
		return ErrNoHost
	}
	if meta.Port == 0 {
		meta.Port = 443
	}
	host := meta.Host
	tlsConn := tls.Server(conn, &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The agent side and the upstream side negotiate independently: the upstream is not
		// probed before a request is allowed, and net/http translates between h2 and HTTP/1.1.
		NextProtos: []string{"h2", "http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return i.leaves.get(host)
		},
	})
	hctx, cancel := context.WithTimeout(ctx, i.cfg.HandshakeTimeout.Duration)
	err := tlsConn.HandshakeContext(hctx)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		i.handshakeFailed(ctx, meta, err)
		return fmt.Errorf("%w: %s: %w", ErrHandshake, host, err)
	}
	meta.Negotiated = tlsConn.ConnectionState().NegotiatedProtocol
	i.serveHTTP(ctx, conn, tlsConn, meta)
	return nil
}

func (i *Interceptor) handshakeFailed(ctx context.Context, meta *ConnMeta, err error) {
	strict := i.hosts.strict.Match(meta.Host)
	ev := i.log.Warn().Str(logfields.Host, meta.Host).Str(logfields.SNI, meta.SNI).
		Str(logfields.Reason, err.Error()).Bool(logfields.Strict, strict)
	if !strict {
		until := i.now().Add(i.cfg.FallbackPeriod.Duration)
		i.mu.Lock()
		i.fallback[meta.Host] = until
		i.mu.Unlock()
		ev = ev.Time(logfields.FallbackUntil, until)
	}
	ev.Msg("mitm_handshake_failed")
	i.hooks.HandshakeFailed(ctx, meta, err, strict)
}

// serveHTTP runs a one-connection http.Server: net/http serves HTTP/1.1 (keep-alive, pipelining,
// chunked, 100-continue, upgrades) or, when ALPN agreed on h2, HTTP/2 on the same *tls.Conn.
func (i *Interceptor) serveHTTP(ctx context.Context, raw net.Conn, conn *tls.Conn, meta *ConnMeta) {
	s := &session{i: i, meta: meta}
	s.idle = sync.NewCond(&s.mu)
	done := make(chan struct{})
	var once sync.Once
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       i.cfg.IdleTimeout.Duration,
		MaxHeaderBytes:    1 << 20,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: i.cfg.MaxConcurrentStreams},
		ErrorLog:          log.New(debugWriter{i.log}, "", 0),
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateClosed || st == http.StateHijacked {
				once.Do(func() { close(done) })
			}
		},
	}
	ln := newOneConnListener(conn)
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	// On ctx end close the raw connection: tls.Conn.Close would first try to send close_notify.
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	<-done
	ln.Close()
	<-served
	s.wait()
}

// session is the handler of one agent connection; it tracks requests in flight so that Serve
// returns only after every Done hook ran.
type session struct {
	i    *Interceptor
	meta *ConnMeta

	mu     sync.Mutex
	idle   *sync.Cond
	active int
}

func (s *session) enter() {
	s.mu.Lock()
	s.active++
	s.mu.Unlock()
}

func (s *session) leave() {
	s.mu.Lock()
	s.active--
	if s.active == 0 {
		s.idle.Broadcast()
	}
	s.mu.Unlock()
}

func (s *session) wait() {
	s.mu.Lock()
	for s.active > 0 {
		s.idle.Wait()
	}
	s.mu.Unlock()
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

// debugWriter sends net/http's own error log (malformed requests, TLS noise) to zerolog at debug.
type debugWriter struct{ log zerolog.Logger }

func (w debugWriter) Write(p []byte) (int, error) {
	w.log.Debug().Str(logfields.Component, "mitm-http").Msg(string(trimNewline(p)))
	return len(p), nil
}

func trimNewline(p []byte) []byte {
	for len(p) > 0 && (p[len(p)-1] == '\n' || p[len(p)-1] == '\r') {
		p = p[:len(p)-1]
	}
	return p
}

// UpstreamRoots is the pool upstreams are verified against: the system roots plus the PEM
// certificates in caFile ([sidecar.upstream] ca_file) when it is not "".
func UpstreamRoots(caFile string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if caFile == "" {
		return pool, nil
	}
	data, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("upstream ca_file: %w", err)
	}
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("upstream ca_file %s: no PEM certificate found", caFile)
	}
	return pool, nil
}
