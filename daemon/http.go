package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/internal/hostname"
	"github.com/openfirma/firma/policies"
)

// serveHTTP serves plain HTTP/1.x on one connection, judging every request (keep-alive and
// pipelined requests included). With proxy set it speaks the explicit proxy protocol: CONNECT and
// absolute-form requests.
func (s *Sidecar) serveHTTP(ctx context.Context, conn net.Conn, f *flow, proxy bool) {
	front := &httpFront{s: s, f: f, proxy: proxy, ctx: ctx}
	l := newOneConnListener(conn)
	srv := &http.Server{
		Handler:           front,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          log.New(io.Discard, "", 0),
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateClosed || st == http.StateHijacked {
				l.done()
			}
		},
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	srv.Serve(l)
	front.wg.Wait() // hijacked CONNECT tunnels
}

type httpFront struct {
	s     *Sidecar
	f     *flow
	proxy bool
	ctx   context.Context
	wg    sync.WaitGroup
}

func (h *httpFront) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodConnect {
		h.connect(w, r)
		return
	}
	host, port, err := h.target(r)
	if err != nil {
		http.Error(w, "firma: "+err.Error(), http.StatusBadRequest)
		return
	}
	in := intent{method: r.Method, host: host, port: port, path: r.URL.RequestURI(), transport: "http", mode: modeHTTP}
	v := h.s.decide(r.Context(), h.f, in)
	if !v.allowed() {
		denyHTTP(w, v.Reason)
		return
	}
	h.s.forward(w, r, v, "http", hostPort(host, port), h.f.start)
}

// target is where a request goes: the absolute-form URL on the explicit proxy, else the Host header
// with the original destination's port as the default.
func (h *httpFront) target(r *http.Request) (string, int, error) {
	defPort := h.f.port
	if h.proxy {
		if !r.URL.IsAbs() {
			return "", 0, errors.New("the proxy needs an absolute URL or CONNECT")
		}
		if r.URL.Scheme != "http" {
			return "", 0, fmt.Errorf("scheme %q over a plain proxy request; use CONNECT", r.URL.Scheme)
		}
		defPort = 80
	}
	hostport := r.Host
	if hostport == "" {
		hostport = h.f.name()
	}
	return splitHostDefaultPort(hostport, defPort)
}

// connect opens a tunnel for CONNECT host:port; what flows in it is judged like any transparent
// flow, with the requested host as the name for it.
func (h *httpFront) connect(w http.ResponseWriter, r *http.Request) {
	host, port, err := splitHostDefaultPort(r.Host, 0)
	if err != nil || port == 0 {
		http.Error(w, "firma: CONNECT needs host:port", http.StatusBadRequest)
		return
	}
	// Count the tunnel before hijacking: the hijack ends the server's Serve, and serveHTTP must
	// not return (closing the connection) before the tunnel is registered.
	h.wg.Add(1)
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		h.wg.Done()
		http.Error(w, "firma: cannot tunnel", http.StatusInternalServerError)
		return
	}
	if _, err := conn.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		h.wg.Done()
		conn.Close()
		return
	}
	var buffered []byte
	if n := brw.Reader.Buffered(); n > 0 {
		buffered, _ = brw.Reader.Peek(n)
	}
	tf := *h.f
	tf.hint, tf.port, tf.start = hostname.Normalize(host), port, time.Now()
	go func() {
		defer h.wg.Done()
		defer conn.Close()
		h.s.serveFlow(h.ctx, withPrefix(conn, buffered), &tf)
	}()
}

// forward sends an allowed request upstream over the sidecar's pooled transport, which dials
// through the connector (resolved, classified, never the agent's address), and writes the
// completion record.
func (s *Sidecar) forward(w http.ResponseWriter, r *http.Request, v verdict, scheme, hostport string, start time.Time) {
	var status atomic.Int64
	body := &countingReader{r: r.Body}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = body
	}
	cw := &countingWriter{ResponseWriter: w}
	var failed error
	var dialed atomic.Value // netip.AddrPort of the upstream connection used
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		dialed.Store(addrPortOf(info.Conn.RemoteAddr()))
	}}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = scheme
			pr.Out.URL.Host = hostport
			pr.Out.Host = pr.In.Host
			pr.Out.Header.Del("Proxy-Authorization")
			pr.Out.Header.Del("Proxy-Connection")
			pr.Out = pr.Out.WithContext(httptrace.WithClientTrace(pr.Out.Context(), trace))
		},
		Transport: s.httpTransport,
		ModifyResponse: func(resp *http.Response) error {
			status.Store(int64(resp.StatusCode))
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			failed = err
			code := http.StatusBadGateway
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
				code = http.StatusGatewayTimeout
			}
			http.Error(w, "firma: upstream failed: "+errConnector, code)
		},
		ErrorLog: log.New(io.Discard, "", 0),
	}
	rp.ServeHTTP(cw, r)
	res := audit.Result{
		BytesUp:        body.n.Load(),
		BytesDown:      cw.n,
		DurationMS:     time.Since(start).Milliseconds(),
		UpstreamStatus: int(status.Load()),
	}
	if failed != nil {
		res.Error = errorResult(failed, start).Error
	}
	up, _ := dialed.Load().(netip.AddrPort)
	s.complete(v, res, up)
}

// denyHTTP answers a denied request with 403 and the reason; the connection stays usable.
func denyHTTP(w http.ResponseWriter, reason string) {
	w.Header().Set("X-Firma-Decision", string(policies.Deny))
	http.Error(w, "firma: denied: "+reason, http.StatusForbidden)
}

// splitHostDefaultPort splits "host[:port]" (IPv6 in brackets), normalizing the host.
func splitHostDefaultPort(hostport string, def int) (string, int, error) {
	if hostport == "" {
		return "", 0, errors.New("no host")
	}
	host, p, err := net.SplitHostPort(hostport)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) && strings.Contains(ae.Err, "missing port") {
			return hostname.Normalize(hostport), def, nil
		}
		return "", 0, fmt.Errorf("bad host %q", hostport)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port <= 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port in %q", hostport)
	}
	return hostname.Normalize(host), port, nil
}

type countingReader struct {
	r io.ReadCloser
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingReader) Close() error { return c.r.Close() }

type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach Flush and Hijack (streaming, upgrades).
func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// oneConnListener hands http.Server a single connection and ends Serve when it is done.
type oneConnListener struct {
	conn     net.Conn
	once     sync.Once
	closed   chan struct{}
	accepted atomic.Bool
}

func newOneConnListener(c net.Conn) *oneConnListener {
	return &oneConnListener{conn: c, closed: make(chan struct{})}
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if l.accepted.CompareAndSwap(false, true) {
		return l.conn, nil
	}
	<-l.closed
	return nil, net.ErrClosed
}

func (l *oneConnListener) done()          { l.once.Do(func() { close(l.closed) }) }
func (l *oneConnListener) Close() error   { l.done(); return nil }
func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }
