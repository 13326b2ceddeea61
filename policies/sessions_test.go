package policies

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

func observed(agent, session string, outcome Outcome, class string, at time.Time) Decision {
	return Decision{AgentID: agent, SessionID: session, Outcome: outcome, ActionClass: class, Host: "h", Path: "/p", at: at}
}

func TestSessionWindows(t *testing.T) {
	s := NewSessions(0)
	t0 := time.Unix(1_767_225_600, 0) // a minute boundary
	for i := 0; i < 90; i++ {
		s.Observe(observed("a", "s", Allow, "model.inference.chat", t0.Add(time.Duration(i)*time.Second)))
	}
	for _, tc := range []struct {
		at           time.Duration
		minute, hour int64
	}{
		{89 * time.Second, 60, 90},  // seconds 30..89 in the last minute
		{100 * time.Second, 49, 90}, // seconds 41..89
		{150 * time.Second, 0, 90},  // nothing in the last minute
		{59*time.Minute + 59*time.Second, 0, 90},
		{60 * time.Minute, 0, 30}, // minute 0 left the hour: only minute 1 (seconds 60..89)
		{61 * time.Minute, 0, 0},
	} {
		st := s.Snapshot("a", "s", t0.Add(tc.at))
		if st.LastMinute["model.inference.chat"] != tc.minute || st.LastHour["model.inference.chat"] != tc.hour {
			t.Errorf("at +%s: minute %d hour %d, want %d %d", tc.at, st.LastMinute["model.inference.chat"], st.LastHour["model.inference.chat"], tc.minute, tc.hour)
		}
		if st.ActionCount != 90 || len(st.PriorActionClasses) != 1 {
			t.Errorf("at +%s: %+v", tc.at, st)
		}
	}
}

func TestSessionOutcomes(t *testing.T) {
	s := NewSessions(0)
	at := time.Unix(1_767_225_600, 0)
	for _, o := range []Outcome{Allow, Deny, Defer, StepUp, Modify, Passthrough, Abort} {
		s.Observe(observed("a", "s", o, "web.request", at))
	}
	s.Observe(Decision{Outcome: Deny}) // no agent: ignored
	st := s.Snapshot("a", "s", at)
	if st.ActionCount != 7 || st.DenyCount != 3 || st.LastMinute["web.request"] != 3 || st.LastResource != "h/p" {
		t.Errorf("%+v", st)
	}
	if s.Len() != 1 {
		t.Errorf("%d sessions", s.Len())
	}
	if st := s.Snapshot("a", "other", at); st.ActionCount != 0 || st.Duration != 0 {
		t.Errorf("unknown session: %+v", st)
	}
}

// TestSessionsBounded: past the limit the least recently active session is forgotten, the active
// ones stay.
func TestSessionsBounded(t *testing.T) {
	s := NewSessions(64) // two per shard
	at := time.Unix(1_767_225_600, 0)
	for i := 0; i < 10000; i++ {
		s.Observe(observed("a", fmt.Sprint(i), Deny, "", at))
		s.Observe(observed("a", "hot", Deny, "", at)) // kept active
	}
	if n := s.Len(); n > 64 {
		t.Errorf("%d sessions tracked, limit 64", n)
	}
	if st := s.Snapshot("a", "hot", at); st.DenyCount != 10000 {
		t.Errorf("the active session was evicted: %+v", st)
	}
	if st := s.Snapshot("a", "0", at); st.ActionCount != 0 {
		t.Errorf("the oldest session was kept: %+v", st)
	}
}

func TestSessionsConcurrent(t *testing.T) {
	s := NewSessions(0)
	at := time.Unix(1_767_225_600, 0)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				s.Observe(observed("a", fmt.Sprint(i%10), Allow, "web.request", at))
				s.Snapshot("a", fmt.Sprint(i%10), at)
			}
		}()
	}
	wg.Wait()
	total := int64(0)
	for i := 0; i < 10; i++ {
		total += s.Snapshot("a", fmt.Sprint(i), at).ActionCount
	}
	if total != 8000 {
		t.Errorf("counted %d of 8000", total)
	}
}

func BenchmarkSessions(b *testing.B) {
	s := NewSessions(0)
	at := time.Unix(1_767_225_600, 0)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			d := observed("a", fmt.Sprint(i%100), Allow, "model.inference.chat", at)
			s.Observe(d)
			s.Snapshot("a", d.SessionID, at)
			i++
		}
	})
}
