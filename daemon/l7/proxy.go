package l7

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/daemon/judge"
	"github.com/openfirma/firma/internal/logfields"
)

// upstream is one scheme's pool of upstream connections and the reverse proxy that uses it. One
// http.Transport per scheme is shared by every agent connection, so that requests to one host reuse
// connections (verified TLS, HTTP/2 multiplexed when the upstream offers it). It dials only through
// the connector and only when an allowed request needs a connection; it never uses proxy variables.
type upstream struct {
	scheme    string
	transport *http.Transport
	proxy     *httputil.ReverseProxy
}

func newUpstream(e *Engine, scheme string, dial DialFunc, roots *x509.CertPool) *upstream {
	cfg := &e.cfg
	u := &upstream{scheme: scheme}
	u.transport = &http.Transport{
		Proxy:       nil,
		DialContext: dial,
		// ServerName is taken from the request URL: the connection's host, never the agent's IP.
		TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:     scheme == "https",
		MaxConnsPerHost:       cfg.UpstreamMaxConnsPerHost,
		MaxIdleConnsPerHost:   cfg.UpstreamMaxIdlePerHost,
		IdleConnTimeout:       cfg.UpstreamIdleTimeout.Duration,
		TLSHandshakeTimeout:   cfg.UpstreamTLSTimeout.Duration,
		ResponseHeaderTimeout: cfg.UpstreamResponseTimeout.Duration,
		ExpectContinueTimeout: time.Second,
		// Pass Accept-Encoding and compressed bodies through untouched.
		DisableCompression: true,
	}
	u.proxy = &httputil.ReverseProxy{
		// The target was judged before the request got here; Rewrite only fills it in. Hop-by-hop
		// headers are dropped, no X-Forwarded-* is added, and proxy credentials never go upstream.
		Rewrite: func(pr *httputil.ProxyRequest) {
			st := stateFrom(pr.In.Context())
			pr.Out.URL.Scheme = scheme
			pr.Out.URL.Host = hostPort(st.host, st.port)
			pr.Out.Host = pr.Out.URL.Host
			if defaultPort(scheme) == st.port {
				pr.Out.Host = bracketed(st.host)
			}
			pr.Out.Header.Del("Proxy-Authorization")
			pr.Out.Header.Del("Proxy-Connection")
		},
		Transport:      u.transport,
		ModifyResponse: modifyResponse,
		ErrorHandler:   e.proxyError,
		ErrorLog:       log.New(debugWriter{e.log.With().Str(logfields.Component, "l7-proxy").Logger()}, "", 0),
	}
	return u
}

func defaultPort(scheme string) int {
	if scheme == "https" {
		return 443
	}
	return 80
}

// bracketed puts an IPv6 literal in brackets, as a Host header needs.
func bracketed(host string) string {
	if a, err := netip.ParseAddr(host); err == nil && a.Is6() {
		return "[" + host + "]"
	}
	return host
}

// reqState collects, per forwarded request, its target and what the proxy callbacks saw.
type reqState struct {
	host string
	port int

	mu             sync.Mutex
	upstreamStatus int
	dialed         netip.AddrPort
	class          string
	err            error
	bodyErr        error // reading the upstream response body failed
}

type stateKey struct{}

func stateFrom(ctx context.Context) *reqState {
	st, _ := ctx.Value(stateKey{}).(*reqState)
	if st == nil {
		return &reqState{} // not one of ours; record into a throwaway
	}
	return st
}

// forward injects credentials (TLS-terminated connections only: a key is never sent in clear; and
// only with inject: a request that policy denied but monitor mode let through gets none of the
// sidecar's keys)
// and sends r to host:port over the scheme's pool. abort is non-nil when the response had to be cut
// short after it started (the value net/http expects to be re-panicked).
func (c *agentConn) forward(w http.ResponseWriter, r *http.Request, host string, port int, inject bool) (res judge.Result, abort any) {
	start := time.Now()
	var injected []string
	if inject && c.scheme == "https" && c.e.creds != nil {
		var err error
		if injected, err = c.e.creds.Apply(host, r.Header); err != nil {
			writeText(w, http.StatusBadGateway, "firma: "+judge.ErrorCredentials)
			return judge.Failed(judge.ErrorCredentials, err, start), nil
		}
	}

	st := &reqState{host: host, port: port}
	var up *countingBody
	if r.Body != nil && r.Body != http.NoBody {
		up = &countingBody{rc: r.Body}
		r.Body = up
	}
	cw := &countingWriter{ResponseWriter: w}
	trace := &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			st.mu.Lock()
			st.dialed = addrPortOf(info.Conn.RemoteAddr())
			st.mu.Unlock()
		},
	}
	ctx := httptrace.WithClientTrace(context.WithValue(r.Context(), stateKey{}, st), trace)
	func() {
		defer func() { abort = recover() }()
		c.e.schemes[c.scheme].proxy.ServeHTTP(cw, r.WithContext(ctx))
	}()

	st.mu.Lock()
	defer st.mu.Unlock()
	res = judge.Result{
		UpstreamStatus: st.upstreamStatus,
		BytesDown:      cw.n,
		Duration:       time.Since(start),
		Dialed:         st.dialed,
		Injected:       injected,
		ErrClass:       st.class,
		Err:            st.err,
	}
	if up != nil {
		res.BytesUp = up.count()
	}
	if h := cw.hijacked; h != nil {
		up, down := h.counts()
		res.BytesUp += up
		res.BytesDown += down
	}
	if abort != nil && res.ErrClass == "" {
		if st.bodyErr != nil {
			res.ErrClass, res.Err = judge.ErrorNetwork, st.bodyErr
		} else {
			res.ErrClass, res.Err = judge.ErrorClientCanceled, cw.writeErr
			if res.Err == nil {
				res.Err = fmt.Errorf("response aborted: %v", abort)
			}
		}
	}
	return res, abort
}

// proxyError answers a request whose upstream round trip failed — the same status and the same
// audit class on both entry points: 504 on a timeout, else 502, connector_network_error (or
// client_canceled when the agent went away first).
func (e *Engine) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	st := stateFrom(r.Context())
	if bodyLimitHit(r.Context()) {
		// Not the upstream's failure: the sidecar cut the body off at max_request_body_bytes.
		st.mu.Lock()
		st.class, st.err = judge.ErrorBodyLimit, err
		st.mu.Unlock()
		writeText(w, http.StatusRequestEntityTooLarge, "firma: refused: "+judge.ReasonBodyLimit)
		return
	}
	status, class := http.StatusBadGateway, judge.ErrorNetwork
	switch {
	case r.Context().Err() != nil && !isTimeout(err):
		class = judge.ErrorClientCanceled
	case isTimeout(err):
		status = http.StatusGatewayTimeout
	}
	st.mu.Lock()
	st.class, st.err = class, err
	st.mu.Unlock()
	e.log.Warn().Str(logfields.ErrorClass, class).Err(err).Str(logfields.Host, st.host).
		Str(logfields.Method, r.Method).Str(logfields.Path, r.URL.Path).Msg("upstream request failed")
	writeText(w, status, fmt.Sprintf("firma: upstream %s (%s): %v", strings.ToLower(http.StatusText(status)), class, err))
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// modifyResponse records the upstream status and watches the body for read errors.
func modifyResponse(resp *http.Response) error {
	st := stateFrom(resp.Request.Context())
	st.mu.Lock()
	st.upstreamStatus = resp.StatusCode
	st.mu.Unlock()
	// Alt-Svc would send the agent to HTTP/3 (QUIC), which the kernel refuses, or to another
	// endpoint; the agent keeps talking to the host it was judged for, over TCP.
	resp.Header.Del("Alt-Svc")
	// A 101's body is the upgraded connection, which the proxy needs as an io.ReadWriteCloser.
	if resp.StatusCode != http.StatusSwitchingProtocols && resp.Body != nil {
		resp.Body = &watchedBody{rc: resp.Body, st: st}
	}
	return nil
}

// countingBody counts request body bytes read on their way upstream.
type countingBody struct {
	rc io.ReadCloser
	mu sync.Mutex
	n  int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.mu.Lock()
	b.n += int64(n)
	b.mu.Unlock()
	return n, err
}

func (b *countingBody) Close() error { return b.rc.Close() }

func (b *countingBody) count() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n
}

// watchedBody records a failed read of the upstream response body.
type watchedBody struct {
	rc io.ReadCloser
	st *reqState
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err != nil && err != io.EOF {
		b.st.mu.Lock()
		b.st.bodyErr = err
		b.st.mu.Unlock()
	}
	return n, err
}

func (b *watchedBody) Close() error { return b.rc.Close() }

// countingWriter counts response bytes and wraps a hijacked connection (WebSocket) to count the
// relay. Flushing and the rest of http.ResponseController go through Unwrap.
type countingWriter struct {
	http.ResponseWriter
	n        int64
	writeErr error
	hijacked *countingConn
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	if err != nil && w.writeErr == nil {
		w.writeErr = err
	}
	return n, err
}

func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *countingWriter) FlushError() error {
	return http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *countingWriter) Flush() { w.FlushError() }

func (w *countingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.hijacked = &countingConn{Conn: c}
	return w.hijacked, brw, nil
}

// countingConn counts the bytes of an upgraded (relayed) connection: read = from the agent.
type countingConn struct {
	net.Conn
	mu       sync.Mutex
	up, down int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.up += int64(n)
	c.mu.Unlock()
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.mu.Lock()
	c.down += int64(n)
	c.mu.Unlock()
	return n, err
}

func (c *countingConn) counts() (up, down int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.up, c.down
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// debugWriter sends net/http's own error log (malformed requests, TLS noise) to zerolog at debug.
type debugWriter struct{ log zerolog.Logger }

func (w debugWriter) Write(p []byte) (int, error) {
	w.log.Debug().Msg(strings.TrimRight(string(p), "\r\n"))
	return len(p), nil
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
