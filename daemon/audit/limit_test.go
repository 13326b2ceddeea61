package audit

import (
	"encoding/json"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/openfirma/firma/internal/duration"
)

// fakeClock is a time the test moves by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestLimiterTokenBucketPerAgentAndClass(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	l := newLimiter(2, 5, 10*time.Second) // 2/s, burst 5
	a := limitKey{"agent-a", "kernel"}
	allowed := func(k limitKey, n int) int {
		got := 0
		for range n {
			if l.allow(k, clk.now()) {
				got++
			}
		}
		return got
	}
	if got := allowed(a, 8); got != 5 {
		t.Fatalf("burst: %d of 8 allowed, want 5", got)
	}
	// Other agents and other classes have their own buckets.
	if got := allowed(limitKey{"agent-b", "kernel"}, 5); got != 5 {
		t.Fatalf("agent-b: %d allowed, want 5", got)
	}
	if got := allowed(limitKey{"agent-a", "http_parse"}, 5); got != 5 {
		t.Fatalf("agent-a http_parse: %d allowed, want 5", got)
	}
	clk.add(time.Second) // 2 tokens back
	if got := allowed(a, 4); got != 2 {
		t.Fatalf("after 1s: %d of 4 allowed, want 2", got)
	}
	clk.add(500 * time.Millisecond)
	if got := allowed(a, 1); got != 1 {
		t.Fatalf("after 0.5s: %d allowed, want 1", got)
	}
	if l.total.Load() != 5 { // 3 at the burst, 2 after 1s
		t.Fatalf("total suppressed %d, want 5", l.total.Load())
	}
	// The run began at t0 and is not due before a window has passed.
	if s := l.due(clk.now(), false); len(s) != 0 {
		t.Fatalf("due after 1.5s: %+v", s)
	}
	clk.add(9 * time.Second)
	s := l.due(clk.now(), false)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if len(s) != 1 || s[0].limitKey != a || s[0].count != 5 || !s[0].since.Equal(t0) || !s[0].until.Equal(t0.Add(time.Second)) {
		t.Fatalf("due after the window: %+v", s)
	}
	// A run is reported once; the next run starts fresh.
	if s := l.due(clk.now(), true); len(s) != 0 {
		t.Fatalf("reported twice: %+v", s)
	}
	// Buckets that are full again and owe no summary are forgotten.
	clk.add(time.Minute)
	l.due(clk.now(), false)
	if n := len(l.b); n != 0 {
		t.Fatalf("%d idle buckets kept", n)
	}
}

func TestLimiterBoundsItsMemory(t *testing.T) {
	clk := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l := newLimiter(1, 1, time.Second)
	for i := range maxLimitBuckets {
		l.allow(limitKey{agent: string(rune('a'+i%26)) + time.Duration(i).String(), class: "kernel"}, clk)
	}
	// A new agent past the cap shares the overflow bucket.
	if !l.allow(limitKey{"new-1", "kernel"}, clk) || l.allow(limitKey{"new-2", "kernel"}, clk) {
		t.Fatal("overflow bucket does not limit")
	}
	if len(l.b) != maxLimitBuckets+1 {
		t.Fatalf("%d buckets, want the cap plus one overflow bucket", len(l.b))
	}
	s := l.due(clk, true)
	if len(s) != 1 || s[0].agent != otherAgents || s[0].count != 1 {
		t.Fatalf("overflow summary %+v", s)
	}
}

// AppendLimited writes what the budget allows and, a window after the first suppressed record, a
// "suppressed" record with the count and the window; the log verifies and Stats counts them.
func TestAppendLimitedWritesSuppressedRecords(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	key, _, pub := testKey(t)
	log, _ := testLogger(t)
	w, err := open(Config{FilePath: path, SigningKeyPath: key, RefusalRate: 1, RefusalBurst: 3,
		RefusalWindow: duration.Of(5 * time.Second), FsyncInterval: duration.Of(10 * time.Millisecond)}, log, openOptions{now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	refusal := func(agent string) *Event {
		ev := decision(0, "203.0.113.9", "DENY")
		ev.Envelope.Agent.AgentID = agent
		ev.Decision.Reason = "kernel: AF_PACKET refused"
		return ev
	}
	written := 0
	for range 10 {
		ok, err := w.AppendLimited("kernel", refusal("flooder"))
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			written++
		}
	}
	if ok, err := w.AppendLimited("kernel", refusal("quiet")); !ok || err != nil {
		t.Fatalf("another agent limited by the flooder: %v %v", ok, err)
	}
	if written != 3 || w.Stats().Suppressed != 7 {
		t.Fatalf("%d written, %d suppressed; want 3 and 7", written, w.Stats().Suppressed)
	}
	if _, err := w.AppendLimited("", refusal("x")); err == nil {
		t.Fatal("no class accepted")
	}
	clk.add(5 * time.Second) // the writer's tick now finds the run due
	var sup *Event
	waitFor(t, "the suppressed record", func() bool {
		for _, l := range readLines(t, path) {
			var ev Event
			if json.Unmarshal([]byte(l), &ev) == nil && ev.Log != nil && ev.Log.Event == LogSuppressed {
				sup = &ev
				return true
			}
		}
		return false
	})
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if r := sup.Log; r.AgentID != "flooder" || r.Class != "kernel" || r.Suppressed != 7 || !r.Since.Equal(t0) || !r.Until.Equal(t0) || sup.Kind != KindLog {
		t.Fatalf("suppressed record %+v", r)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if rep, err := Verify(pub, path); err != nil || !rep.OK() {
		t.Fatal(err, rep.Problem)
	}
	// Records still suppressed at Close are summarised before the close record.
	path2 := filepath.Join(t.TempDir(), "audit.jsonl")
	w2, err := open(Config{FilePath: path2, RefusalRate: 1, RefusalBurst: 1}, log, openOptions{now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	w2.AppendLimited("http_parse", refusal("a"))
	w2.AppendLimited("http_parse", refusal("a"))
	w2.Close()
	lines := readLines(t, path2)
	var last2 [2]Event
	json.Unmarshal([]byte(lines[len(lines)-2]), &last2[0])
	json.Unmarshal([]byte(lines[len(lines)-1]), &last2[1])
	if last2[0].Log == nil || last2[0].Log.Event != LogSuppressed || last2[0].Log.Suppressed != 1 || last2[1].Log.Event != LogClose {
		t.Fatalf("last two lines %s%s", lines[len(lines)-2], lines[len(lines)-1])
	}
}
