package authority

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// scriptedAuthority answers the bundle feed from a script, one answer per request (the last one
// repeats), and the revocation feed with a valid empty list.
type scriptedAuthority struct {
	key Signer
	url string

	mu     sync.Mutex
	script []func(w http.ResponseWriter)
	served int
}

func newScriptedAuthority(t *testing.T, key Signer, script ...func(w http.ResponseWriter)) *scriptedAuthority {
	t.Helper()
	sa := &scriptedAuthority{key: key, script: script}
	sa.url = serveLoopback(t, sa)
	return sa
}

func (sa *scriptedAuthority) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == PathRevocations {
		if wait, _ := strconv.ParseFloat(r.URL.Query().Get("wait"), 64); wait > 0 {
			select {
			case <-time.After(min(time.Duration(wait*float64(time.Second)), 500*time.Millisecond)):
			case <-r.Context().Done():
				return
			}
		}
		tok, _ := signRevocations(sa.key, revocationClaims{Prefix: revocationChainStart, Head: revocationChainStart, IssuedAt: time.Now()})
		w.Write([]byte(tok))
		return
	}
	sa.mu.Lock()
	answer := sa.script[min(sa.served, len(sa.script)-1)]
	sa.served++
	sa.mu.Unlock()
	answer(w)
}

func (sa *scriptedAuthority) count() int {
	sa.mu.Lock()
	defer sa.mu.Unlock()
	return sa.served
}

// runFastClient runs a client of url with short backoffs, logging to the returned buffer.
func runFastClient(t *testing.T, url, pubPath string, onBundle func(Bundle) error) (*Client, func() string) {
	t.Helper()
	cfg := DefaultClientConfig()
	cfg.URL, cfg.PublicKeyPath, cfg.CacheDir = url, pubPath, t.TempDir()
	log, logs := logBuffer(t)
	c, err := NewClient(cfg, log, onBundle)
	if err != nil {
		t.Fatal(err)
	}
	c.backoff = [2]time.Duration{10 * time.Millisecond, 20 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return c, logs.String
}

func testBundle(t *testing.T, policy string) *Bundle {
	t.Helper()
	files := map[string][]byte{"p.cedar": []byte(policy)}
	b := &Bundle{Files: files, SchemaName: "firma.cedarschema", Schema: []byte("namespace Firma {}"), TTL: time.Minute}
	b.Version = bundleVersion(b.SchemaName, b.Schema, b.Files)
	return b
}

func answerToken(tok string) func(http.ResponseWriter) {
	return func(w http.ResponseWriter) { w.Write([]byte(tok)) }
}

// Every answer the client cannot trust is rejected, counted by reason and logged every time — not
// only the first of a streak.
func TestClientRejectionsAreLoud(t *testing.T) {
	t.Parallel()
	key, _, keyPath := newTestKey(t)
	other, _, _ := newTestKey(t)
	now := time.Now()
	good := testBundle(t, "// v1\n")
	older := testBundle(t, "// v0\n")

	sign := func(k Signer, b *Bundle, at time.Time) string {
		tok, err := signBundle(k, b, at)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	tampered := []byte(sign(key, good, now))
	tampered[len("v4.public.")+60] ^= 1
	lying := bundleClaims{Version: older.Version, Schema: bundleFile{Name: good.SchemaName, Content: string(good.Schema)},
		Files: []bundleFile{{Name: "p.cedar", Content: "// v1\n"}}, TTLSeconds: 60, IssuedAt: now, Issuer: IssuerName}
	lie, err := signMessage(key, lying, implicitBundle)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		reason string
		answer func(http.ResponseWriter)
		level  string
	}{
		{RejectWrongKey, answerToken(sign(other, good, now)), "error"},
		{RejectMalformed, answerToken("this is not a token"), "error"},
		{RejectBadSignature, answerToken(string(tampered)), "error"},
		{RejectVersionMismatch, answerToken(lie), "error"},
		{RejectExpired, answerToken(sign(key, good, now.Add(-2*time.Minute))), "warn"},
	}
	var script []func(http.ResponseWriter)
	for _, s := range steps {
		// Each bad answer twice in a row: the second must be as loud as the first.
		script = append(script, s.answer, s.answer)
	}
	script = append(script,
		answerToken(sign(key, good, time.Now())),
		answerToken(sign(key, older, now.Add(-10*time.Second))), // signed before the bundle held: a rollback
		func(w http.ResponseWriter) { // then heartbeats
			fresh, _ := signFreshness(key, good.Version, time.Minute, time.Now())
			w.Header().Set(HeaderFreshness, fresh)
			w.WriteHeader(http.StatusNotModified)
			time.Sleep(100 * time.Millisecond)
		})
	sa := newScriptedAuthority(t, key, script...)
	c, logs := runFastClient(t, sa.url, PublicKeyPath(keyPath), nil)
	eventually(t, 10*time.Second, "the script played", func() bool { return sa.count() > len(script) })

	st := c.Status()
	for _, s := range steps {
		if n := st.Rejections[s.reason]; n != 2 {
			t.Errorf("%s counted %d times, want 2", s.reason, n)
		}
		lines := 0
		for _, l := range strings.Split(logs(), "\n") {
			if strings.Contains(l, `"reason":"`+s.reason+`"`) && strings.Contains(l, `"level":"`+s.level+`"`) {
				lines++
			}
		}
		if lines != 2 {
			t.Errorf("%s logged %d times at %s, want 2", s.reason, lines, s.level)
		}
	}
	if st.Rejections[RejectReplayed] != 1 {
		t.Errorf("rollback counted %d times, want 1", st.Rejections[RejectReplayed])
	}
	if st.Version != good.Version || st.Stale {
		t.Errorf("client holds %q (stale %v), want the good bundle %s", st.Version, st.Stale, good.Version)
	}
	if st.LastRejection == nil || st.LastRejection.Reason != RejectReplayed || st.LastRejection.URL != sa.url || st.LastRejection.Feed != "bundle" {
		t.Errorf("last rejection %+v", st.LastRejection)
	}
	if st.LastSuccess.IsZero() || st.URL != sa.url || st.Age < 0 || st.Age > time.Minute || st.SignedAt.IsZero() || st.AdoptedAt.IsZero() {
		t.Errorf("status %+v", st)
	}
}

func TestClientRejectsBundleItCannotLoad(t *testing.T) {
	t.Parallel()
	key, _, keyPath := newTestKey(t)
	b := testBundle(t, "// v1\n")
	sa := newScriptedAuthority(t, key, func(w http.ResponseWriter) {
		tok, _ := signBundle(key, b, time.Now())
		w.Write([]byte(tok))
	})
	c, logs := runFastClient(t, sa.url, PublicKeyPath(keyPath), func(Bundle) error { return errors.New("policy does not load") })
	eventually(t, 5*time.Second, "two refusals", func() bool { return c.Status().Rejections[RejectNotAdopted] >= 2 })
	if !c.Stale() || strings.Count(logs(), "policy does not load") < 2 {
		t.Errorf("stale %v; logs:\n%s", c.Stale(), logs())
	}
}

// acceptRevocations and acceptBundle refuse rollbacks but take the next page and heartbeats from
// any replica, whatever its clock.
func TestClientRefusesRollbacks(t *testing.T) {
	key, _, keyPath := newTestKey(t)
	cfg := DefaultClientConfig()
	cfg.URL, cfg.PublicKeyPath, cfg.CacheDir = "http://127.0.0.1:1", PublicKeyPath(keyPath), t.TempDir()
	c, err := NewClient(cfg, zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	page := func(from int, entries []Revocation, all []Revocation, at time.Time) *revocationClaims {
		t.Helper()
		prefix := revocationChain(revocationChainStart, all[:from])
		tok, err := signRevocations(key, revocationClaims{From: from, Next: from + len(entries), Prefix: prefix,
			Head: revocationChain(prefix, entries), Entries: entries, IssuedAt: at})
		if err != nil {
			t.Fatal(err)
		}
		rc, err := verifyRevocations(c.pub, tok)
		if err != nil {
			t.Fatal(err)
		}
		return rc
	}
	reason := func(err error) string {
		var rej *rejectError
		if errors.As(err, &rej) {
			return rej.reason
		}
		return ""
	}
	a, b, x := Revocation{TokenID: "a"}, Revocation{TokenID: "b"}, Revocation{TokenID: "x"}
	ab := []Revocation{a, b}
	if err := c.acceptRevocations(page(0, ab, ab, t0), "", t0, false); err != nil {
		t.Fatal(err)
	}
	// The next page, from a replica whose clock is behind: taken.
	abx := []Revocation{a, b, x}
	if err := c.acceptRevocations(page(2, abx[2:], abx, t0.Add(-time.Second)), "", t0, false); err != nil || !c.Revoked("x") {
		t.Fatalf("next page: %v", err)
	}
	// The whole list again, extended: taken whatever its time.
	if err := c.acceptRevocations(page(0, abx, abx, t0.Add(-time.Second)), "", t0, false); err != nil {
		t.Fatalf("whole list with what is held: %v", err)
	}
	// An old whole list without x (a replay): refused, x stays revoked.
	if err := c.acceptRevocations(page(0, ab, ab, t0.Add(-time.Minute)), "", t0, false); reason(err) != RejectReplayed || !c.Revoked("x") {
		t.Fatalf("old list without x: %v, x revoked %v", err, c.Revoked("x"))
	}
	// A page that does not follow: refused, and the next poll asks for the whole list.
	if err := c.acceptRevocations(page(1, ab[1:], ab, t0), "", t0, false); reason(err) != RejectOutOfOrder {
		t.Fatalf("page from 1: %v", err)
	}
	c.mu.Lock()
	resync := c.revResync
	c.mu.Unlock()
	if !resync {
		t.Error("no resync after an out-of-order page")
	}
	// A newer whole list without x (the operator removed it): taken.
	if err := c.acceptRevocations(page(0, ab, ab, t0.Add(time.Second)), "", t0, false); err != nil || c.Revoked("x") {
		t.Fatalf("newer list without x: %v, x revoked %v", err, c.Revoked("x"))
	}

	// Bundles: a new version signed before the one held is a rollback; the same version, older, is
	// a heartbeat that changes nothing.
	v1, v0 := testBundle(t, "// v1\n"), testBundle(t, "// v0\n")
	v1.IssuedAt = t0
	if err := c.acceptBundle(v1, "", t0, false); err != nil {
		t.Fatal(err)
	}
	v0.IssuedAt = t0.Add(-time.Second)
	if err := c.acceptBundle(v0, "", t0, false); reason(err) != RejectReplayed {
		t.Fatalf("older version: %v", err)
	}
	same := *v1
	same.IssuedAt = t0.Add(-time.Second)
	if err := c.acceptBundle(&same, "", t0, false); err != nil {
		t.Fatalf("same version, older: %v", err)
	}
	if st := c.Status(); st.Version != v1.Version || !st.LastContact.Equal(t0) {
		t.Errorf("after the older heartbeat: %+v", st)
	}
	fc := &freshnessClaims{Version: v1.Version, IssuedAt: t0.Add(-time.Second), TTLSeconds: 60}
	if err := c.acceptFreshness(fc, "", t0, false); err != nil || !c.Status().LastContact.Equal(t0) {
		t.Errorf("older heartbeat: %v, last contact %s", err, c.Status().LastContact)
	}
}

func TestSignedCacheSharesOneSignature(t *testing.T) {
	var sc signedCache
	signs := 0
	sign := func(now time.Time) (string, error) { signs++; return now.String(), nil }
	t0 := time.Now()
	a, _ := sc.get("k", t0, sign)
	b, _ := sc.get("k", t0.Add(signedReuse/2), sign)
	if string(a) != string(b) || signs != 1 {
		t.Errorf("within the reuse window: %q %q, %d signatures", a, b, signs)
	}
	sc.get("other", t0, sign)
	if signs != 2 {
		t.Error("another key shared the signature")
	}
	if c, _ := sc.get("k", t0.Add(signedReuse), sign); string(c) == string(a) || signs != 3 {
		t.Error("an old signature was reused")
	}
	if d, _ := sc.get("k", t0.Add(-time.Second), sign); signs != 4 || string(d) == string(a) {
		t.Error("a signature dated ahead was handed out after the clock stepped back")
	}
	if len(sc.entries) > 2 {
		t.Errorf("%d entries kept", len(sc.entries))
	}
}
