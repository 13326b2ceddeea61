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
// as domain fronting — or the request's Host on plain HTTP); its content (header, body size) goes
// to the judge, and when the judge says a policy reads the body, the body is read ahead (see
// below); the judge decides and records; a refusal is answered with the reason (text/plain,
// X-Firma-Decision naming the outcome) — 403 for DENY and STEP_UP, 429 with Retry-After for
// DEFER, 413 for a body too large to be judged — and the connection carries on; an allowed
// request (ALLOW, PASSTHROUGH, or MODIFY once the headers it names are removed) on a
// TLS-terminated connection has the sidecar's credentials injected (never on plain HTTP), is
// forwarded without request trailers over the scheme's shared upstream pool, which dials only
// through the connector, and its decision is completed with status, bytes and the address dialed.
//
// A body is buffered only for a policy that reads it: at most max_body_bytes+1 bytes
// ([sidecar.policy]), within one budget for all connections (body_buffer_bytes: a request that
// would pass it is refused 503 rather than buffered) and body_read_timeout; it is forwarded after
// the decision, whole with the length that was judged, or as its prefix followed by the rest.
// Every other body streams. max_request_body_bytes caps every body: a declared length over it is
// refused before anything is sent, a streamed body is cut off where it passes it and its request
// aborted.
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
