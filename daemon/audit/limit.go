package audit

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Refusal records are rate-limited so that a flood cannot fill the disk: the judge appends a
// refusal that no decision stands behind (a kernel refusal, a request the HTTP parser rejects, a
// malformed DNS query) with AppendLimited, which keeps a token bucket per agent and class. A record
// over the budget is not written but counted; within refusal_window of the first one, a
// "suppressed" log record says how many records of that class the agent lost, and between which
// times. Decisions themselves are never limited: they go through Append.

// maxLimitBuckets bounds the limiter's memory: past it, new agents share one bucket per class.
const maxLimitBuckets = 100_000

// otherAgents is the agent a record is counted under when maxLimitBuckets is reached.
const otherAgents = "(other agents)"

type limitKey struct{ agent, class string }

type bucket struct {
	tokens float64
	last   time.Time // tokens were last refilled at
	// The current run of suppressed records: how many, the first and the last.
	suppressed   int64
	since, until time.Time
}

type limiter struct {
	rate   float64 // tokens per second
	burst  float64
	window time.Duration
	mu     sync.Mutex
	b      map[limitKey]*bucket
	total  atomic.Uint64 // every suppressed record since Open
}

func newLimiter(rate float64, burst int, window time.Duration) *limiter {
	return &limiter{rate: rate, burst: float64(burst), window: window, b: map[limitKey]*bucket{}}
}

// allow takes a token for k at now; false means the record is suppressed (and counted).
func (l *limiter) allow(k limitKey, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.b[k]
	if !ok {
		if len(l.b) >= maxLimitBuckets {
			k.agent = otherAgents
			b, ok = l.b[k]
		}
		if !ok {
			b = &bucket{tokens: l.burst, last: now}
			l.b[k] = b
		}
	}
	if el := now.Sub(b.last); el > 0 {
		b.tokens = min(l.burst, b.tokens+el.Seconds()*l.rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	if b.suppressed == 0 {
		b.since = now
	}
	b.suppressed++
	b.until = now
	l.total.Add(1)
	return false
}

// suppression is one summary the writer turns into a "suppressed" record.
type suppression struct {
	limitKey
	count        int64
	since, until time.Time
}

// due returns the runs of suppressed records that began at least a window ago (every run with
// force), and starts new runs for them. It also forgets buckets that are full again and hold no
// run, so that memory follows the agents that are active.
func (l *limiter) due(now time.Time, force bool) []suppression {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []suppression
	for k, b := range l.b {
		if b.suppressed > 0 && (force || now.Sub(b.since) >= l.window) {
			out = append(out, suppression{limitKey: k, count: b.suppressed, since: b.since, until: b.until})
			b.suppressed = 0
		}
		if b.suppressed == 0 && b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.b, k)
		}
	}
	sortSuppressions(out)
	return out
}

func sortSuppressions(s []suppression) {
	// Oldest run first, then by agent and class: the records come out in a stable order.
	slices.SortFunc(s, func(a, b suppression) int {
		return cmp.Or(a.since.Compare(b.since), cmp.Compare(a.agent, b.agent), cmp.Compare(a.class, b.class))
	})
}

// AppendLimited appends ev like Append unless its agent has used up its budget of records of
// class (refusal_rate per second, refusal_burst at once). written is false when the record was
// suppressed: it is counted, and a "suppressed" record will say so. The agent is the envelope's
// agent_id, else its cgroup; class names the kind of refusal ("kernel", "http_parse", "dns"…).
func (w *Writer) AppendLimited(class string, ev *Event) (written bool, err error) {
	if class == "" {
		return false, fmt.Errorf("%w: AppendLimited needs a class", ErrInvalid)
	}
	var agent string
	if ev != nil && ev.Envelope != nil {
		agent = ev.Envelope.Agent.AgentID
		if agent == "" {
			agent = ev.Envelope.Agent.Cgroup
		}
	}
	if w.closed.Load() {
		return false, ErrClosed
	}
	if !w.limiter.allow(limitKey{agent, class}, w.now()) {
		return false, nil
	}
	return true, w.Append(ev)
}

// queueSummaries queues a "suppressed" record for each run that is due (writer goroutine only).
func (w *Writer) queueSummaries(now time.Time, force bool) {
	for _, s := range w.limiter.due(now, force) {
		since, until := s.since.UTC(), s.until.UTC()
		w.meta = append(w.meta, w.logEvent(&LogRecord{
			Event: LogSuppressed, AgentID: s.agent, Class: s.class, Suppressed: s.count, Since: &since, Until: &until,
		}))
	}
}
