// Package l7 is the sidecar's one HTTP engine. It has two entry points that share everything after
// the first request line:
//
//   - ServeTLS terminates TLS on a connection to an intercepted host with a leaf minted by firma's CA
//     ([sidecar.ca], created once and never regenerated) and serves HTTP/1.1 or HTTP/2 on it;
//   - ServePlain serves plain HTTP/1.x (and h2c with prior knowledge), either as redirected traffic
//     (the Host header names the target) or as the explicit proxy (absolute-form requests; CONNECT
//     tunnels are handed back to the front end, which judges what flows inside).
//
// Every request, on either entry point, goes through the same steps: its target is found (the TLS
// connection's own host — a Host, :authority or absolute-form target naming another is refused 421
// as domain fronting — or the request's Host on plain HTTP); the judge decides and records; a denial
// is answered 403 with the reason (text/plain, X-Firma-Decision: DENY) and the connection carries
// on; an allowed request on a TLS-terminated connection has the sidecar's credentials injected
// (never on plain HTTP), is forwarded over the scheme's shared upstream pool, which dials only
// through the connector, and its decision is completed with status, bytes and the address dialed.
// An upstream failure is the same on both entry points: 502, or 504 on a timeout, and the audit
// class connector_network_error. WebSocket and other upgrades are judged at the handshake and then
// relayed both ways. A request the HTTP server itself rejects before any handler runs (a malformed
// request line or header) is recorded as a refusal too.
//
// A TLS handshake the agent fails is recorded. When the agent rejected firma's certificate with an
// alert (its CA is not trusted, or it pins its upstream), a host that is not in strict_hosts falls
// back to CONNECT-only for that agent for fallback_period (Route answers ModeFallback); a bare close
// changes nothing, and a strict host never falls back.
//
// Host patterns (intercept, bypass and strict lists) are the policy layer's
// (policies.ParseHostPattern): exact names, IP literals, "*." and a name matching exactly one more
// label, or "*"; hosts are normalized by internal/hostname. bypass_hosts is checked before
// intercept_hosts.
//
// The engine decides nothing itself and writes no audit record: the judge does both. It never opens
// an upstream connection before the judge has allowed a request, never dials the agent's original
// destination, and never logs a credential.
package l7
