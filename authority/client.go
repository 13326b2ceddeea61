package authority

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/internal/keyfile"
	"github.com/openfirma/firma/internal/logfields"
)

// Files in ClientConfig.CacheDir. Each holds signed tokens and is re-verified when loaded, so the
// cache is never trusted more than the authority's signature.
const (
	cacheBundle          = "bundle.paseto"            // the last good bundle
	cacheBundleFresh     = "bundle-fresh.paseto"      // the newest heartbeat for it
	cacheRevocations     = "revocations.paseto"       // the revocation list: signed pages, one a line
	cacheRevocationFresh = "revocations-fresh.paseto" // the newest empty page (a heartbeat)
)

// maxTokenBytes bounds what the client reads from the authority.
const maxTokenBytes = 16 << 20

// failbackAfter is how long a client with several urls stays on a replica it failed over to
// before it tries the first one again.
const failbackAfter = 30 * time.Second

// Backoff between failed polls once every url has been tried: doubling from the first to the
// second, jittered.
const minBackoff, maxBackoff = 250 * time.Millisecond, 5 * time.Second

// Why the client rejected something the authority sent: the keys of ClientStatus.Rejections.
// Each rejection is logged (ERROR for the first five, which mean a wrong or hostile authority or a
// bundle the sidecar cannot load; WARN for the others), every time.
const (
	RejectWrongKey        = "wrong_key"        // signed by another authority key
	RejectBadSignature    = "bad_signature"    // the signature does not verify (tampered, truncated)
	RejectMalformed       = "malformed"        // not a firma message, or its claims are invalid
	RejectVersionMismatch = "version_mismatch" // a bundle whose version is not its content's hash
	RejectNotAdopted      = "not_adopted"      // the sidecar's policy engine refused the bundle
	RejectExpired         = "expired"          // signed longer ago than the bundle TTL (clocks?)
	RejectReplayed        = "replayed"         // older than what the client holds: a rollback
	RejectOutOfOrder      = "out_of_order"     // a heartbeat or revocation page for another state
)

// Why a poll failed without anything to reject: the keys of ClientStatus.PollErrors.
const (
	PollUnreachable  = "unreachable"  // no answer: connection, TLS or timeout
	PollUnauthorized = "unauthorized" // 401 or 403: the authority does not accept this sidecar
	PollHTTPError    = "http_error"   // any other unexpected HTTP status
)

// Client follows an authority for the sidecar: it long-polls the signed policy bundle and the
// revocation list, verifies both under the authority's public key, caches them in cache_dir, and
// says when its view has gone stale. It implements RevocationChecker for Stage 1.
//
// Staleness: every bundle and every heartbeat the authority signs carries its signing time. The
// client is in contact as of the older of its newest bundle proof and its newest revocation page
// (each counted at the earlier of the signing time and the time it arrived). When that moment is
// more than the bundle's bundle_ttl_seconds in the past — or there is no bundle at all — Stale
// reports true, and the sidecar must deny with ErrStale ("policy bundle stale"). Because the cache
// keeps the signed heartbeats too, a sidecar restarted while the authority is down keeps enforcing
// the cached bundle until that same deadline, and no longer.
//
// Replicas: with several urls the client uses the first that answers, moves to the next at once
// when a poll fails, and tries the first again after failbackAfter. Versions, ETags and revocation
// hashes are the same on every replica serving the same files, so a move re-applies nothing.
type Client struct {
	cfg      ClientConfig
	pub      ed25519.PublicKey
	log      zerolog.Logger
	hc       *http.Client
	token    *reloader[string] // nil without token_file
	ep       *endpoints
	onBundle func(Bundle) error
	now      func() time.Time
	backoff  [2]time.Duration // minBackoff, maxBackoff (tests shorten them)

	ready     chan struct{}
	readyOnce sync.Once
	runMu     sync.Mutex // one Run at a time

	mu           sync.Mutex
	bundle       *Bundle
	bundleSigned time.Time // the adopted bundle's signing time: older bundles are rollbacks
	adoptedAt    time.Time
	bundleFresh  time.Time
	revHave      bool      // a revocation list has been accepted
	revNext      int       // entries held
	revHead      string    // their chain hash
	revResync    bool      // ask for the whole list next time
	revIat       time.Time // newest signing time on the revocation feed
	revFresh     time.Time
	revs         revocationSet
	changed      chan struct{} // closed and replaced when the bundle or the revocations change
	lastSuccess  time.Time
	lastFailure  *PollFailure
	lastReject   *PollFailure
	rejections   map[string]uint64
	pollErrors   map[string]uint64
	failovers    uint64
}

// NewClient prepares a client for cfg (which must have a url or urls). It loads the public key,
// the TLS files and token, and the cache; a cached bundle that verifies is passed to onBundle and,
// if accepted, is current at once (so Ready is already closed). onBundle is called for every
// bundle the client adopts, never concurrently; if it returns an error the bundle is not adopted,
// and the client retries later.
func NewClient(cfg ClientConfig, log zerolog.Logger, onBundle func(Bundle) error) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if !cfg.Enabled() {
		return nil, errors.New("sidecar.authority.url: must be set to follow an authority")
	}
	pub, err := LoadPublicKey(cfg.PublicKeyPath)
	if err != nil {
		return nil, fmt.Errorf("authority public key: %w", err)
	}
	if err := os.MkdirAll(cfg.CacheDir, 0o700); err != nil {
		return nil, fmt.Errorf("authority cache dir: %w", err)
	}
	if err := os.Chmod(cfg.CacheDir, 0o700); err != nil {
		return nil, fmt.Errorf("authority cache dir: %w", err)
	}
	if onBundle == nil {
		onBundle = func(Bundle) error { return nil }
	}
	log = log.With().Str(logfields.Component, "authority-client").Logger()
	tlsCfg, err := clientTLS(&cfg, log)
	if err != nil {
		return nil, err
	}
	c := &Client{
		cfg:      cfg,
		pub:      pub,
		log:      log,
		ep:       &endpoints{urls: cfg.endpointList(), failback: failbackAfter},
		onBundle: onBundle,
		now:      time.Now,
		backoff:  [2]time.Duration{minBackoff, maxBackoff},
		ready:    make(chan struct{}),
		revHead:  revocationChainStart,
		changed:  make(chan struct{}),
		hc: &http.Client{
			// Never an environment proxy: the sidecar talks to its authority directly.
			Transport: &http.Transport{
				Proxy:               nil,
				DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
				TLSClientConfig:     tlsCfg,
				TLSHandshakeTimeout: 10 * time.Second,
				// HTTP/1.1: one connection per feed. Measured with a thousand sidecars, Go's HTTP/2
				// server spends a third more CPU per answer than HTTP/1.1 does, and both feeds
				// answer at once after a change.
				ForceAttemptHTTP2:   false,
				MaxIdleConnsPerHost: 4,
				IdleConnTimeout:     time.Minute,
			},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		rejections: map[string]uint64{},
		pollErrors: map[string]uint64{},
	}
	if cfg.TokenFile != "" {
		c.token, err = newReloader("token file", []string{cfg.TokenFile},
			func() (string, error) { return readTokenFile(cfg.TokenFile) }, log)
		if err != nil {
			return nil, fmt.Errorf("sidecar.authority.token_file: %w", err)
		}
	}
	c.loadCache()
	return c, nil
}

// Ready is closed once a bundle is current (from the cache or the authority).
func (c *Client) Ready() <-chan struct{} { return c.ready }

// Changed returns a channel that is closed at the next change the client adopts: a new bundle, or
// revocations added or replaced (not heartbeats).
func (c *Client) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

func (c *Client) changedLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// PublicKey is the authority key the client verifies with.
func (c *Client) PublicKey() ed25519.PublicKey { return c.pub }

// Bundle returns the current bundle, if any.
func (c *Client) Bundle() (Bundle, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bundle == nil {
		return Bundle{}, false
	}
	return *c.bundle, true
}

// Revoked reports whether tokenID is on the authority's revocation list as last seen.
func (c *Client) Revoked(tokenID string) bool { return c.revs.Revoked(tokenID) }

// Stale reports whether the sidecar must deny everything with ErrStale: no bundle, or no signed
// word from the authority on both feeds for longer than the bundle TTL. It is on every decision's
// path: it takes the lock briefly and allocates nothing.
func (c *Client) Stale() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, deadline, ok := c.deadlineLocked()
	return !ok || !c.now().Before(deadline)
}

// deadlineLocked is the moment the client's view is current as of and when it goes stale; ok is
// false without a bundle.
func (c *Client) deadlineLocked() (contact, deadline time.Time, ok bool) {
	if c.bundle == nil {
		return time.Time{}, time.Time{}, false
	}
	contact = c.bundleFresh
	if c.revFresh.Before(contact) {
		contact = c.revFresh
	}
	return contact, contact.Add(c.bundle.TTL), true
}

// PollFailure is one poll that went wrong.
type PollFailure struct {
	Time   time.Time
	Feed   string // "bundle" or "revocations"
	URL    string
	Reason string // a Reject* or Poll* constant
	Error  string
}

// ClientStatus is a snapshot for logs, health checks and metrics.
type ClientStatus struct {
	Version     string        // current bundle version; "" when there is none
	SignedAt    time.Time     // when the authority signed that version
	AdoptedAt   time.Time     // when this client adopted it (from the authority or its cache)
	LastContact time.Time     // the moment the client's view is current as of
	Age         time.Duration // how old the view is: now − LastContact
	Deadline    time.Time     // when it goes stale without further contact
	Stale       bool
	Revocations int

	URL           string            // the authority URL in use
	LastSuccess   time.Time         // the last poll answered and accepted, on either feed
	LastFailure   *PollFailure      // the last poll that failed, for any reason
	LastRejection *PollFailure      // the last answer rejected (Reason is a Reject* constant)
	Rejections    map[string]uint64 // answers rejected, by Reject* reason
	PollErrors    map[string]uint64 // polls failed without an answer to judge, by Poll* reason
	Failovers     uint64            // moves from one url to another
}

// Status returns the client's view.
func (c *Client) Status() ClientStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	st := ClientStatus{
		Revocations:   c.revs.len(),
		Stale:         true,
		URL:           c.ep.peek(),
		LastSuccess:   c.lastSuccess,
		LastFailure:   copyFailure(c.lastFailure),
		LastRejection: copyFailure(c.lastReject),
		Rejections:    maps.Clone(c.rejections),
		PollErrors:    maps.Clone(c.pollErrors),
		Failovers:     c.failovers,
	}
	contact, deadline, ok := c.deadlineLocked()
	if !ok {
		return st
	}
	st.Version, st.SignedAt, st.AdoptedAt = c.bundle.Version, c.bundleSigned, c.adoptedAt
	st.LastContact, st.Deadline = contact, deadline
	st.Age = now.Sub(contact)
	st.Stale = !now.Before(deadline)
	return st
}

func copyFailure(f *PollFailure) *PollFailure {
	if f == nil {
		return nil
	}
	cp := *f
	return &cp
}

// Run follows the authority until ctx is done, failing over between urls and reconnecting with
// backoff. It returns nil when ctx ends.
func (c *Client) Run(ctx context.Context) error {
	c.runMu.Lock()
	defer c.runMu.Unlock()
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); c.loop(ctx, "bundle", c.pollBundle) }()
	go func() { defer wg.Done(); c.loop(ctx, "revocations", c.pollRevocations) }()
	go func() { defer wg.Done(); c.watchStale(ctx) }()
	wg.Wait()
	return nil
}

// endpoints is the list of authority urls and the one in use.
type endpoints struct {
	urls     []string
	failback time.Duration

	mu      sync.Mutex
	cur     int
	movedAt time.Time
}

// current returns the url to use, going back to the first once failback has passed elsewhere.
func (e *endpoints) current(now time.Time) (i int, u string, back bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cur != 0 && now.Sub(e.movedAt) >= e.failback {
		e.cur, back = 0, true
	}
	return e.cur, e.urls[e.cur], back
}

func (e *endpoints) setFailback(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.failback = d
}

// untilFailback is how long until the client tries the first url again; ok is false on the first.
func (e *endpoints) untilFailback(now time.Time) (d time.Duration, ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cur == 0 {
		return 0, false
	}
	return e.failback - now.Sub(e.movedAt), true
}

func (e *endpoints) peek() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.urls[e.cur]
}

// failed moves off url i after a failure there (unless another feed already has). It reports
// whether the url in use is now another one, and which.
func (e *endpoints) failed(i int, now time.Time) (moved, other bool, next string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cur == i && len(e.urls) > 1 {
		e.cur = (i + 1) % len(e.urls)
		e.movedAt = now
		moved = true
	}
	return moved, e.cur != i, e.urls[e.cur]
}

// rejectError is an answer the client received and refused.
type rejectError struct {
	reason string
	err    error
}

func (e *rejectError) Error() string { return e.err.Error() }
func (e *rejectError) Unwrap() error { return e.err }

func reject(reason string, err error) error { return &rejectError{reason: reason, err: err} }

// rejectVerify classifies a verification failure.
func rejectVerify(err error) error {
	switch {
	case errors.Is(err, errWrongKey):
		return reject(RejectWrongKey, err)
	case errors.Is(err, errBadSignature):
		return reject(RejectBadSignature, err)
	case errors.Is(err, errVersionMismatch):
		return reject(RejectVersionMismatch, err)
	}
	return reject(RejectMalformed, err)
}

// statusError is an HTTP answer other than the ones the API gives a sidecar in good standing.
type statusError struct {
	path   string
	status string
	code   int
	body   []byte
}

func (e *statusError) Error() string {
	return fmt.Sprintf("GET %s: %s: %s", e.path, e.status, bytes.TrimSpace(e.body[:min(len(e.body), 512)]))
}

// loop runs poll until ctx ends. A failure moves to the next url at once (each url is tried once
// per streak before any wait); after that it backs off (minBackoff doubling to maxBackoff).
func (c *Client) loop(ctx context.Context, feed string, poll func(context.Context, string) error) {
	log := c.log.With().Str(logfields.Feed, feed).Logger()
	minBackoff, maxBackoff := c.backoff[0], c.backoff[1]
	backoff := minBackoff
	streak := 0
	for ctx.Err() == nil {
		i, base, back := c.ep.current(c.now())
		if back {
			log.Info().Str(logfields.URL, base).Msg("trying the first authority url again")
		}
		err := poll(ctx, base)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			if streak > 0 {
				log.Info().Str(logfields.URL, base).Msg("authority reachable again")
			}
			streak, backoff = 0, minBackoff
			c.mu.Lock()
			c.lastSuccess = c.now()
			c.mu.Unlock()
			continue
		}
		streak++
		c.noteFailure(log, feed, base, err, streak == 1)
		moved, other, next := c.ep.failed(i, c.now())
		if moved {
			c.mu.Lock()
			c.failovers++
			c.mu.Unlock()
			log.Warn().Str(logfields.URL, base).Str(logfields.Next, next).Msg("failing over to the next authority url")
		}
		if other && streak < len(c.ep.urls) {
			continue
		}
		jitter := time.Duration(rand.Int64N(int64(backoff) / 5))
		t := time.NewTimer(backoff - backoff/10 + jitter)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

// noteFailure counts and logs one failed poll. Rejections and refusals are logged every time (the
// backoff bounds how often); an unreachable authority at the start of a streak only.
func (c *Client) noteFailure(log zerolog.Logger, feed, base string, err error, first bool) {
	f := &PollFailure{Time: c.now(), Feed: feed, URL: base, Error: err.Error()}
	var rej *rejectError
	var st *statusError
	switch {
	case errors.As(err, &rej):
		f.Reason = rej.reason
	case errors.As(err, &st) && (st.code == http.StatusUnauthorized || st.code == http.StatusForbidden):
		f.Reason = PollUnauthorized
	case errors.As(err, &st):
		f.Reason = PollHTTPError
	default:
		f.Reason = PollUnreachable
	}
	c.mu.Lock()
	c.lastFailure = f
	var n uint64
	if rej != nil {
		c.lastReject = f
		c.rejections[f.Reason]++
		n = c.rejections[f.Reason]
	} else {
		c.pollErrors[f.Reason]++
		n = c.pollErrors[f.Reason]
	}
	c.mu.Unlock()

	var ev *zerolog.Event
	msg := ""
	switch f.Reason {
	case RejectWrongKey, RejectBadSignature, RejectMalformed, RejectVersionMismatch, RejectNotAdopted:
		ev, msg = log.Error(), "authority answer rejected"
	case RejectExpired, RejectReplayed, RejectOutOfOrder:
		ev, msg = log.Warn(), "authority answer rejected"
	case PollUnauthorized:
		ev, msg = log.Error(), "the authority refused this sidecar's credentials"
	case PollHTTPError:
		ev, msg = log.Warn(), "authority poll failed"
	default:
		if !first {
			ev = log.Debug()
		} else {
			ev = log.Warn()
		}
		msg = "authority unreachable; retrying"
	}
	ev.Err(err).Str(logfields.URL, base).Str(logfields.Reason, f.Reason).Uint64(logfields.Rejections, n).Msg(msg)
}

// watchStale logs each transition between fresh and stale. It wakes at the deadline, and at least
// once a second to see contact renewed.
func (c *Client) watchStale(ctx context.Context) {
	was := c.Stale()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.mu.Lock()
		_, deadline, ok := c.deadlineLocked()
		c.mu.Unlock()
		next := time.Second
		if d := time.Until(deadline); ok && d > 0 && d < next {
			next = d
		}
		t.Reset(next)
		if stale := c.Stale(); stale != was {
			st := c.Status()
			if stale {
				ev := c.log.Error().Str(logfields.Version, st.Version).Time(logfields.LastContact, st.LastContact)
				if st.LastFailure != nil {
					ev = ev.Str(logfields.Reason, st.LastFailure.Reason).Str(logfields.Error, st.LastFailure.Error)
				}
				ev.Msg("policy bundle stale: no word from the authority within bundle_ttl_seconds; denying everything")
			} else {
				c.log.Info().Str(logfields.Version, st.Version).Time(logfields.Deadline, st.Deadline).Msg("policy bundle fresh")
			}
			was = stale
		}
	}
}

// pollWait is how long one long poll may hang: long_poll_seconds, but under a third of the TTL,
// and on a url failed over to, no later than the time to try the first one again.
func (c *Client) pollWait() time.Duration {
	wait := time.Duration(c.cfg.LongPollSeconds) * time.Second
	c.mu.Lock()
	if c.bundle != nil {
		wait = min(wait, c.bundle.TTL/3)
	}
	c.mu.Unlock()
	if d, ok := c.ep.untilFailback(c.now()); ok {
		wait = max(min(wait, d), 100*time.Millisecond)
	}
	return wait
}

func (c *Client) get(ctx context.Context, base, path string, q url.Values, wait time.Duration, header http.Header) (*http.Response, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, wait+10*time.Second)
	defer cancel()
	if wait > 0 {
		q.Set("wait", strconv.FormatFloat(wait.Seconds(), 'f', 3, 64))
	}
	u := base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if c.token != nil {
		req.Header.Set("Authorization", "Bearer "+c.token.get())
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	// Sized from Content-Length when there is one: a fleet's every sidecar reads each new bundle at
	// once, and growing the buffer from 512 bytes doubled the copying.
	var buf bytes.Buffer
	if n := resp.ContentLength; n > 0 && n <= maxTokenBytes {
		buf.Grow(int(n) + 1)
	}
	_, err = buf.ReadFrom(io.LimitReader(resp.Body, maxTokenBytes+1))
	body := buf.Bytes()
	if err != nil {
		return nil, nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(body) > maxTokenBytes {
		return nil, nil, fmt.Errorf("%s: answer larger than %d bytes", path, maxTokenBytes)
	}
	return resp, body, nil
}

// contactTime is when a signed message proves contact: its signing time, but never later than its
// arrival (a fast authority clock must not buy extra time).
func contactTime(iat, arrived time.Time) time.Time {
	if iat.After(arrived) {
		return arrived
	}
	return iat
}

// tooOld rejects a message signed more than ttl before it arrived: it cannot prove contact, and
// an authority whose clock is that far behind needs fixing, loudly.
func tooOld(what string, iat, arrived time.Time, ttl time.Duration) error {
	if ttl > 0 && arrived.Sub(iat) >= ttl {
		return reject(RejectExpired, fmt.Errorf("%s signed at %s, more than the bundle TTL (%s) before it arrived",
			what, iat.UTC().Format(time.RFC3339), ttl))
	}
	return nil
}

func (c *Client) pollBundle(ctx context.Context, base string) error {
	wait := time.Duration(0)
	h := http.Header{}
	c.mu.Lock()
	if c.bundle != nil {
		h.Set("If-None-Match", etag(c.bundle.Version))
	}
	c.mu.Unlock()
	if h.Get("If-None-Match") != "" {
		wait = c.pollWait()
	}
	resp, body, err := c.get(ctx, base, PathBundle, url.Values{}, wait, h)
	if err != nil {
		return err
	}
	arrived := c.now()
	switch resp.StatusCode {
	case http.StatusNotModified:
		raw := resp.Header.Get(HeaderFreshness)
		fc, err := verifyFreshness(c.pub, raw)
		if err != nil {
			return rejectVerify(err)
		}
		return c.acceptFreshness(fc, raw, arrived, true)
	case http.StatusOK:
		raw := string(body)
		b, err := VerifyBundle(c.pub, raw)
		if err != nil {
			return rejectVerify(err)
		}
		return c.acceptBundle(b, raw, arrived, true)
	default:
		return &statusError{path: PathBundle, status: resp.Status, code: resp.StatusCode, body: body}
	}
}

// acceptFreshness records a heartbeat for the current bundle. One older than the newest already
// seen (from a replica whose clock is a little behind) changes nothing.
func (c *Client) acceptFreshness(fc *freshnessClaims, raw string, arrived time.Time, live bool) error {
	c.mu.Lock()
	if c.bundle == nil || fc.Version != c.bundle.Version {
		c.mu.Unlock()
		return reject(RejectOutOfOrder, fmt.Errorf("%w: heartbeat for version %s, current is another", ErrBadBundle, fc.Version))
	}
	if live {
		if err := tooOld("heartbeat", fc.IssuedAt, arrived, c.bundle.TTL); err != nil {
			c.mu.Unlock()
			return err
		}
	}
	ct := contactTime(fc.IssuedAt, arrived)
	newer := ct.After(c.bundleFresh)
	if newer {
		c.bundleFresh = ct
	}
	c.mu.Unlock()
	// Disk writes happen outside c.mu: Stale is on every decision's path.
	if live && newer {
		c.writeCache(cacheBundleFresh, []byte(raw+"\n"))
	}
	return nil
}

// acceptBundle adopts a verified bundle (after onBundle accepts it) or, when its version is the
// current one, counts it as a heartbeat. A bundle of another version signed before the current one
// was is a rollback and is refused. live is false for the cache.
func (c *Client) acceptBundle(b *Bundle, raw string, arrived time.Time, live bool) error {
	c.mu.Lock()
	same := c.bundle != nil && c.bundle.Version == b.Version
	if !same && c.bundle != nil && b.IssuedAt.Before(c.bundleSigned) {
		c.mu.Unlock()
		return reject(RejectReplayed, fmt.Errorf("%w: version %s signed at %s, before the current %s (signed %s)", ErrBadBundle,
			b.Version, b.IssuedAt.UTC().Format(time.RFC3339Nano), c.bundle.Version, c.bundleSigned.UTC().Format(time.RFC3339Nano)))
	}
	c.mu.Unlock()
	if live {
		if err := tooOld("bundle", b.IssuedAt, arrived, b.TTL); err != nil {
			return err
		}
	}
	if !same {
		// onBundle runs outside c.mu: it may take a while, and may call Status.
		if err := c.onBundle(*b); err != nil {
			return reject(RejectNotAdopted, fmt.Errorf("bundle %s not adopted: %w", b.Version, err))
		}
	}
	ct := contactTime(b.IssuedAt, arrived)
	c.mu.Lock()
	if !same {
		c.bundle, c.bundleSigned, c.adoptedAt = b, b.IssuedAt, c.now()
		c.changedLocked()
	}
	newer := ct.After(c.bundleFresh)
	if newer {
		c.bundleFresh = ct
	}
	c.mu.Unlock()
	if live && (!same || newer) {
		c.writeCache(cacheBundle, []byte(raw+"\n"))
	}
	if !same {
		c.log.Info().Str(logfields.Version, b.Version).Int(logfields.Count, len(b.Files)).Msg("policy bundle adopted")
	}
	c.readyOnce.Do(func() { close(c.ready) })
	return nil
}

func (c *Client) pollRevocations(ctx context.Context, base string) error {
	q := url.Values{}
	c.mu.Lock()
	since, head, have := c.revNext, c.revHead, c.revHave
	if c.revResync {
		since, head = 0, revocationChainStart
	}
	c.mu.Unlock()
	q.Set("since", strconv.Itoa(since))
	q.Set("head", head)
	wait := time.Duration(0)
	if have {
		wait = c.pollWait()
	}
	resp, body, err := c.get(ctx, base, PathRevocations, q, wait, nil)
	if err != nil {
		return err
	}
	arrived := c.now()
	if resp.StatusCode != http.StatusOK {
		return &statusError{path: PathRevocations, status: resp.Status, code: resp.StatusCode, body: body}
	}
	raw := string(body)
	rc, err := verifyRevocations(c.pub, raw)
	if err != nil {
		return rejectVerify(err)
	}
	return c.acceptRevocations(rc, raw, arrived, true)
}

// acceptRevocations applies one signed page. A whole list (from 0) replaces the set — but one that
// drops or changes entries the client holds must be signed after everything already seen, or it
// is a rollback. The next page of the list held extends it. Anything else is refused, and the next
// poll asks for the whole list. live is false for the cache.
func (c *Client) acceptRevocations(rc *revocationClaims, raw string, arrived time.Time, live bool) error {
	line := []byte(raw + "\n")
	var save func()
	var added []Revocation
	c.mu.Lock()
	if live && c.bundle != nil {
		if err := tooOld("revocation list", rc.IssuedAt, arrived, c.bundle.TTL); err != nil {
			c.mu.Unlock()
			return err
		}
	}
	switch {
	case rc.From == 0:
		extends := c.revNext <= len(rc.Entries) && revocationChain(revocationChainStart, rc.Entries[:c.revNext]) == c.revHead
		if !extends && rc.IssuedAt.Before(c.revIat) {
			c.mu.Unlock()
			return reject(RejectReplayed, fmt.Errorf("revocation list: a list without entries held here, signed %s, before %s",
				rc.IssuedAt.UTC().Format(time.RFC3339Nano), c.revIat.UTC().Format(time.RFC3339Nano)))
		}
		for _, r := range rc.Entries {
			if !c.revs.Revoked(r.TokenID) {
				added = append(added, r)
			}
		}
		c.revs.replace(rc.Entries)
		switch {
		case !extends || len(added) > 0:
			save = func() { c.writeCache(cacheRevocations, line) }
			c.changedLocked()
		case len(rc.Entries) == 0 && c.revHave:
			save = func() { c.writeCache(cacheRevocationFresh, line) } // a heartbeat of the empty list
		default:
			save = func() { c.writeCache(cacheRevocations, line) }
		}
	case rc.From == c.revNext && rc.Prefix == c.revHead && c.revHave:
		added = rc.Entries
		c.revs.add(rc.Entries)
		if len(rc.Entries) > 0 {
			save = func() { c.appendCache(cacheRevocations, line) }
			c.changedLocked()
		} else {
			save = func() { c.writeCache(cacheRevocationFresh, line) }
		}
	default:
		err := fmt.Errorf("revocation list: page [%d, %d) does not follow the %d entries held", rc.From, rc.Next, c.revNext)
		c.revResync = true
		c.mu.Unlock()
		return reject(RejectOutOfOrder, err)
	}
	c.revHave, c.revResync = true, false
	c.revNext, c.revHead = rc.Next, rc.Head
	if rc.IssuedAt.After(c.revIat) {
		c.revIat = rc.IssuedAt
	}
	if ct := contactTime(rc.IssuedAt, arrived); ct.After(c.revFresh) {
		c.revFresh = ct
	}
	c.mu.Unlock()
	// Disk writes happen outside c.mu (Stale is on every decision's path); only this feed's
	// goroutine writes these files, so their order is kept.
	if live {
		save()
		for _, r := range added {
			c.log.Info().Str(logfields.TokenID, r.TokenID).Str(logfields.Reason, r.Reason).Msg("revocation received")
		}
	}
	return nil
}

func (c *Client) writeCache(name string, data []byte) {
	path := filepath.Join(c.cfg.CacheDir, name)
	if err := keyfile.WriteAtomic(path, data, 0o600); err != nil {
		c.log.Warn().Err(err).Str(logfields.File, path).Msg("writing authority cache")
	}
}

func (c *Client) appendCache(name string, data []byte) {
	path := filepath.Join(c.cfg.CacheDir, name)
	err := func() error {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := f.Write(data); err != nil {
			return err
		}
		return f.Sync()
	}()
	if err != nil {
		c.log.Warn().Err(err).Str(logfields.File, path).Msg("writing authority cache")
	}
}

// loadCache restores the last good state. Anything that does not verify is ignored (and logged):
// the client then starts stale and waits for the authority, which is the fail-closed default.
func (c *Client) loadCache() {
	dir := c.cfg.CacheDir
	read := func(name string) []string {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				c.log.Warn().Err(err).Str(logfields.File, filepath.Join(dir, name)).Msg("reading authority cache")
			}
			return nil
		}
		var lines []string
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(nil, maxTokenBytes)
		for sc.Scan() {
			if l := strings.TrimSpace(sc.Text()); l != "" {
				lines = append(lines, l)
			}
		}
		return lines
	}
	bad := func(name string, err error) {
		c.log.Warn().Err(err).Str(logfields.File, filepath.Join(dir, name)).Msg("ignoring authority cache file")
	}
	if lines := read(cacheBundle); len(lines) == 1 {
		b, err := VerifyBundle(c.pub, lines[0])
		if err == nil {
			err = c.acceptBundle(b, lines[0], b.IssuedAt, false)
		}
		if err != nil {
			bad(cacheBundle, err)
		} else if lines := read(cacheBundleFresh); len(lines) == 1 {
			fc, err := verifyFreshness(c.pub, lines[0])
			switch {
			case err != nil:
				bad(cacheBundleFresh, err)
			case fc.Version != b.Version || fc.IssuedAt.Before(b.IssuedAt):
				// A heartbeat from before the cached bundle arrived: the bundle says more.
			default:
				if err := c.acceptFreshness(fc, lines[0], fc.IssuedAt, false); err != nil {
					bad(cacheBundleFresh, err)
				}
			}
		}
	}
	for i, line := range read(cacheRevocations) {
		rc, err := verifyRevocations(c.pub, line)
		if err == nil && i == 0 && rc.From != 0 {
			err = errors.New("first page does not start the list")
		}
		if err == nil {
			err = c.acceptRevocations(rc, line, rc.IssuedAt, false)
		}
		if err != nil {
			bad(cacheRevocations, fmt.Errorf("line %d: %w", i+1, err))
			c.mu.Lock()
			c.revs.replace(nil)
			c.revHave, c.revNext, c.revHead, c.revIat, c.revFresh = false, 0, revocationChainStart, time.Time{}, time.Time{}
			c.mu.Unlock()
			return
		}
	}
	if lines := read(cacheRevocationFresh); len(lines) == 1 {
		rc, err := verifyRevocations(c.pub, lines[0])
		if err == nil && len(rc.Entries) > 0 {
			err = errors.New("not a heartbeat page")
		}
		c.mu.Lock()
		follows := err == nil && c.revHave && rc.From == c.revNext && rc.Prefix == c.revHead
		c.mu.Unlock()
		if err == nil && !follows {
			return // an older heartbeat, from before the last change: the list's own pages say enough
		}
		if err == nil {
			err = c.acceptRevocations(rc, lines[0], rc.IssuedAt, false)
		}
		if err != nil {
			bad(cacheRevocationFresh, err)
		}
	}
	if st := c.Status(); st.Version != "" {
		c.log.Info().Str(logfields.Version, st.Version).Time(logfields.LastContact, st.LastContact).
			Bool(logfields.Stale, st.Stale).Int(logfields.Count, st.Revocations).Msg("authority cache loaded")
	}
}
