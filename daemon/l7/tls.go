package l7

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"

	"github.com/openfirma/firma/daemon/judge"
	"github.com/openfirma/firma/internal/hostname"
	"github.com/openfirma/firma/internal/logfields"
	"github.com/openfirma/firma/policies"
)

// Errors ServeTLS returns.
var (
	ErrHandshake = errors.New("mitm handshake failed")
	ErrNoHost    = errors.New("connection has neither SNI nor host")
)

// TLSConn describes an agent connection to be TLS-terminated.
type TLSConn struct {
	SNI  string   // server name from the ClientHello; "" when the client sent none
	Host string   // the connection's host: the SNI, or the name the front end judged it by; "" = SNI
	ALPN []string // protocols the client offered
	Port int      // the port the agent connected to (443 for HTTPS)
}

// ServeTLS terminates TLS on conn with a leaf for the connection's host and serves HTTP/1.1 or
// HTTP/2 on it until the agent closes it, it idles out or ctx ends; every request is judged. conn
// must replay the ClientHello the front end sniffed. ServeTLS closes conn. It returns nil after a
// connection that was served, or an error wrapping ErrHandshake when the agent's handshake failed
// (which is judged and recorded).
func (e *Engine) ServeTLS(ctx context.Context, conn net.Conn, f *judge.Flow, tc TLSConn) error {
	defer conn.Close()
	if e.leaves == nil {
		return fmt.Errorf("%w: https_mitm has no CA", ErrNoCA)
	}
	host := hostname.Normalize(tc.Host)
	if host == "" {
		host = hostname.Normalize(tc.SNI)
	}
	if host == "" {
		return ErrNoHost
	}
	port := tc.Port
	if port == 0 {
		port = 443
	}
	watch := &handshakeWatcher{Conn: conn}
	tlsConn := tls.Server(watch, &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The agent side and the upstream side negotiate independently: the upstream is not
		// probed before a request is allowed, and net/http translates between h2 and HTTP/1.1.
		NextProtos: []string{"h2", "http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return e.leaves.get(host)
		},
	})
	hctx, cancel := context.WithTimeout(ctx, e.cfg.HandshakeTimeout.Duration)
	err := tlsConn.HandshakeContext(hctx)
	cancel()
	rejected := err != nil && (certificateRejected(err) || watch.alerted())
	watch.stop()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		e.handshakeFailed(ctx, f, tc.SNI, host, port, err, rejected)
		return fmt.Errorf("%w: %s: %w", ErrHandshake, host, err)
	}
	c := &agentConn{e: e, f: f, scheme: "https", mode: judge.ModeMITM, host: host, port: port, sni: tc.SNI}
	c.serve(ctx, conn, tlsConn, tlsConn.ConnectionState().NegotiatedProtocol == "h2")
	return nil
}

// handshakeFailed records that the agent's TLS handshake with firma's leaf failed. Nothing was sent
// upstream. A client that rejected the certificate with an alert (CA not trusted, pinning) puts this
// agent's non-strict host into CONNECT-only fallback for fallback_period; a strict host never falls
// back, and a handshake that just ended (a bare close, a timeout) changes nothing — an agent cannot
// open the fallback by hanging up.
func (e *Engine) handshakeFailed(ctx context.Context, f *judge.Flow, sni, host string, port int, err error, rejected bool) {
	strict := e.hosts.strict.Match(host)
	why := err.Error()
	if rejected {
		// Go's own words for this ("bad record MAC", "unknown certificate authority") do not say
		// what happened or what to do.
		why = "the agent rejected firma's certificate (does it trust firma's CA?): " + why
	}
	reason := judge.ReasonHandshake + ": " + why
	ev := e.log.Warn().Str(logfields.Host, host).Str(logfields.SNI, sni).Str(logfields.Agent, f.AgentID).
		Str(logfields.Reason, err.Error()).Bool(logfields.Strict, strict)
	switch {
	case strict:
		reason = judge.ReasonHandshake + " (strict host): " + why
	case rejected:
		until := e.now().Add(e.cfg.FallbackPeriod.Duration)
		e.mu.Lock()
		e.fallback[fallbackKey{f.AgentID, host}] = until
		e.mu.Unlock()
		ev = ev.Time(logfields.FallbackUntil, until)
		reason = fmt.Sprintf("%s; CONNECT-only for this agent for %v", reason, e.cfg.FallbackPeriod.Duration)
	}
	ev.Msg("mitm_handshake_failed")
	e.judge.Decide(ctx, f, judge.Intent{Method: policies.MethodConnect, Host: host, Port: port, Transport: "tls",
		Mode: judge.ModeMITM, SNI: sni, Refuse: reason})
}

// certificateRejected reports whether a server handshake failed because the client sent an alert
// about firma's certificate (bad_certificate, unsupported_certificate, certificate_revoked,
// certificate_expired, certificate_unknown, unknown_ca) — what a client that does not trust the CA,
// or pins its upstream's key, does.
func certificateRejected(err error) bool {
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "remote error" || op.Err == nil {
		return false
	}
	switch strings.TrimPrefix(op.Err.Error(), "tls: ") {
	case "bad certificate", "unsupported certificate", "revoked certificate", "expired certificate",
		"unknown certificate", "unknown certificate authority":
		return true
	}
	return false
}

// handshakeWatcher keeps the first bytes a client sends during the handshake, so that a failed
// handshake can be told apart: a client that rejected firma's certificate answers the server's flight
// with an alert, one that merely hung up sends nothing more.
type handshakeWatcher struct {
	net.Conn
	mu      sync.Mutex
	buf     []byte
	stopped bool
}

const watchBytes = 16 << 10

func (w *handshakeWatcher) Read(p []byte) (int, error) {
	n, err := w.Conn.Read(p)
	w.mu.Lock()
	if room := watchBytes - len(w.buf); !w.stopped && room > 0 && n > 0 {
		w.buf = append(w.buf, p[:min(n, room)]...)
	}
	w.mu.Unlock()
	return n, err
}

// stop ends the recording once the handshake is over and frees what was kept.
func (w *handshakeWatcher) stop() {
	w.mu.Lock()
	w.stopped, w.buf = true, nil
	w.mu.Unlock()
}

// alerted reports whether the client sent an alert after its handshake messages: a plaintext alert
// about the certificate (TLS 1.2), or a short encrypted record where TLS 1.3 puts its alert (which
// Go does not always manage to decrypt: OpenSSL's comes out as "bad record MAC").
func (w *handshakeWatcher) alerted() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return alertInRecords(w.buf)
}

// alertInRecords walks TLS records from the start of a client's stream.
func alertInRecords(b []byte) bool {
	for len(b) >= 5 {
		typ, length := b[0], int(b[3])<<8|int(b[4])
		if len(b) < 5+length {
			return false
		}
		body := b[5 : 5+length]
		switch typ {
		case 0x15: // alert
			if len(body) == 2 {
				switch body[1] {
				case 42, 43, 44, 45, 46, 48: // certificate alerts, unknown_ca
					return true
				}
			}
			return false
		case 0x17: // TLS 1.3 encrypted record during the handshake: an alert is 2+1 bytes + tag
			return length <= 64
		}
		b = b[5+length:]
	}
	return false
}
