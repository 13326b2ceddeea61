package l7

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/openfirma/firma/daemon/judge"
	"github.com/openfirma/firma/internal/hostname"
	"github.com/openfirma/firma/policies"
)

// ServeHTTP judges one request and forwards it if allowed. The same steps serve both entry points:
// find the request's target (the TLS connection's host, or the request's own on plain HTTP), refuse
// what the sidecar refuses by itself, read the body ahead when a policy reads it, ask the judge,
// answer a refusal (403, 429, 413), forward an allowed request over the scheme's upstream pool
// (without the headers a MODIFY redacts), and complete the decision with what happened.
func (c *agentConn) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.enter()
	defer c.leave()
	ctx := r.Context()
	in := judge.Intent{Method: r.Method, Port: c.port, Path: r.URL.RequestURI(), Transport: c.scheme, Mode: c.mode, SNI: c.sni}

	if r.Method == http.MethodConnect {
		if c.scheme == "http" {
			c.connect(w, r)
			return
		}
		in.Host, in.Refuse = c.host, judge.ReasonConnectInMITM
		c.e.judge.Decide(ctx, c.f, in)
		writeText(w, http.StatusMethodNotAllowed, "firma: refused: "+judge.ReasonConnectInMITM)
		discardRefused(w, r)
		return
	}
	host, port, status, err := c.target(r)
	if err != nil {
		in.Host, in.Port, in.Refuse = host, port, err.Error()
		if host == "" {
			in.Host = c.fallbackName()
		}
		c.e.judge.Decide(ctx, c.f, in)
		writeText(w, status, "firma: refused: "+err.Error())
		discardRefused(w, r)
		return
	}
	in.Host, in.Port = host, port
	r, release, refusal := c.prepareBody(w, r, &in)
	defer release()
	if refusal != nil {
		in.Refuse = refusal.reason
		c.e.judge.Decide(ctx, c.f, in)
		if refusal.status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "1")
		}
		writeText(w, refusal.status, "firma: refused: "+refusal.reason)
		discardRefused(w, r)
		return
	}
	v := c.e.judge.Decide(ctx, c.f, in)
	if !v.Allowed() {
		writeRefusal(w, v.Decision)
		discardRefused(w, r)
		return
	}
	for _, h := range v.Redact() {
		r.Header.Del(h)
	}
	// Request trailers are headers that arrive after the body: no policy saw them, and a header
	// that @modify removes could come back as one. They are not forwarded.
	r.Trailer = nil
	res, abort := c.forward(w, r, host, port, !v.Monitored)
	if bodyLimitHit(r.Context()) {
		res.ErrClass, res.Err = judge.ErrorBodyLimit, fmt.Errorf("%s (limit %d)", judge.ReasonBodyLimit, c.e.cfg.MaxRequestBodyBytes)
	}
	if abort == nil && res.UpstreamStatus != http.StatusSwitchingProtocols {
		// The agent gets its response before the completion record is written (the decision was
		// recorded before anything was forwarded): net/http would hold an HTTP/1.1 response in its
		// buffer until the handler returns, one audit write later.
		http.NewResponseController(w).Flush()
	}
	c.e.judge.Complete(v, res)
	if abort != nil {
		// net/http aborts the response (HTTP/1.1: closes the connection; HTTP/2: resets the stream).
		panic(abort)
	}
}

// errFronting is a request naming another host or port than its TLS connection.
type errFronting struct{ requested, host string }

func (e errFronting) Error() string {
	return fmt.Sprintf("%s (requested %s, connection is %s)", judge.ReasonFronting, e.requested, e.host)
}

// target is where a request goes. On a TLS-terminated connection it is the connection's host: a
// Host, :authority or absolute-form target naming anything else is domain fronting (421). On plain
// HTTP it is the absolute-form URL on the explicit proxy, else the Host header with the original
// destination's port as the default.
func (c *agentConn) target(r *http.Request) (host string, port int, status int, err error) {
	if c.scheme == "https" {
		for _, a := range []string{r.Host, r.URL.Host} {
			if a == "" {
				continue
			}
			h, p, perr := hostname.Parse(a)
			if perr != nil || h != c.host || p != 0 && p != c.port {
				return c.host, c.port, http.StatusMisdirectedRequest, errFronting{a, c.host}
			}
		}
		return c.host, c.port, 0, nil
	}
	defPort := c.port
	if c.proxy {
		if !r.URL.IsAbs() {
			return "", 0, http.StatusBadRequest, errors.New("the proxy needs an absolute URL or CONNECT")
		}
		if r.URL.Scheme != "http" {
			return "", 0, http.StatusBadRequest, fmt.Errorf("scheme %q over a plain proxy request; use CONNECT", r.URL.Scheme)
		}
		defPort = 80
	}
	hostport := r.Host
	if hostport == "" {
		hostport = c.name
	}
	h, p, perr := hostname.Parse(hostport)
	if perr != nil {
		return "", 0, http.StatusBadRequest, fmt.Errorf("bad host %q", hostport)
	}
	if p == 0 {
		p = defPort
	}
	if p == 0 {
		return h, 0, http.StatusBadRequest, fmt.Errorf("no port for host %q", hostport)
	}
	return h, p, 0, nil
}

func (c *agentConn) fallbackName() string {
	if c.host != "" {
		return c.host
	}
	if c.name != "" {
		return c.name
	}
	return "(unknown)"
}

// connect opens a tunnel for CONNECT host:port on a plain or explicit-proxy connection; what flows
// in it is the front end's to judge, with the requested host as its name.
func (c *agentConn) connect(w http.ResponseWriter, r *http.Request) {
	host, port, err := hostname.Parse(r.Host)
	if err != nil || port == 0 {
		in := judge.Intent{Method: policies.MethodConnect, Host: c.fallbackName(), Port: c.port, Transport: "tcp",
			Mode: judge.ModeConnect, Refuse: "CONNECT needs host:port"}
		c.e.judge.Decide(r.Context(), c.f, in)
		writeText(w, http.StatusBadRequest, "firma: refused: CONNECT needs host:port")
		return
	}
	if c.e.tunnel == nil {
		writeText(w, http.StatusMethodNotAllowed, "firma: refused: CONNECT is not served here")
		return
	}
	if c.f.Unknown != nil {
		// Nothing in the tunnel could change the answer: refuse the CONNECT itself, so that the
		// client sees a 403 whose reason names what to set, not a TLS alert after a 200.
		in := judge.Intent{Method: policies.MethodConnect, Host: host, Port: port, Transport: "tcp", Mode: judge.ModeConnect}
		v := c.e.judge.Decide(r.Context(), c.f, in)
		w.Header().Set("X-Firma-Reason", v.Reason)
		writeRefusal(w, v.Decision)
		return
	}
	// Count the tunnel before hijacking: the hijack ends the server's Serve, and serve must not
	// return (closing the connection) before the tunnel is registered.
	c.tunnels.Add(1)
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		c.tunnels.Done()
		writeText(w, http.StatusInternalServerError, "firma: cannot tunnel")
		return
	}
	if _, err := conn.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		c.tunnels.Done()
		conn.Close()
		return
	}
	var buffered []byte
	if n := brw.Reader.Buffered(); n > 0 {
		buffered, _ = brw.Reader.Peek(n)
	}
	tf := *c.f
	tf.Start = time.Now()
	ctx := c.ctx // not the request's: it ends when this handler returns
	go func() {
		defer c.tunnels.Done()
		defer conn.Close()
		c.e.tunnel(ctx, conn, buffered, &tf, host, port)
	}()
}

// writeRefusal answers a request the policy refused, with X-Firma-Decision naming the outcome: a
// DEFER is 429 with Retry-After, a body the policy could not inspect whole is 413, a STEP_UP or
// any other refusal 403 with the reason (a step-up's carries the challenge for the agent's user).
// The connection carries on (keep-alive, pipelining, other HTTP/2 streams).
func writeRefusal(w http.ResponseWriter, d policies.Decision) {
	h := w.Header()
	h.Set("X-Firma-Decision", string(d.Outcome))
	switch {
	case d.Outcome == policies.Defer:
		after := 1
		if d.Remediation != nil {
			after = d.Remediation.RetryAfterSeconds()
		}
		h.Set("Retry-After", strconv.Itoa(after))
		writeText(w, http.StatusTooManyRequests, "firma: "+d.Reason)
	case d.Outcome == policies.StepUp:
		writeText(w, http.StatusForbidden, "firma: "+d.Reason)
	case strings.HasPrefix(d.Reason, policies.ReasonBodyTooLarge):
		writeText(w, http.StatusRequestEntityTooLarge, "firma: denied: "+d.Reason)
	default:
		writeText(w, http.StatusForbidden, "firma: denied: "+d.Reason)
	}
}

func writeText(w http.ResponseWriter, status int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Del("Content-Length")
	w.WriteHeader(status)
	io.WriteString(w, msg+"\n")
}

// hostPort joins host and port for a URL or a dial.
func hostPort(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }
