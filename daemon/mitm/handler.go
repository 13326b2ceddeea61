package mitm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/openfirma/firma/internal/hostname"
	"github.com/openfirma/firma/internal/logfields"
)

type metaKey struct{}

// MetaFromContext returns the agent connection a request context (or an upstream dial context)
// belongs to.
func MetaFromContext(ctx context.Context) (*ConnMeta, bool) {
	m, ok := ctx.Value(metaKey{}).(*ConnMeta)
	return m, ok
}

// ServeHTTP judges one request on the intercepted connection and forwards it if allowed.
func (s *session) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.enter()
	defer s.leave()
	i, meta := s.i, s.meta
	ctx := context.WithValue(r.Context(), metaKey{}, meta)
	r = r.WithContext(ctx)
	req := &Request{
		Method:        r.Method,
		Host:          meta.Host,
		Port:          meta.Port,
		Path:          r.URL.RequestURI(),
		Proto:         r.Proto,
		Upgrade:       upgradeOf(r.Header),
		ContentLength: r.ContentLength,
		Authority:     r.Host,
	}
	if r.Method == http.MethodConnect {
		const reason = "CONNECT inside an intercepted connection"
		i.hooks.Refused(ctx, meta, req, http.StatusMethodNotAllowed, reason)
		writeText(w, http.StatusMethodNotAllowed, "firma: refused: "+reason)
		return
	}
	if reason := s.checkAuthority(r); reason != "" {
		i.hooks.Refused(ctx, meta, req, http.StatusMisdirectedRequest, reason)
		writeText(w, http.StatusMisdirectedRequest, "firma: refused: "+reason)
		return
	}
	v := i.hooks.Decide(ctx, meta, req)
	if !v.Allow {
		i.log.Debug().Str(logfields.Host, req.Host).Str(logfields.Method, req.Method).
			Str(logfields.Path, r.URL.Path).Str(logfields.Reason, v.Reason).Msg("request denied")
		writeText(w, http.StatusForbidden, "firma: denied: "+v.Reason)
		return
	}
	res, abort := s.forward(w, r)
	i.hooks.Done(ctx, meta, req, v, res)
	if abort != nil {
		// net/http aborts the response (HTTP/1.1: closes the connection; HTTP/2: resets the stream).
		panic(abort)
	}
}

// checkAuthority refuses a Host or :authority (or absolute-form target) naming another host or
// port than the TLS connection: domain fronting.
func (s *session) checkAuthority(r *http.Request) string {
	for _, a := range []string{r.Host, r.URL.Host} {
		if a == "" {
			continue
		}
		host, port := a, ""
		if h, p, err := net.SplitHostPort(a); err == nil {
			host, port = h, p
		}
		if hostname.Normalize(host) != s.meta.Host || port != "" && port != strconv.Itoa(s.meta.Port) {
			return fmt.Sprintf("host %q does not match the TLS server name %q", a, s.meta.Host)
		}
	}
	return ""
}

// reqState collects, per forwarded request, what the proxy callbacks saw.
type reqState struct {
	mu             sync.Mutex
	upstreamStatus int
	upstream       string
	reused         bool
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

// forward injects credentials and sends r upstream. abort is non-nil when the response had to be
// cut short after it started (the value net/http expects to be re-panicked).
func (s *session) forward(w http.ResponseWriter, r *http.Request) (res Result, abort any) {
	start := time.Now()
	var (
		injected []string
		err      error
	)
	if s.i.creds != nil {
		injected, err = s.i.creds.Apply(s.meta.Host, r.Header)
	} else {
		r.Header.Del("Proxy-Authorization")
	}
	if err != nil {
		writeText(w, http.StatusBadGateway, "firma: "+ErrorCredentials)
		return Result{Status: http.StatusBadGateway, Error: ErrorCredentials, Err: err, Duration: time.Since(start)}, nil
	}

	st := &reqState{}
	var up *countingBody
	if r.Body != nil && r.Body != http.NoBody {
		up = &countingBody{rc: r.Body}
		r.Body = up
	}
	cw := &countingWriter{ResponseWriter: w}
	trace := &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			st.mu.Lock()
			st.upstream, st.reused = info.Conn.RemoteAddr().String(), info.Reused
			st.mu.Unlock()
		},
	}
	ctx := httptrace.WithClientTrace(context.WithValue(r.Context(), stateKey{}, st), trace)
	func() {
		defer func() { abort = recover() }()
		s.i.proxy.ServeHTTP(cw, r.WithContext(ctx))
	}()

	st.mu.Lock()
	defer st.mu.Unlock()
	res = Result{
		Status:         cw.status(),
		UpstreamStatus: st.upstreamStatus,
		BytesDown:      cw.n,
		Duration:       time.Since(start),
		Upstream:       st.upstream,
		Reused:         st.reused,
		Injected:       injected,
		Error:          st.class,
		Err:            st.err,
	}
	if up != nil {
		up.mu.Lock()
		res.BytesUp = up.n
		up.mu.Unlock()
	}
	if c := cw.hijacked; c != nil {
		c.mu.Lock()
		res.BytesUp += c.up
		res.BytesDown += c.down
		c.mu.Unlock()
	}
	if abort != nil && res.Error == "" {
		if st.bodyErr != nil {
			res.Error, res.Err = ErrorNetwork, st.bodyErr
		} else {
			res.Error, res.Err = ErrorClientCanceled, cw.writeErr
			if res.Err == nil {
				res.Err = fmt.Errorf("response aborted: %v", abort)
			}
		}
	}
	return res, abort
}

// proxyError answers a request whose upstream round trip failed: 504 on a timeout, else 502.
func (i *Interceptor) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	st := stateFrom(r.Context())
	status, class := http.StatusBadGateway, ErrorNetwork
	switch {
	case r.Context().Err() != nil && !isTimeout(err):
		class = ErrorClientCanceled
	case isTimeout(err):
		status = http.StatusGatewayTimeout
	}
	st.mu.Lock()
	st.class, st.err = class, err
	st.mu.Unlock()
	meta, _ := MetaFromContext(r.Context())
	ev := i.log.Warn().Str(logfields.ErrorClass, class).Err(err).Str(logfields.Method, r.Method).Str(logfields.Path, r.URL.Path)
	if meta != nil {
		ev = ev.Str(logfields.Host, meta.Host)
	}
	ev.Msg("upstream request failed")
	writeText(w, status, fmt.Sprintf("firma: upstream %s: %v", strings.ToLower(http.StatusText(status)), err))
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
	// endpoint; the agent keeps talking to the intercepted host over TCP.
	resp.Header.Del("Alt-Svc")
	// A 101's body is the upgraded connection, which the proxy needs as an io.ReadWriteCloser.
	if resp.StatusCode != http.StatusSwitchingProtocols && resp.Body != nil {
		resp.Body = &watchedBody{rc: resp.Body, st: st}
	}
	return nil
}

func writeText(w http.ResponseWriter, status int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Del("Content-Length")
	w.WriteHeader(status)
	io.WriteString(w, msg+"\n")
}

// upgradeOf returns the Upgrade protocol when Connection lists "upgrade".
func upgradeOf(h http.Header) string {
	for _, v := range h["Connection"] {
		for _, tok := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				return strings.ToLower(strings.TrimSpace(h.Get("Upgrade")))
			}
		}
	}
	return ""
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
	code     int
	n        int64
	writeErr error
	hijacked *countingConn
}

func (w *countingWriter) WriteHeader(code int) {
	if w.code == 0 && code >= 200 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	if err != nil && w.writeErr == nil {
		w.writeErr = err
	}
	return n, err
}

func (w *countingWriter) status() int { return w.code }

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
	if w.code == 0 {
		w.code = http.StatusSwitchingProtocols
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
