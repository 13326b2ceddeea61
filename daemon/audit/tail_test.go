package audit

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

type collected struct {
	mu  sync.Mutex
	evs []*Event
}

func (c *collected) add(_ []byte, ev *Event) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.evs = append(c.evs, ev)
	return nil
}

func (c *collected) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.evs)
}

func TestTailHistoryAndFilters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	w := openTest(t, Config{FilePath: path, MaxSizeBytes: 4096})
	for i := range 30 {
		ev := decision(i, "paste.rs", "DENY")
		if i%2 == 0 {
			ev = decision(i, "api.anthropic.com", "ALLOW")
			ev.Envelope.Agent.AgentID = "codex"
		}
		if err := w.Append(ev); err != nil {
			t.Fatal(err)
		}
		// A completion without the agent still belongs to its decision's agent.
		done := &Event{Kind: KindCompletion, DecisionID: ev.ID, Result: &Result{BytesUp: 1}}
		if i%3 == 0 {
			done.Envelope = &Envelope{Transport: Transport{Mode: "connect", Dialed: "203.0.113.7:443"}}
		}
		if err := w.Append(done); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	if files, _ := Files(path); len(files) < 3 {
		t.Fatalf("want rotated files, got %v", files)
	}
	ctx := context.Background()

	var c collected
	if err := Tail(ctx, path, TailOptions{Last: 5}, c.add); err != nil {
		t.Fatal(err)
	}
	if len(c.evs) != 5 || c.evs[4].Log == nil || c.evs[4].Log.Event != LogClose {
		t.Fatalf("last 5: %d records, last %+v", len(c.evs), c.evs[len(c.evs)-1])
	}

	c = collected{}
	Tail(ctx, path, TailOptions{Filter: Filter{DenyOnly: true}}, c.add)
	if len(c.evs) != 15 {
		t.Fatalf("--deny: %d records, want 15", len(c.evs))
	}
	for _, ev := range c.evs {
		if ev.Decision.Outcome != "DENY" {
			t.Fatalf("--deny showed %+v", ev)
		}
	}

	c = collected{}
	Tail(ctx, path, TailOptions{Filter: Filter{AgentID: "codex"}}, c.add)
	if len(c.evs) != 30 {
		t.Fatalf("--agent codex: %d records, want 15 decisions + 15 completions", len(c.evs))
	}

	c = collected{}
	Tail(ctx, path, TailOptions{Filter: Filter{Since: time.Now().Add(time.Hour)}}, c.add)
	if len(c.evs) != 0 {
		t.Fatalf("--since the future: %d records", len(c.evs))
	}
	c = collected{}
	Tail(ctx, path, TailOptions{Filter: Filter{Since: time.Now().Add(-time.Hour)}}, c.add)
	total := 0
	files, _ := Files(path)
	for _, f := range files {
		total += len(readLines(t, f))
	}
	if len(c.evs) != total {
		t.Fatalf("--since an hour ago: %d records, want all %d", len(c.evs), total)
	}
}

func TestTailFollowsRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	w := openTest(t, Config{FilePath: path})
	w.Append(decision(0, "paste.rs", "DENY"))
	ctx, cancel := context.WithCancel(context.Background())
	var c collected
	done := make(chan error)
	go func() {
		done <- Tail(ctx, path, TailOptions{Filter: Filter{DenyOnly: true}, Follow: true, Poll: 5 * time.Millisecond}, c.add)
	}()
	waitFor(t, "the history", func() bool { return c.len() == 1 })
	for i := 1; i <= 20; i++ {
		w.Append(decision(i, "paste.rs", "DENY"))
		if i%5 == 0 {
			if err := w.Rotate(); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, "20 followed records across 4 rotations", func() bool { return c.len() == 21 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for i, ev := range c.evs {
		if ev.Envelope.Agent.PID != 1000+i {
			t.Fatalf("record %d is pid %d: out of order or duplicated", i, ev.Envelope.Agent.PID)
		}
	}
}

func TestFormatHuman(t *testing.T) {
	ev := decision(3, "paste.rs", "DENY")
	ev.Time = time.Date(2026, 11, 22, 4, 30, 0, 0, time.UTC)
	got := FormatHuman(ev, time.UTC)
	for _, want := range []string{"2026-11-22 04:30:00.000", "claude-code", "pid=1003 /usr/bin/curl", "DENY",
		"communication.external.send", "paste.rs:443", "[forbid_at_claude-code.cedar_3]"} {
		if !strings.Contains(got, want) {
			t.Errorf("%q lacks %q", got, want)
		}
	}
	if strings.Contains(got, "monitor") {
		t.Errorf("an enforced decision is marked as monitored: %q", got)
	}
	monitored := new(bool)
	ev.Decision.Enforced = monitored
	if got := FormatHuman(ev, time.UTC); !strings.Contains(got, "  DENY (monitor: not enforced)  ") {
		t.Errorf("monitor mode: %q", got)
	}
	deferred := decision(5, "api.anthropic.com", "DEFER")
	deferred.Decision.Fields = []string{"context.actions_last_hour.model"}
	deferred.Decision.Enforced = new(bool)
	if got := FormatHuman(deferred, time.UTC); !strings.Contains(got, "DEFER (monitor: not enforced)") ||
		!strings.Contains(got, "fields=context.actions_last_hour.model") {
		t.Errorf("deferred: %q", got)
	}
	mitm := decision(4, "api.openai.com", "ALLOW")
	mitm.Envelope.Intent.Resource = Resource{Host: "api.openai.com", Path: "/v1/models", Method: "GET"}
	if got := FormatHuman(mitm, time.UTC); !strings.Contains(got, "GET api.openai.com/v1/models") {
		t.Errorf("MITM record: %q", got)
	}
	done := &Event{Kind: KindCompletion, DecisionID: "X", Result: &Result{BytesUp: 5, BytesDown: 7, DurationMS: 9, UpstreamStatus: 200}}
	if got := FormatHuman(done, time.UTC); !strings.Contains(got, "DONE") || !strings.Contains(got, "up=5B down=7B 9ms status=200") {
		t.Errorf("completion: %q", got)
	}
	since, until := time.Date(2026, 11, 22, 4, 30, 0, 0, time.UTC), time.Date(2026, 11, 22, 4, 30, 9, 500e6, time.UTC)
	sup := &Event{Kind: KindLog, Seq: 9, Time: until, Log: &LogRecord{Event: LogSuppressed, AgentID: "claude-code", Class: "kernel",
		Suppressed: 41, Since: &since, Until: &until}}
	if got := FormatHuman(sup, time.UTC); !strings.Contains(got, "audit suppressed 41 kernel records of agent claude-code between 04:30:00.000 and 04:30:09.500") {
		t.Errorf("suppressed: %q", got)
	}
	var tl tailer
	tl.opt.AgentID, tl.decisions = "claude-code", map[string]*Envelope{}
	line, _ := encodeJSON(sup)
	if _, ok := tl.match(line); !ok {
		t.Error("tail --agent does not show the agent's suppressed record")
	}
}

// TestTailDenyShowsEveryRefusal: --deny shows DEFER and STEP_UP decisions too, not ALLOW or MODIFY.
func TestTailDenyShowsEveryRefusal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	w := openTest(t, Config{FilePath: path})
	for i, o := range []string{"ALLOW", "DENY", "MODIFY", "DEFER", "STEP_UP", "PASSTHROUGH"} {
		if err := w.Append(decision(i, "api.example.com", o)); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	var c collected
	if err := Tail(context.Background(), path, TailOptions{Filter: Filter{DenyOnly: true}}, c.add); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ev := range c.evs {
		got = append(got, ev.Decision.Outcome)
	}
	if strings.Join(got, " ") != "DENY DEFER STEP_UP" {
		t.Fatalf("--deny showed %v", got)
	}
}
