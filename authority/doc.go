// Package authority is firma's trust root. It owns the authority's Ed25519 key (generation and
// loading), capability tokens (PASETO v4.public: issue, verify, revoke), the capability file format,
// issuance policy, the HTTP API that serves signed policy bundles and revocations, the client the
// sidecar uses to follow that API, and the Stage 1 check the sidecar runs on every decision.
//
// It must not import daemon/ or bpf/ (a test enforces this): the sidecar calls into this package,
// never the other way round. Cedar is loaded and evaluated only through the policies package.
//
// Three kinds of signed message leave the authority, each with its own PASETO implicit assertion
// so that one can never be replayed as another: capabilities, policy bundles (and their freshness
// heartbeats), and revocation lists.
package authority
