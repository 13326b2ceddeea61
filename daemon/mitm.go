package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/daemon/credentials"
	"github.com/openfirma/firma/daemon/mitm"
	"github.com/openfirma/firma/internal/logfields"
	"github.com/openfirma/firma/policies"
)

// newInterceptor loads (or, on first start, creates) the MITM CA and builds the interceptor with
// the sidecar as its hooks and the connector as its only way to dial. It returns nil, nil when
// https_mitm is off.
func (s *Sidecar) newInterceptor() (*mitm.Interceptor, error) {
	cfg := s.cfg
	if !cfg.Interceptor.HTTPSMITM.Enabled {
		if len(cfg.Credentials) > 0 {
			s.log.Warn().Msg("[[sidecar.credentials]] set but https_mitm is off: nothing will be injected")
		}
		return nil, nil
	}
	log := s.log.With().Str(logfields.Component, "mitm").Logger()
	ca, err := mitm.LoadOrCreateCA(cfg.CA.Dir, log)
	if err != nil {
		return nil, fmt.Errorf("sidecar.ca.dir %s: %w", cfg.CA.Dir, err)
	}
	roots, err := mitm.UpstreamRoots(cfg.Upstream.CAFile)
	if err != nil {
		return nil, fmt.Errorf("sidecar.upstream.ca_file: %w", err)
	}
	creds, err := credentials.New(cfg.Credentials, os.LookupEnv, log)
	if err != nil {
		return nil, fmt.Errorf("sidecar.credentials: %w", err)
	}
	s.mitmCA = ca
	return mitm.New(mitm.Options{
		Config:      cfg.Interceptor.HTTPSMITM,
		CA:          ca,
		Hooks:       mitmHooks{s},
		Dial:        s.dialUpstream,
		RootCAs:     roots,
		Credentials: creds,
		Log:         log,
	})
}

// dialUpstream is the interceptor's only way out: the connector, which resolves the name itself
// and dials the classified address.
func (s *Sidecar) dialUpstream(ctx context.Context, host string, port int) (net.Conn, error) {
	conn, _, err := s.connector.Dial(ctx, host, port)
	return conn, err
}

// routeTLS hands an intercepted host's connection to the interceptor. It returns false when the
// flow is to be tunnelled instead (bypass, default, fallback), with in updated for a fallback.
func (s *Sidecar) routeTLS(ctx context.Context, conn net.Conn, f *flow, sn Sniffed, in *intent) bool {
	sni := sn.Hello.ServerName
	switch s.mitm.Route(sni) {
	case mitm.ModeIntercept:
		meta := &mitm.ConnMeta{SNI: sni, ALPN: sn.Hello.ALPN, Port: f.port, Identity: f}
		if f.hasOrigin {
			meta.OrigDst = f.origin.Dst
		}
		err := s.mitm.Serve(ctx, withPrefix(conn, sn.Prefix), meta)
		if err != nil && !errors.Is(err, mitm.ErrHandshake) && ctx.Err() == nil {
			s.log.Debug().Err(err).Str(logfields.SNI, sni).Msg("intercepted connection ended")
		}
		return true
	case mitm.ModeFallback:
		// A recent handshake failure: tunnel CONNECT-only for the fallback period, and say so.
		in.note = reasonFallback
	}
	return false
}

// mitmHooks is the sidecar's side of every intercepted request.
type mitmHooks struct{ s *Sidecar }

var _ mitm.Hooks = mitmHooks{}

func (h mitmHooks) intent(meta *mitm.ConnMeta, req *mitm.Request) intent {
	return intent{method: req.Method, host: req.Host, port: req.Port, path: req.Path,
		transport: "https", mode: modeMITM, sni: meta.SNI}
}

// Decide judges one request and writes its record before any of it goes upstream.
func (h mitmHooks) Decide(ctx context.Context, meta *mitm.ConnMeta, req *mitm.Request) mitm.Verdict {
	v := h.s.decide(ctx, meta.Identity.(*flow), h.intent(meta, req))
	return mitm.Verdict{Allow: v.allowed(), Reason: v.Reason, Ref: v}
}

// Refused records a request the interceptor refused by itself (domain fronting, CONNECT inside).
func (h mitmHooks) Refused(ctx context.Context, meta *mitm.ConnMeta, req *mitm.Request, status int, reason string) {
	in := h.intent(meta, req)
	in.refuse = reason
	if req.Authority != "" && req.Authority != req.Host {
		in.refuse = fmt.Sprintf("%s (requested %s)", reason, req.Authority)
	}
	h.s.decide(ctx, meta.Identity.(*flow), in)
}

// Done writes the completion record of an allowed request; an upstream failure makes it an ABORT.
func (h mitmHooks) Done(ctx context.Context, meta *mitm.ConnMeta, req *mitm.Request, v mitm.Verdict, res mitm.Result) {
	dec, ok := v.Ref.(verdict)
	if !ok {
		return
	}
	r := audit.Result{
		BytesUp:        res.BytesUp,
		BytesDown:      res.BytesDown,
		DurationMS:     res.Duration.Milliseconds(),
		UpstreamStatus: res.UpstreamStatus,
	}
	if res.Error != "" {
		r.Error = res.Error
		if res.Err != nil && res.Error != mitm.ErrorCredentials {
			r.Error += ": " + res.Err.Error()
		}
	}
	var dialed netip.AddrPort
	if res.Upstream != "" {
		dialed, _ = netip.ParseAddrPort(res.Upstream)
	}
	h.s.complete(dec, r, dialed)
}

// HandshakeFailed records that the agent rejected firma's certificate. Nothing was sent upstream.
// A strict host is denied; any other falls back to CONNECT-only for the fallback period, and the
// record says so.
func (h mitmHooks) HandshakeFailed(ctx context.Context, meta *mitm.ConnMeta, err error, strict bool) {
	reason := "mitm handshake failed (strict host): " + err.Error()
	if !strict {
		reason = fmt.Sprintf("mitm handshake failed: %v; CONNECT-only for %v", err,
			h.s.cfg.Interceptor.HTTPSMITM.FallbackPeriod.Duration)
	}
	h.s.decide(ctx, meta.Identity.(*flow), intent{method: policies.MethodConnect, host: meta.SNI, port: meta.Port,
		transport: "tls", mode: modeMITM, sni: meta.SNI, refuse: reason})
}
