package policies

import (
	"container/list"
	"hash/maphash"
	"slices"
	"sync"
	"time"
)

// DefaultMaxSessions bounds the session tracker when [sidecar.policy] max_sessions is not set.
const DefaultMaxSessions = 10000

// SessionState is what Cedar sees of a session before a decision: the context's action_count,
// deny_count, prior_action_classes, last_resource, session_duration_s, actions_last_minute and
// actions_last_hour.
type SessionState struct {
	ActionCount        int64    // decisions of every outcome
	DenyCount          int64    // DENY, DEFER and STEP_UP decisions
	PriorActionClasses []string // classes of allowed actions, sorted
	LastResource       string   // host + path of the last allowed action
	Duration           time.Duration
	// Allowed actions in the last minute and hour, by action class. Cedar sees them by class and
	// by every group the class is in.
	LastMinute map[string]int64
	LastHour   map[string]int64
}

// Sessions tracks what each session did, for the session attributes of the Cedar context. A
// session is an agent id and a session id together, so that one agent can never touch another's
// counters. Bounded: past max sessions, the least recently active is forgotten (and starts again
// from zero if it comes back). Safe for concurrent use; sharded, so that concurrent decisions of
// different sessions rarely share a lock.
type Sessions struct {
	seed     maphash.Seed
	perShard int
	shards   [sessionShards]sessionShard
}

const sessionShards = 32

type sessionShard struct {
	mu    sync.Mutex
	byKey map[string]*list.Element // of *session
	lru   list.List                // front: most recently active
}

type session struct {
	key          string
	first        time.Time
	actions      int64
	denies       int64
	classes      map[string]*window // allowed actions by class
	lastResource string
}

// window counts events in per-second slots over the last minute and per-minute slots over the last
// hour. A slot's stamp is the unix second (or minute) it counts; a stale slot is reused.
type window struct {
	sec, min [60]slot
}

type slot struct {
	stamp uint32
	n     uint32
}

func (w *window) add(t time.Time) {
	s := uint32(t.Unix())
	bump(&w.sec[s%60], s)
	m := s / 60
	bump(&w.min[m%60], m)
}

func bump(b *slot, stamp uint32) {
	if b.stamp != stamp {
		*b = slot{stamp: stamp}
	}
	b.n++
}

// counts sums the slots of the last minute (stamps in (now-60s, now]) and the last hour (minutes
// in (now-60m, now]): the hour window slides by the minute.
func (w *window) counts(now time.Time) (minute, hour int64) {
	s := uint32(now.Unix())
	m := s / 60
	for i := range w.sec {
		if b := w.sec[i]; b.stamp <= s && b.stamp+60 > s {
			minute += int64(b.n)
		}
		if b := w.min[i]; b.stamp <= m && b.stamp+60 > m {
			hour += int64(b.n)
		}
	}
	return minute, hour
}

// NewSessions returns a tracker of at most limit sessions (0: DefaultMaxSessions), rounded up to a
// multiple of its shard count.
func NewSessions(limit int) *Sessions {
	if limit <= 0 {
		limit = DefaultMaxSessions
	}
	s := &Sessions{seed: maphash.MakeSeed(), perShard: (limit + sessionShards - 1) / sessionShards}
	for i := range s.shards {
		s.shards[i].byKey = map[string]*list.Element{}
	}
	return s
}

func sessionKey(agent, sessionID string) string { return agent + "\x00" + sessionID }

func (s *Sessions) shard(key string) *sessionShard {
	return &s.shards[maphash.String(s.seed, key)%sessionShards]
}

// Observe records a decision in its session. Call it once per decision, after the audit record
// is written, with the outcome that was recorded. Decisions without an agent are ignored.
func (s *Sessions) Observe(d Decision) {
	if d.AgentID == "" {
		return
	}
	at := d.at
	if at.IsZero() {
		at = time.Now()
	}
	key := sessionKey(d.AgentID, d.SessionID)
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	var ss *session
	if el, ok := sh.byKey[key]; ok {
		sh.lru.MoveToFront(el)
		ss = el.Value.(*session)
	} else {
		ss = &session{key: key, first: at, classes: map[string]*window{}}
		sh.byKey[key] = sh.lru.PushFront(ss)
		for sh.lru.Len() > s.perShard {
			oldest := sh.lru.Back()
			delete(sh.byKey, oldest.Value.(*session).key)
			sh.lru.Remove(oldest)
		}
	}
	ss.actions++
	switch d.Outcome {
	case Deny, Defer, StepUp:
		ss.denies++
	case Allow, Modify, Passthrough:
		ss.lastResource = d.Resource()
		if d.ActionClass != "" {
			w := ss.classes[d.ActionClass]
			if w == nil {
				w = &window{}
				ss.classes[d.ActionClass] = w
			}
			w.add(at)
		}
	}
}

// Snapshot returns the state of a session at now; a session never seen is all zero.
func (s *Sessions) Snapshot(agent, sessionID string, now time.Time) SessionState {
	key := sessionKey(agent, sessionID)
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	el, ok := sh.byKey[key]
	if !ok {
		return SessionState{}
	}
	ss := el.Value.(*session)
	st := SessionState{
		ActionCount:        ss.actions,
		DenyCount:          ss.denies,
		LastResource:       ss.lastResource,
		Duration:           max(0, now.Sub(ss.first)),
		PriorActionClasses: make([]string, 0, len(ss.classes)),
		LastMinute:         make(map[string]int64, len(ss.classes)),
		LastHour:           make(map[string]int64, len(ss.classes)),
	}
	for class, w := range ss.classes {
		st.PriorActionClasses = append(st.PriorActionClasses, class)
		minute, hour := w.counts(now)
		if minute > 0 {
			st.LastMinute[class] = minute
		}
		if hour > 0 {
			st.LastHour[class] = hour
		}
	}
	slices.Sort(st.PriorActionClasses)
	return st
}

// Len is the number of sessions tracked.
func (s *Sessions) Len() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += sh.lru.Len()
		sh.mu.Unlock()
	}
	return n
}
