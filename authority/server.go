package authority

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/internal/logfields"
	"github.com/openfirma/firma/policies"
)

// The HTTP API. Every answer that a sidecar trusts is a PASETO v4.public token signed by the
// authority key; TLS (tls_cert_file) keeps it private and lets sidecars know they talk to their
// authority, and sidecar authentication (client_ca_file, tokens_file) lets the authority know it
// talks to a sidecar.
//
//	GET  /v1/bundle[?wait=S]              200: signed bundle (ETag "<version>")
//	     If-None-Match: "<version>"       304 when unchanged, after waiting up to S seconds for a
//	                                      change, with a signed heartbeat in Firma-Freshness
//	GET  /v1/revocations?since=N&head=H[&wait=S]
//	                                      200: signed page of entries [N, next) when H is the chain
//	                                      hash of the first N entries; else the whole list (from 0).
//	                                      With wait, hangs until there is something past N.
//	POST /v1/capabilities                 issue a capability (JSON in and out); trusted local
//	                                      callers only (see trustedPeer)
//	GET  /healthz                         200 {"status":"ok",…} (no authentication: for load
//	                                      balancers)
//
// The bundle and revocation endpoints need an authenticated sidecar when client_ca_file or
// tokens_file is set: a verified client certificate, or "Authorization: Bearer <token>" with a
// token whose hash is in tokens_file. Anything else gets 401.
//
// Replicas are stateless: every version, ETag and revocation hash is a function of the files
// served, so authorities reading the same files answer alike and a sidecar may move between them
// (behind a load balancer, or through its own list of urls) without refetching or re-applying.
const (
	PathBundle       = "/v1/bundle"
	PathRevocations  = "/v1/revocations"
	PathCapabilities = "/v1/capabilities"
	PathHealth       = "/healthz"

	// HeaderFreshness carries the signed heartbeat on a 304 from PathBundle.
	HeaderFreshness = "Firma-Freshness"

	contentTypeToken = "application/vnd.firma.paseto"
)

// maxWait caps one long poll; the server also keeps it under half the bundle TTL so that a
// sidecar hears from it well before its bundle goes stale.
const maxWait = 30 * time.Second

// resyncInterval is how often the server rereads its inputs even without a file event.
const resyncInterval = 10 * time.Second

// signedReuse is how long one signed answer (a bundle, a heartbeat, a revocation page) is handed to
// every request that asks for the same thing. When a change wakes a thousand long polls, they share
// one signature and one serialisation; the signing time they carry is at most this old.
const signedReuse = time.Second

// Server serves signed policy bundles, revocations and capability issuance.
type Server struct {
	cfg    Config
	key    Signer
	pub    ed25519.PublicKey
	schema *policies.Schema // nil: embedded
	log    zerolog.Logger
	now    func() time.Time

	tls         *tls.Config               // nil: plain HTTP (loopback only)
	tokens      *reloader[*SidecarTokens] // nil without tokens_file
	refusedLog  zerolog.Logger            // log, sampled: refusals can be a flood
	authRefused atomic.Uint64             // requests refused for want of authentication
	signed      signedCache               // answers shared by concurrent requests
	issued      func(*Issued) error       // records an issued capability (RecordIssued); nil without a record

	reloadMu      sync.Mutex // serializes reloads of the bundle and the revocation list
	lastBundleErr string     // the last rejected edit's error, so a resync does not repeat it
	lastRevErr    string     // likewise for the revocation file
	revLoaded     bool       // the revocation file has been read once

	mu       sync.Mutex
	bundle   *Bundle
	bundleCh chan struct{} // closed and replaced when the bundle changes
	revs     []Revocation
	revChain []string // revChain[i] is the chain hash of revs[:i]
	revCh    chan struct{}
	issuer   *Issuer // nil when issuance_policy_dir is not set
}

// NewServer loads everything the server serves and fails if any of it is bad: the schema, the
// policy bundle, the issuance policies (when issuance_policy_dir is set), the revocation file (a
// missing file is an empty list; it is created by the first revoke), the TLS certificate and
// client CAs, and the tokens file.
func NewServer(cfg Config, key Signer, log zerolog.Logger) (*Server, error) {
	if err := errors.Join(cfg.Validate(), cfg.RequireServe()); err != nil {
		return nil, err
	}
	pub, ok := key.Public().(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("authority key is %T, want Ed25519", key.Public())
	}
	s := &Server{
		cfg:        cfg,
		key:        key,
		pub:        pub,
		log:        log,
		now:        time.Now,
		bundleCh:   make(chan struct{}),
		revCh:      make(chan struct{}),
		revChain:   []string{revocationChainStart},
		refusedLog: log.Sample(&zerolog.BurstSampler{Burst: 20, Period: time.Second}),
	}
	if cfg.Schema != "" {
		sch, err := policies.LoadSchema(cfg.Schema)
		if err != nil {
			return nil, err
		}
		s.schema = sch
	}
	b, err := BuildBundle(cfg.PolicyDir, s.schema, cfg.BundleTTL())
	if err != nil {
		return nil, fmt.Errorf("policy bundle: %w", err)
	}
	s.bundle = b
	if cfg.IssuancePolicyDir != "" {
		is, err := NewIssuer(key, cfg.IssuancePolicyDir, s.schema, cfg.MaxTTL())
		if err != nil {
			return nil, err
		}
		s.issuer = is
	}
	if err := s.reloadRevocations(); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("revocation file: %w", err)
	}
	if cfg.TLS() {
		if s.tls, err = serverTLS(&cfg, log); err != nil {
			return nil, err
		}
	}
	if cfg.TokensFile != "" {
		s.tokens, err = newReloader("tokens file", []string{cfg.TokensFile},
			func() (*SidecarTokens, error) { return ReadTokens(cfg.TokensFile) }, log)
		if err != nil {
			return nil, fmt.Errorf("authority.tokens_file: %w", err)
		}
	}
	if path := cfg.IssuedPath(); path != "" {
		s.issued = func(i *Issued) error { return RecordIssued(path, i) }
	}
	return s, nil
}

// PublicKey is the authority's public key.
func (s *Server) PublicKey() ed25519.PublicKey { return s.pub }

// Bundle returns the bundle currently served.
func (s *Server) Bundle() *Bundle {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bundle
}

// ListenAndServe listens on listen_addr and serves until ctx is done.
func (s *Server) ListenAndServe(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", s.cfg.ListenAddr, err)
	}
	return s.Serve(ctx, ln)
}

// Serve watches the policy dir, schema, issuance dir and revocation file, serves the API on ln
// (HTTPS when tls_cert_file is set), and shuts down cleanly (in-flight long polls end at once) when
// ctx is done.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	fw, err := newFileWatcher(s.log)
	if err != nil {
		ln.Close()
		return err
	}
	defer fw.Close()
	type watch struct {
		path string
		fn   func()
	}
	watches := []watch{
		{s.cfg.PolicyDir, s.reloadBundle},
		{s.cfg.RevocationFile, func() { s.reloadRevocations() }},
	}
	if s.cfg.Schema != "" {
		watches = append(watches, watch{s.cfg.Schema, s.reloadBundle})
	}
	if s.cfg.IssuancePolicyDir != "" {
		watches = append(watches, watch{s.cfg.IssuancePolicyDir, s.reloadIssuer})
	}
	for _, w := range watches {
		if _, err := fw.watch(w.path, w.fn); err != nil {
			ln.Close()
			return fmt.Errorf("watching %s: %w", w.path, err)
		}
	}

	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		// TLS handshake failures (a sidecar with a certificate from another CA, a scanner) land
		// here: logged, sampled, at WARN.
		ErrorLog: log.New(refusalWriter{s}, "", 0),
		HTTP2:    &http.HTTP2Config{MaxConcurrentStreams: 16},
	}
	errc := make(chan error, 1)
	scheme := "http"
	if s.tls != nil {
		scheme = "https"
		srv.TLSConfig = s.tls
		go func() { errc <- srv.ServeTLS(ln, "", "") }()
	} else {
		go func() { errc <- srv.Serve(ln) }()
	}
	b := s.Bundle()
	s.log.Info().Str(logfields.Listen, ln.Addr().String()).Str(logfields.Scheme, scheme).Str(logfields.Version, b.Version).
		Int(logfields.Count, len(b.Files)).Str(logfields.Fingerprint, KeyID(s.pub)).
		Bool(logfields.ClientCerts, s.cfg.ClientCAFile != "").Bool(logfields.Tokens, s.tokens != nil).Msg("authority ready")
	if s.tls == nil {
		s.log.Warn().Str(logfields.Listen, ln.Addr().String()).
			Msg("serving plain HTTP on loopback: only sidecars on this host can reach the authority; set tls_cert_file and tls_key_file to serve others")
	}
	if !s.cfg.AuthRequired() {
		s.log.Warn().Msg("sidecars are not authenticated: anything that can connect may read the policy bundle; set client_ca_file or tokens_file")
	}

	// fsnotify is the fast path; a periodic resync catches anything it missed (an overflowed
	// queue, a replaced directory, a network filesystem).
	resync := time.NewTicker(resyncInterval)
	defer resync.Stop()
	for running := true; running; {
		select {
		case err := <-errc:
			return fmt.Errorf("serving: %w", err)
		case <-resync.C:
			s.reloadBundle()
			s.reloadRevocations()
		case <-ctx.Done():
			running = false
		}
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = srv.Shutdown(shutdown)
	if errors.Is(err, context.DeadlineExceeded) {
		// http.Server counts a just-accepted connection that has sent nothing yet as active for up
		// to 5 s: a client reconnecting at the wrong moment would hold the shutdown. Long polls have
		// already ended with ctx; close whatever is left.
		s.log.Info().Msg("closing connections still open after the shutdown grace period")
		err = srv.Close()
	}
	<-errc
	s.log.Info().Msg("authority stopped")
	return err
}

// refusalWriter turns http.Server's error log (TLS handshake failures above all) into sampled
// WARN lines. A peer that connects and closes without a word (a load balancer's TCP check, a port
// scan) is only DEBUG: it was refused nothing.
type refusalWriter struct{ s *Server }

func (w refusalWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	if strings.HasSuffix(msg, ": EOF") {
		w.s.log.Debug().Str(logfields.Error, msg).Msg("connection closed before a TLS handshake")
		return len(p), nil
	}
	if strings.Contains(msg, "TLS handshake error") {
		w.s.authRefused.Add(1)
	}
	w.s.refusedLog.Warn().Str(logfields.Error, msg).Msg("connection refused")
	return len(p), nil
}

// reloadBundle rebuilds the bundle; a broken edit keeps the last good one and says why.
func (s *Server) reloadBundle() {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	s.mu.Lock()
	schema := s.schema
	s.mu.Unlock()
	if s.cfg.Schema != "" {
		sch, err := policies.LoadSchema(s.cfg.Schema)
		if err != nil {
			if s.lastBundleErr != err.Error() {
				s.log.Error().Err(err).Str(logfields.File, s.cfg.Schema).Msg("schema edit rejected; keeping the last good bundle")
			}
			s.lastBundleErr = err.Error()
			return
		}
		schema = sch
	}
	b, err := BuildBundle(s.cfg.PolicyDir, schema, s.cfg.BundleTTL())
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		if s.lastBundleErr != err.Error() {
			s.log.Error().Err(err).Str(logfields.Dir, s.cfg.PolicyDir).Str(logfields.Version, s.bundle.Version).
				Msg("policy edit rejected; keeping the last good bundle")
		}
		s.lastBundleErr = err.Error()
		return
	}
	s.lastBundleErr = ""
	s.schema = schema
	if b.Version == s.bundle.Version {
		return
	}
	s.bundle = b
	close(s.bundleCh)
	s.bundleCh = make(chan struct{})
	s.log.Info().Str(logfields.Version, b.Version).Int(logfields.Count, len(b.Files)).Msg("policy bundle updated")
}

// reloadRevocations rereads the revocation file. The chain hashes say what changed: sidecars that
// hold a prefix of the new list get the rest; any other edit (a line changed or removed) makes
// them refetch the whole list. An unreadable file keeps the list already loaded.
func (s *Server) reloadRevocations() error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	recs, bad, err := ReadRevocations(s.cfg.RevocationFile)
	problem := ""
	switch {
	case err != nil:
		problem = err.Error()
	case bad != nil:
		problem = bad.Error()
	}
	repeated := problem == s.lastRevErr
	s.lastRevErr = problem
	if err != nil {
		switch {
		case repeated:
		case errors.Is(err, os.ErrNotExist) && !s.revLoaded:
			s.log.Warn().Str(logfields.File, s.cfg.RevocationFile).Msg("revocation file does not exist yet; no token is revoked")
		default:
			s.log.Error().Err(err).Str(logfields.File, s.cfg.RevocationFile).Msg("revocation file unreadable; keeping the revocations already loaded")
		}
		return err
	}
	if bad != nil && !repeated {
		s.log.Error().Err(bad).Str(logfields.File, s.cfg.RevocationFile).Msg("revocation file has bad lines; they are skipped")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.revLoaded = true
	if equalRevocations(recs, s.revs) {
		return nil
	}
	appended := len(recs) >= len(s.revs) && equalRevocations(recs[:len(s.revs)], s.revs)
	if !appended {
		s.log.Warn().Str(logfields.File, s.cfg.RevocationFile).Msg("revocation file was edited, not appended to; sidecars will refetch it")
	}
	chain := s.revChain
	from := len(s.revs)
	if !appended {
		chain, from = chain[:1], 0
	}
	chain = chain[: from+1 : from+1] // never write into the slice readers hold
	for i := from; i < len(recs); i++ {
		chain = append(chain, revocationChain(chain[i], recs[i:i+1]))
	}
	for _, r := range recs[min(len(s.revs), len(recs)):] {
		s.log.Info().Str(logfields.TokenID, r.TokenID).Str(logfields.Reason, r.Reason).Msg("token revoked")
	}
	s.revs, s.revChain = recs, chain
	close(s.revCh)
	s.revCh = make(chan struct{})
	return nil
}

// reloadIssuer reloads the issuance policies; a broken edit keeps the old ones.
func (s *Server) reloadIssuer() {
	s.mu.Lock()
	schema := s.schema
	s.mu.Unlock()
	is, err := NewIssuer(s.key, s.cfg.IssuancePolicyDir, schema, s.cfg.MaxTTL())
	if err != nil {
		s.log.Error().Err(err).Str(logfields.Dir, s.cfg.IssuancePolicyDir).Msg("issuance policy edit rejected; keeping the previous policies")
		return
	}
	s.mu.Lock()
	s.issuer = is
	s.mu.Unlock()
	s.log.Info().Str(logfields.Dir, s.cfg.IssuancePolicyDir).Int(logfields.Count, is.Policies().Len()).Msg("issuance policies reloaded")
}

// Handler is the API, for tests and for embedding.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PathBundle, s.sidecarsOnly(s.handleBundle))
	mux.HandleFunc("GET "+PathRevocations, s.sidecarsOnly(s.handleRevocations))
	mux.HandleFunc("POST "+PathCapabilities, s.handleIssue)
	mux.HandleFunc("GET "+PathHealth, s.handleHealth)
	return mux
}

// Why a request was not taken to come from a sidecar.
var (
	errNoCredentials = errors.New("no client certificate and no bearer token")
	errUnknownToken  = errors.New("bearer token not in tokens_file")
	errNoTokens      = errors.New("bearer tokens are not accepted here (no tokens_file)")
)

// authenticate names the sidecar behind r: the common name of a client certificate that verified
// under client_ca_file, or the name tokens_file gives its bearer token. A credential that is
// presented must be valid, even beside another that is.
func (s *Server) authenticate(r *http.Request) (string, error) {
	name := ""
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		name = r.TLS.VerifiedChains[0][0].Subject.CommonName
	}
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, _ := strings.Cut(h, " ")
		if !strings.EqualFold(scheme, "Bearer") {
			return "", fmt.Errorf("authorization scheme %q is not Bearer", scheme)
		}
		if s.tokens == nil {
			return "", errNoTokens
		}
		byToken, ok := s.tokens.get().Lookup(strings.TrimSpace(tok))
		if !ok {
			return "", errUnknownToken
		}
		if name != "" && name != byToken {
			return "", fmt.Errorf("client certificate is for %q, token for %q", name, byToken)
		}
		name = byToken
	}
	if name == "" {
		return "", errNoCredentials
	}
	return name, nil
}

// sidecarsOnly refuses requests from anything but an authenticated sidecar (when sidecars
// authenticate at all), with 401, and logs each refusal.
func (s *Server) sidecarsOnly(h http.HandlerFunc) http.HandlerFunc {
	if !s.cfg.AuthRequired() {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) {
		name, err := s.authenticate(r)
		if err != nil {
			s.authRefused.Add(1)
			s.refusedLog.Warn().Err(err).Str(logfields.Peer, r.RemoteAddr).Str(logfields.Path, r.URL.Path).
				Msg("request refused: not an authenticated sidecar")
			w.Header().Set("WWW-Authenticate", `Bearer realm="firma-authority"`)
			httpError(w, http.StatusUnauthorized, err)
			return
		}
		s.log.Trace().Str(logfields.Sidecar, name).Str(logfields.Peer, r.RemoteAddr).Str(logfields.Path, r.URL.Path).Msg("sidecar request")
		h(w, r)
	}
}

// waitParam reads ?wait=S, capped by maxWait and half the bundle TTL.
func (s *Server) waitParam(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("wait")
	if v == "" {
		return 0, nil
	}
	secs, err := strconv.ParseFloat(v, 64)
	if err != nil || secs < 0 {
		return 0, fmt.Errorf("wait=%q is not a number of seconds", v)
	}
	return min(time.Duration(secs*float64(time.Second)), maxWait, s.cfg.BundleTTL()/2), nil
}

func etag(version string) string { return `"` + version + `"` }

// matchesETag reports whether an If-None-Match header names version.
func matchesETag(header, version string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if strings.Trim(t, `"`) == version {
			return true
		}
	}
	return false
}

func (s *Server) handleBundle(w http.ResponseWriter, r *http.Request) {
	wait, err := s.waitParam(r)
	if err != nil {
		httpError(w, http.StatusBadRequest, err)
		return
	}
	inm := r.Header.Get("If-None-Match")
	s.mu.Lock()
	b, changed := s.bundle, s.bundleCh
	s.mu.Unlock()
	if inm != "" && matchesETag(inm, b.Version) && wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-changed:
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			httpError(w, http.StatusServiceUnavailable, errors.New("shutting down"))
			return
		}
		t.Stop()
		b = s.Bundle()
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("ETag", etag(b.Version))
	if inm != "" && matchesETag(inm, b.Version) {
		fresh, err := s.signed.get("fresh "+b.Version, s.now(), func(now time.Time) (string, error) {
			return signFreshness(s.key, b.Version, b.TTL, now)
		})
		if err != nil {
			httpError(w, http.StatusInternalServerError, err)
			return
		}
		w.Header().Set(HeaderFreshness, string(fresh))
		w.WriteHeader(http.StatusNotModified)
		return
	}
	tok, err := s.signed.get("bundle "+b.Version, s.now(), func(now time.Time) (string, error) {
		return signBundle(s.key, b, now)
	})
	if err != nil {
		httpError(w, http.StatusInternalServerError, err)
		return
	}
	w.Header().Set("Content-Type", contentTypeToken)
	w.Header().Set("Content-Length", strconv.Itoa(len(tok)))
	w.Write(tok)
}

func (s *Server) handleRevocations(w http.ResponseWriter, r *http.Request) {
	wait, err := s.waitParam(r)
	if err != nil {
		httpError(w, http.StatusBadRequest, err)
		return
	}
	q := r.URL.Query()
	since := 0
	if v := q.Get("since"); v != "" {
		if since, err = strconv.Atoi(v); err != nil || since < 0 {
			httpError(w, http.StatusBadRequest, fmt.Errorf("since=%q is not a count", v))
			return
		}
	}
	head := q.Get("head")
	// A sidecar of an earlier version names its list by epoch (the Epoch of the last page it took,
	// here the head it holds) and can only follow whole lists: it gets one whenever there is news.
	legacy := head == "" && q.Has("epoch")
	if legacy {
		head = q.Get("epoch")
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		revs, chain, changed := s.revs, s.revChain, s.revCh
		s.mu.Unlock()
		// The client continues this list only if the first since entries it holds are ours.
		from := since
		if since > len(revs) || chain[since] != head || legacy && since < len(revs) {
			from = 0
		}
		if from != since || from < len(revs) || wait == 0 {
			s.writeRevocations(w, from, revs, chain)
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			wait = 0
		case <-r.Context().Done():
			httpError(w, http.StatusServiceUnavailable, errors.New("shutting down"))
			return
		}
	}
}

func (s *Server) writeRevocations(w http.ResponseWriter, from int, revs []Revocation, chain []string) {
	next := len(revs)
	key := fmt.Sprintf("revocations %d %s", from, chain[next])
	tok, err := s.signed.get(key, s.now(), func(now time.Time) (string, error) {
		return signRevocations(s.key, revocationClaims{
			From: from, Next: next, Prefix: chain[from], Head: chain[next], Epoch: chain[next], Entries: revs[from:], IssuedAt: now.UTC(),
		})
	})
	if err != nil {
		httpError(w, http.StatusInternalServerError, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Type", contentTypeToken)
	w.Header().Set("Content-Length", strconv.Itoa(len(tok)))
	w.Write(tok)
}

// signedCache hands one signed answer to every request for the same thing within signedReuse.
type signedCache struct {
	mu      sync.Mutex
	entries map[string]signedEntry
}

type signedEntry struct {
	token []byte // shared by every response: read only
	at    time.Time
}

// get returns the token cached under key if it was signed in the last signedReuse (and not in the
// future: a clock stepped back must not hand out tokens dated ahead), else signs a new one. Signing
// happens under the lock, so that requests woken together wait for one signature instead of each
// making their own.
func (c *signedCache) get(key string, now time.Time, sign func(time.Time) (string, error)) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[key]; ok && !now.Before(e.at) && now.Sub(e.at) < signedReuse {
		return e.token, nil
	}
	signed, err := sign(now)
	if err != nil {
		return nil, err
	}
	tok := []byte(signed)
	if c.entries == nil {
		c.entries = map[string]signedEntry{}
	}
	for k, e := range c.entries {
		if now.Sub(e.at) >= signedReuse || now.Before(e.at) {
			delete(c.entries, k)
		}
	}
	c.entries[key] = signedEntry{token: tok, at: now}
	return tok, nil
}

// IssueAPIRequest is the JSON body of POST /v1/capabilities.
type IssueAPIRequest struct {
	AgentID       string   `json:"agent_id"`
	SessionID     string   `json:"session_id"`
	Actions       []string `json:"actions"`
	ResourceScope string   `json:"resource_scope"`
	TTLSeconds    int64    `json:"ttl_seconds"`
}

// IssueAPIResponse is its answer: the signed token, its mirrors, and the capability file text.
type IssueAPIResponse struct {
	RawToken       string    `json:"raw_token"`
	TokenID        string    `json:"token_id"`
	AgentID        string    `json:"agent_id"`
	SessionID      string    `json:"session_id"`
	Actions        []string  `json:"actions"`
	ResourceScope  string    `json:"resource_scope"`
	IssuedAt       time.Time `json:"issued_at"`
	ExpiresAt      time.Time `json:"expires_at"`
	TTLClamped     bool      `json:"ttl_clamped"`
	CapabilityFile string    `json:"capability_file"`
}

func (s *Server) handleIssue(w http.ResponseWriter, r *http.Request) {
	local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	remote, err := net.ResolveTCPAddr("tcp", r.RemoteAddr)
	if err == nil {
		err = trustedPeer(local, remote)
	}
	if err != nil {
		s.log.Warn().Err(err).Str(logfields.Peer, r.RemoteAddr).Msg("capability request refused")
		httpError(w, http.StatusForbidden, ErrUntrustedCaller)
		return
	}
	s.mu.Lock()
	is := s.issuer
	s.mu.Unlock()
	if is == nil {
		httpError(w, http.StatusServiceUnavailable, errors.New("authority.issuance_policy_dir is not set"))
		return
	}
	var req IssueAPIRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		httpError(w, http.StatusBadRequest, fmt.Errorf("request body: %w", err))
		return
	}
	issued, err := is.Issue(IssueRequest{
		AgentID:       req.AgentID,
		SessionID:     req.SessionID,
		Actions:       req.Actions,
		ResourceScope: req.ResourceScope,
		TTL:           time.Duration(req.TTLSeconds) * time.Second,
	})
	if err != nil {
		status := http.StatusBadRequest
		if errors.Is(err, ErrIssuanceDenied) {
			status = http.StatusForbidden
		}
		s.log.Warn().Err(err).Str(logfields.Agent, req.AgentID).Str(logfields.Peer, r.RemoteAddr).Msg("capability not issued")
		httpError(w, status, err)
		return
	}
	file, err := issued.File().Marshal()
	if err != nil {
		httpError(w, http.StatusInternalServerError, err)
		return
	}
	c := issued.Claims
	if s.issued != nil {
		// Unrecorded, the token could not be revoked without --force: refuse to hand it out.
		if err := s.issued(issued); err != nil {
			s.log.Error().Err(err).Str(logfields.TokenID, c.TokenID).Msg("recording an issued capability; not handing it out")
			httpError(w, http.StatusInternalServerError, errors.New("could not record the capability"))
			return
		}
	}
	s.log.Info().Str(logfields.TokenID, c.TokenID).Str(logfields.Agent, c.AgentID).Str(logfields.Session, c.SessionID).
		Strs(logfields.Actions, c.ActionSet).Str(logfields.ResourceScope, c.ResourceScope).Time(logfields.Expires, c.Expires).
		Bool(logfields.TTLClamped, issued.Clamped).Str(logfields.Peer, r.RemoteAddr).Msg("capability issued")
	writeJSON(w, http.StatusOK, IssueAPIResponse{
		RawToken: issued.Raw, TokenID: c.TokenID, AgentID: c.AgentID, SessionID: c.SessionID,
		Actions: c.ActionSet, ResourceScope: c.ResourceScope, IssuedAt: c.IssuedAt, ExpiresAt: c.Expires,
		TTLClamped: issued.Clamped, CapabilityFile: string(file),
	})
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	version, n := s.bundle.Version, len(s.revs)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{
		"status": "ok", "version": version, "revocations": n, "key_id": KeyID(s.pub),
		"tls": s.tls != nil, "auth_required": s.cfg.AuthRequired(), "auth_refused": s.authRefused.Load(),
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func httpError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, map[string]string{"error": err.Error()})
}
