// Package mitm owns the sidecar's HTTPS interception: the CA ([sidecar.ca]), the host lists and
// limits of [sidecar.interceptor.https_mitm], leaf certificates minted per SNI, the TLS-terminating
// HTTP/1.1 and HTTP/2 server that hands every request to the daemon for judgement, and the pool of
// verified upstream connections allowed requests are forwarded over.
//
// It must not decide policy, write audit records, resolve names or dial by itself: the daemon does
// those through Hooks and DialFunc. It never opens an upstream connection before Hooks.Decide has
// allowed a request, never dials the agent's original destination, and never logs a credential.
//
// # Wiring (the daemon's side)
//
// At startup:
//
//	if err := cfg.Interceptor.HTTPSMITM.Validate(); … // and cfg.CA.Validate(), ValidateCA(cfg.CA)
//	ca, err := mitm.LoadOrCreateCA(cfg.CA.Dir, log)   // errors.Is(err, mitm.ErrCARefused) ⇒ exit 1
//	roots, err := mitm.UpstreamRoots(cfg.Upstream.CAFile)
//	creds, err := credentials.New(cfg.Credentials, os.LookupEnv, log) // missing env var ⇒ exit 1
//	icpt, err := mitm.New(mitm.Options{Config: cfg.Interceptor.HTTPSMITM, CA: ca, Hooks: d,
//	        Dial: d.dialUpstream, RootCAs: roots, Credentials: creds, Log: log})
//
// Per TLS connection, after sniffing the ClientHello and judging the CONNECT-level intent:
//
//	switch icpt.Route(sni) {
//	case mitm.ModeIntercept:   // icpt.Serve(ctx, replayConn, &mitm.ConnMeta{SNI, ALPN, Port, OrigDst, Identity})
//	case mitm.ModeFallback:    // tunnel, audit transport.mode "connect" with the fallback noted
//	default:                   // ModeBypass, ModeDefault: tunnel (CONNECT-only)
//	}
//
// Serve replays nothing itself: conn's first Read must return the sniffed ClientHello bytes.
//
// # Per request
//
// For every request on an intercepted connection, in order: CONNECT ⇒ Hooks.Refused, 405. A Host,
// :authority or absolute-form target naming another host or port than the connection ⇒
// Hooks.Refused, 421 (domain fronting). Otherwise Hooks.Decide; a denial is answered 403 with the
// reason as a text/plain body and the connection carries on (HTTP/1.1 keep-alive and pipelining,
// HTTP/2 streams). An allowed request has its credentials applied (Injector: the agent's
// Authorization, X-Api-Key, Proxy-Authorization and the injected header are removed first; a failure
// answers 502 and nothing is sent), is forwarded with the connection's host as URL host, TLS server
// name and Host header, and ends with Hooks.Done carrying the upstream status, byte counts and, on
// failure, Result.Error (ErrorNetwork ⇒ 502, or 504 on a timeout). WebSocket (and other HTTP/1.1)
// upgrades are judged at the handshake, then relayed both ways; Done follows the end of the relay.
//
// # ALPN
//
// The agent is offered h2 and http/1.1; the upstream pool negotiates on its own (h2 when the upstream
// offers it) when a request first needs a connection. The upstream is not probed before a decision,
// since that would send bytes before any audit record; net/http translates between the two.
//
// # Handshake failures
//
// When the agent rejects the minted leaf (CA not trusted, pinning) Serve logs mitm_handshake_failed
// with host and reason and calls Hooks.HandshakeFailed. A non-strict host then routes as
// ModeFallback for fallback_period; a strict host never falls back. The fallback is keyed by host
// alone, so one agent's failed handshake downgrades that host for every agent for the period.
//
// Host patterns (intercept, bypass and strict lists) are the policy layer's (policies.ParseHostPattern):
// exact names, IP literals, "*." and a name matching exactly one more label, or "*"; hosts are
// lowercased and a trailing dot is stripped. bypass_hosts is checked before intercept_hosts.
package mitm
