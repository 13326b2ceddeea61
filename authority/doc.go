// Package authority is firma's trust root. It owns the authority's Ed25519 key (generation and
// loading), capability tokens (PASETO v4.public: issue, verify, revoke), the capability file format
// and the record of what was issued, issuance policy, the HTTP API that serves signed policy
// bundles and revocations, the client the sidecar uses to follow that API, and the Stage 1 check
// the sidecar runs on every decision. For a fleet it also owns the transport: TLS for the API,
// sidecar authentication (client certificates, per-sidecar bearer tokens), `init-tls` to make
// both, and the client's failover between replicas.
//
// It must not import daemon/ or bpf/ (a test enforces this): the sidecar calls into this package,
// never the other way round. Cedar is loaded and evaluated only through the policies package.
//
// Three kinds of signed message leave the authority, each with its own PASETO implicit assertion
// so that one can never be replayed as another: capabilities, policy bundles (and their freshness
// heartbeats), and revocation lists. The signatures, not TLS, are what a sidecar trusts; TLS keeps
// policy private and lets each side know the other. Replicas keep no state of their own: every
// version, ETag and revocation hash they serve is a function of the files they read.
package authority
