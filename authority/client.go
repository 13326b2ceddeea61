package authority

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
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
type Client struct {
	cfg      ClientConfig
	pub      ed25519.PublicKey
	log      zerolog.Logger
	base     string
	hc       *http.Client
	onBundle func(Bundle) error
	now      func() time.Time

	ready     chan struct{}
	readyOnce sync.Once
	runMu     sync.Mutex // one Run at a time

	mu          sync.Mutex
	bundle      *Bundle
	bundleIat   time.Time // newest accepted signing time on the bundle feed (replay guard)
	bundleFresh time.Time
	revEpoch    string
	revNext     int
	revIat      time.Time
	revFresh    time.Time
	revs        revocationSet
}

// NewClient prepares a client for cfg (which must have a URL). It loads the public key and the
// cache; a cached bundle that verifies is passed to onBundle and, if accepted, is current at once
// (so Ready is already closed). onBundle is called for every bundle the client adopts, never
// concurrently; if it returns an error the bundle is not adopted, and the client retries later.
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
	c := &Client{
		cfg:      cfg,
		pub:      pub,
		log:      log,
		base:     strings.TrimRight(cfg.URL, "/"),
		onBundle: onBundle,
		now:      time.Now,
		ready:    make(chan struct{}),
		hc: &http.Client{
			// Never an environment proxy: the sidecar talks to its authority directly.
			Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4, IdleConnTimeout: time.Minute},
		},
	}
	c.loadCache()
	return c, nil
}

// Ready is closed once a bundle is current (from the cache or the authority).
func (c *Client) Ready() <-chan struct{} { return c.ready }

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
// word from the authority on both feeds for longer than the bundle TTL.
func (c *Client) Stale() bool { return c.Status().Stale }

// ClientStatus is a snapshot for logs and health checks.
type ClientStatus struct {
	Version     string    // current bundle version; "" when there is none
	LastContact time.Time // the moment the client's view is current as of
	Deadline    time.Time // when it goes stale without further contact
	Stale       bool
	Revocations int
}

// Status returns the client's view.
func (c *Client) Status() ClientStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := ClientStatus{Revocations: c.revs.len(), Stale: true}
	if c.bundle == nil {
		return st
	}
	st.Version = c.bundle.Version
	st.LastContact = c.bundleFresh
	if c.revFresh.Before(st.LastContact) {
		st.LastContact = c.revFresh
	}
	st.Deadline = st.LastContact.Add(c.bundle.TTL)
	st.Stale = !c.now().Before(st.Deadline)
	return st
}

// Run follows the authority until ctx is done, reconnecting with backoff. It returns nil when ctx
// ends.
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

// loop runs poll until ctx ends, backing off after failures (250 ms doubling to 5 s, jittered).
func (c *Client) loop(ctx context.Context, feed string, poll func(context.Context) error) {
	log := c.log.With().Str(logfields.Component, "authority-client").Str(logfields.Feed, feed).Logger()
	const minBackoff, maxBackoff = 250 * time.Millisecond, 5 * time.Second
	backoff := minBackoff
	failing := false
	for ctx.Err() == nil {
		err := poll(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			if failing {
				log.Info().Str(logfields.Dial, c.base).Msg("authority reachable again")
			}
			failing, backoff = false, minBackoff
			continue
		}
		if !failing {
			log.Warn().Err(err).Str(logfields.Dial, c.base).Msg("authority poll failed; retrying with backoff")
		} else {
			log.Debug().Err(err).Dur(logfields.Duration, backoff).Msg("authority poll failed")
		}
		failing = true
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

// watchStale logs each transition between fresh and stale.
func (c *Client) watchStale(ctx context.Context) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	was := c.Status().Stale
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st := c.Status()
		if st.Stale != was {
			if st.Stale {
				c.log.Error().Str(logfields.Version, st.Version).Time(logfields.LastContact, st.LastContact).
					Msg("policy bundle stale: no word from the authority within bundle_ttl_seconds; denying everything")
			} else {
				c.log.Info().Str(logfields.Version, st.Version).Time(logfields.Deadline, st.Deadline).Msg("policy bundle fresh")
			}
			was = st.Stale
		}
	}
}

// pollWait is how long one long poll may hang: long_poll_seconds, but under a third of the TTL.
func (c *Client) pollWait() time.Duration {
	wait := time.Duration(c.cfg.LongPollSeconds) * time.Second
	c.mu.Lock()
	if c.bundle != nil {
		wait = min(wait, c.bundle.TTL/3)
	}
	c.mu.Unlock()
	return wait
}

func (c *Client) get(ctx context.Context, path string, q url.Values, wait time.Duration, header http.Header) (*http.Response, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, wait+10*time.Second)
	defer cancel()
	if wait > 0 {
		q.Set("wait", strconv.FormatFloat(wait.Seconds(), 'f', 3, 64))
	}
	u := c.base + path
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
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenBytes+1))
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

func (c *Client) pollBundle(ctx context.Context) error {
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
	resp, body, err := c.get(ctx, PathBundle, url.Values{}, wait, h)
	if err != nil {
		return err
	}
	arrived := c.now()
	switch resp.StatusCode {
	case http.StatusNotModified:
		raw := resp.Header.Get(HeaderFreshness)
		fc, err := verifyFreshness(c.pub, raw)
		if err != nil {
			return err
		}
		return c.acceptFreshness(fc, raw, arrived, true)
	case http.StatusOK:
		b, err := VerifyBundle(c.pub, string(body))
		if err != nil {
			return err
		}
		return c.acceptBundle(b, string(body), arrived, true)
	default:
		return fmt.Errorf("GET %s: %s: %s", PathBundle, resp.Status, bytes.TrimSpace(body[:min(len(body), 512)]))
	}
}

// acceptFreshness records a heartbeat for the current bundle.
func (c *Client) acceptFreshness(fc *freshnessClaims, raw string, arrived time.Time, persist bool) error {
	c.mu.Lock()
	if c.bundle == nil || fc.Version != c.bundle.Version {
		c.mu.Unlock()
		return fmt.Errorf("%w: heartbeat for version %s, current is another", ErrBadBundle, fc.Version)
	}
	if fc.IssuedAt.Before(c.bundleIat) {
		c.mu.Unlock()
		return fmt.Errorf("%w: heartbeat older than one already seen (replayed?)", ErrBadBundle)
	}
	c.bundleIat = fc.IssuedAt
	c.bundleFresh = contactTime(fc.IssuedAt, arrived)
	c.mu.Unlock()
	// Disk writes happen outside c.mu: Stale is on every decision's path.
	if persist {
		c.writeCache(cacheBundleFresh, []byte(raw+"\n"))
	}
	return nil
}

// acceptBundle adopts a verified bundle (after onBundle accepts it) or, when its version is the
// current one, counts it as a heartbeat.
func (c *Client) acceptBundle(b *Bundle, raw string, arrived time.Time, persist bool) error {
	c.mu.Lock()
	if b.IssuedAt.Before(c.bundleIat) {
		c.mu.Unlock()
		return fmt.Errorf("%w: bundle signed before one already seen (replayed?)", ErrBadBundle)
	}
	same := c.bundle != nil && c.bundle.Version == b.Version
	c.mu.Unlock()
	if !same {
		// onBundle runs outside c.mu: it may take a while, and may call Status.
		if err := c.onBundle(*b); err != nil {
			return fmt.Errorf("bundle %s not adopted: %w", b.Version, err)
		}
	}
	c.mu.Lock()
	c.bundle = b
	c.bundleIat = b.IssuedAt
	c.bundleFresh = contactTime(b.IssuedAt, arrived)
	c.mu.Unlock()
	if persist {
		c.writeCache(cacheBundle, []byte(raw+"\n"))
	}
	if !same {
		c.log.Info().Str(logfields.Version, b.Version).Int(logfields.Count, len(b.Files)).Msg("policy bundle adopted")
	}
	c.readyOnce.Do(func() { close(c.ready) })
	return nil
}

func (c *Client) pollRevocations(ctx context.Context) error {
	q := url.Values{}
	c.mu.Lock()
	epoch, next := c.revEpoch, c.revNext
	c.mu.Unlock()
	wait := time.Duration(0)
	if epoch != "" {
		q.Set("epoch", epoch)
		q.Set("since", strconv.Itoa(next))
		wait = c.pollWait()
	}
	resp, body, err := c.get(ctx, PathRevocations, q, wait, nil)
	if err != nil {
		return err
	}
	arrived := c.now()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", PathRevocations, resp.Status, bytes.TrimSpace(body[:min(len(body), 512)]))
	}
	rc, err := verifyRevocations(c.pub, string(body))
	if err != nil {
		return err
	}
	return c.acceptRevocations(rc, string(body), arrived, true)
}

// acceptRevocations applies one signed page: a whole list (from 0) replaces the set, the next page
// of the current list extends it, anything else is refused and the next poll refetches the list.
func (c *Client) acceptRevocations(rc *revocationClaims, raw string, arrived time.Time, persist bool) error {
	line := []byte(raw + "\n")
	var save func()
	c.mu.Lock()
	if rc.IssuedAt.Before(c.revIat) {
		c.mu.Unlock()
		return errors.New("revocation list: page older than one already seen (replayed?)")
	}
	switch {
	case rc.From == 0:
		c.revs.replace(rc.Entries)
		c.revEpoch, c.revNext = rc.Epoch, rc.Next
		save = func() { c.writeCache(cacheRevocations, line) }
	case rc.Epoch == c.revEpoch && rc.From == c.revNext:
		c.revs.add(rc.Entries)
		c.revNext = rc.Next
		if len(rc.Entries) > 0 {
			save = func() { c.appendCache(cacheRevocations, line) }
		} else {
			save = func() { c.writeCache(cacheRevocationFresh, line) }
		}
	default:
		err := fmt.Errorf("revocation list: page [%d, %d) of %s does not follow [0, %d) of %s", rc.From, rc.Next, rc.Epoch, c.revNext, c.revEpoch)
		c.revEpoch, c.revNext = "", 0 // refetch the whole list
		c.mu.Unlock()
		return err
	}
	c.revIat = rc.IssuedAt
	c.revFresh = contactTime(rc.IssuedAt, arrived)
	c.mu.Unlock()
	// Disk writes happen outside c.mu (Stale is on every decision's path); only this feed's
	// goroutine writes these files, so their order is kept.
	if persist {
		save()
	}
	for _, r := range rc.Entries {
		c.log.Info().Str(logfields.TokenID, r.TokenID).Str(logfields.Reason, r.Reason).Msg("revocation received")
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
			c.revEpoch, c.revNext, c.revIat, c.revFresh = "", 0, time.Time{}, time.Time{}
			c.mu.Unlock()
			return
		}
	}
	if lines := read(cacheRevocationFresh); len(lines) == 1 {
		rc, err := verifyRevocations(c.pub, lines[0])
		if err == nil && rc.From == 0 {
			err = errors.New("not a heartbeat page")
		}
		if err == nil && (rc.Epoch != c.revEpoch || rc.From != c.revNext) {
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
