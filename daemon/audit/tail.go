package audit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Filter selects records for Tail.
type Filter struct {
	DenyOnly bool      // refusals only: decisions with outcome DENY, DEFER or STEP_UP
	AgentID  string    // records of this agent only ("" = all)
	Since    time.Time // records at or after this time only (zero = all)
}

// TailOptions says what Tail reads.
type TailOptions struct {
	Filter
	// Last is how many of the newest matching records to show first when Since is zero; 0 shows
	// every matching record.
	Last int
	// Follow keeps reading the live file as it grows and across rotations until ctx ends.
	Follow bool
	// Poll is how often a followed file is checked for new lines (default 200ms).
	Poll time.Duration
}

// Tail calls fn for each matching record of the log whose live file is live, in chain order: line
// is the record as written (without "\n"); a completion record that does not repeat its decision's
// agent and intent is given them in ev when the decision was read. Lines that are not records are skipped; verify is
// the tool that judges them.
func Tail(ctx context.Context, live string, opt TailOptions, fn func(line []byte, ev *Event) error) error {
	if opt.Poll <= 0 {
		opt.Poll = 200 * time.Millisecond
	}
	t := &tailer{opt: opt, fn: fn, decisions: map[string]*Envelope{}}
	files, err := Files(live)
	if err != nil {
		return err
	}
	var pos *tailPos
	if len(files) > 0 {
		if pos, err = t.history(files, live); err != nil {
			return err
		}
	}
	if !opt.Follow {
		return nil
	}
	return t.follow(ctx, live, pos)
}

type tailer struct {
	opt TailOptions
	fn  func([]byte, *Event) error
	// decisions remembers the envelopes of decisions not yet completed, so that completion records
	// (which need not repeat the envelope) are attributed and filtered by agent like their decision.
	decisions map[string]*Envelope
}

// tailPos is where the history stopped in the live file.
type tailPos struct {
	fi  os.FileInfo
	off int64
}

type tailRecord struct {
	line []byte
	ev   *Event
}

// history shows the records before following: the last opt.Last matching ones, or all since
// opt.Since.
func (t *tailer) history(files []string, live string) (*tailPos, error) {
	start := 0
	switch {
	case !t.opt.Since.IsZero():
		// Start at the newest file that begins before Since.
		for i := len(files) - 1; i >= 0; i-- {
			if first := firstTime(files[i]); !first.IsZero() && !first.After(t.opt.Since) {
				start = i
				break
			}
		}
	case t.opt.Last > 0:
		// Walk back from the newest file until enough records match.
		n := 0
		for start = len(files) - 1; start > 0; start-- {
			m, _, err := t.readFile(files[start], nil)
			if err != nil {
				return nil, err
			}
			if n += m; n >= t.opt.Last {
				break
			}
		}
		t.decisions = map[string]*Envelope{}
	}
	var ring []tailRecord
	emit := func(r tailRecord) error {
		if t.opt.Since.IsZero() && t.opt.Last > 0 {
			ring = append(ring, r)
			if len(ring) > t.opt.Last {
				ring = ring[1:]
			}
			return nil
		}
		return t.fn(r.line, r.ev)
	}
	var pos *tailPos
	for _, f := range files[start:] {
		_, off, err := t.readFile(f, emit)
		if err != nil {
			return nil, err
		}
		if f == live {
			if fi, err := os.Stat(f); err == nil {
				pos = &tailPos{fi: fi, off: off}
			}
		}
	}
	for _, r := range ring {
		if err := t.fn(r.line, r.ev); err != nil {
			return nil, err
		}
	}
	return pos, nil
}

// readFile passes f's matching records to emit (nil: only count them) and returns the count and
// the offset after the last complete line.
func (t *tailer) readFile(path string, emit func(tailRecord) error) (int, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	n := 0
	off, _, err := t.readLines(f, 0, func(line []byte) error {
		ev, ok := t.match(line)
		if !ok {
			return nil
		}
		n++
		if emit == nil {
			return nil
		}
		return emit(tailRecord{line: bytes.Clone(line), ev: ev})
	})
	return n, off, err
}

// readLines calls fn for each complete line of r starting at offset off, and returns the offset
// after the last complete line and any incomplete rest.
func (t *tailer) readLines(r io.Reader, off int64, fn func([]byte) error) (int64, []byte, error) {
	br := bufio.NewReaderSize(r, 256<<10)
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			if errors.Is(err, io.EOF) {
				return off, line, nil
			}
			return off, nil, err
		}
		off += int64(len(line))
		if err := fn(line[:len(line)-1]); err != nil {
			return off, nil, err
		}
	}
}

func (t *tailer) match(line []byte) (*Event, bool) {
	var ev Event
	if json.Unmarshal(line, &ev) != nil || ev.Seq == 0 {
		return nil, false
	}
	f := t.opt.Filter
	if !f.Since.IsZero() && ev.Time.Before(f.Since) {
		return nil, false
	}
	if f.DenyOnly && (ev.Kind != KindDecision || ev.Decision == nil || !refusal(ev.Decision.Outcome)) {
		return nil, false
	}
	switch {
	case ev.Kind == KindDecision && ev.Envelope != nil:
		if len(t.decisions) > 100_000 {
			clear(t.decisions)
		}
		t.decisions[ev.ID] = ev.Envelope
	case ev.Kind == KindCompletion:
		if env, ok := t.decisions[ev.DecisionID]; ok {
			delete(t.decisions, ev.DecisionID)
			if ev.Envelope == nil {
				ev.Envelope = &Envelope{}
			}
			if ev.Envelope.Agent == (Agent{}) {
				ev.Envelope.Agent = env.Agent
			}
			if ev.Envelope.Intent.Resource.Host == "" {
				ev.Envelope.Intent = env.Intent
			}
		}
	}
	if f.AgentID != "" && !ofAgent(&ev, f.AgentID) {
		return nil, false
	}
	return &ev, true
}

// ofAgent reports whether ev is about agent: its envelope's, or a suppressed record's.
func ofAgent(ev *Event, agent string) bool {
	if ev.Envelope != nil && ev.Envelope.Agent.AgentID == agent {
		return true
	}
	return ev.Log != nil && ev.Log.AgentID == agent
}

// follow reads the live file from pos on, until ctx ends. When the live file is rotated it finishes
// the old file, then reads every file rotated after it (several rotations may happen between two
// polls), then the new live file.
func (t *tailer) follow(ctx context.Context, live string, pos *tailPos) error {
	var f *os.File
	var off int64
	var partial []byte
	after := "" // the rotated file to continue after when the live file could not be opened yet
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	// next opens the live file after reading the rotated files between old (a rotated file name,
	// or "") and it.
	next := func(old string) error {
		nf, err := os.Open(live)
		if err != nil {
			after = old // between a rename and the next create: try again at the next poll
			return nil
		}
		if old != "" {
			rotated, _ := listRotated(live)
			for _, r := range rotated {
				if r <= old {
					continue
				}
				if ri, err := os.Stat(r); err == nil {
					if ni, err := nf.Stat(); err == nil && os.SameFile(ri, ni) {
						break
					}
				}
				if _, _, err := t.readFile(r, func(r tailRecord) error { return t.fn(r.line, r.ev) }); err != nil {
					nf.Close()
					return err
				}
			}
		}
		f, off, partial, after = nf, 0, nil, ""
		return nil
	}
	if pos != nil {
		if nf, err := os.Open(live); err == nil {
			if fi, err := nf.Stat(); err == nil && os.SameFile(fi, pos.fi) {
				f, off = nf, pos.off
			} else {
				nf.Close()
			}
		}
		if f == nil { // rotated between the history and now: finish the old file first
			old := rotatedTwin(live, pos.fi)
			if old != "" {
				if of, err := os.Open(old); err == nil {
					_, _, err = t.drain(of, pos.off, nil)
					of.Close()
					if err != nil {
						return err
					}
				}
			}
			if err := next(old); err != nil {
				return err
			}
		}
	} else if err := next(""); err != nil {
		return err
	}
	for {
		if f != nil {
			var err error
			if off, partial, err = t.drain(f, off, partial); err != nil {
				return err
			}
			if fi, err := os.Stat(live); err == nil {
				if cur, err := f.Stat(); err == nil && !os.SameFile(fi, cur) {
					// Rotated: read what is left of the old file, then what came after it.
					if _, _, err := t.drain(f, off, partial); err != nil {
						return err
					}
					old := rotatedTwin(live, cur)
					f.Close()
					f = nil
					if err := next(old); err != nil {
						return err
					}
					continue
				}
			}
		} else if err := next(after); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(t.opt.Poll):
		}
	}
}

// drain passes the complete lines of f after off to fn and returns the new offset and any
// incomplete rest (kept until its newline arrives).
func (t *tailer) drain(f *os.File, off int64, partial []byte) (int64, []byte, error) {
	if _, err := f.Seek(off+int64(len(partial)), io.SeekStart); err != nil {
		return off, partial, err
	}
	r := io.MultiReader(bytes.NewReader(partial), f)
	return t.readLines(r, off, func(line []byte) error {
		if ev, ok := t.match(line); ok {
			return t.fn(line, ev)
		}
		return nil
	})
}

// rotatedTwin finds the rotated file that is fi.
func rotatedTwin(live string, fi os.FileInfo) string {
	rotated, _ := listRotated(live)
	for i := len(rotated) - 1; i >= 0; i-- {
		if ri, err := os.Stat(rotated[i]); err == nil && os.SameFile(ri, fi) {
			return rotated[i]
		}
	}
	return ""
}

// firstTime is the time of path's first record (zero when unknown).
func firstTime(path string) time.Time {
	line, _, err := readFirstLine(path)
	if err != nil {
		return time.Time{}
	}
	var ev struct {
		Time time.Time `json:"time"`
	}
	json.Unmarshal(line, &ev)
	return ev.Time
}

// refusal reports whether a decision outcome refused the request.
func refusal(outcome string) bool {
	return outcome == "DENY" || outcome == "DEFER" || outcome == "STEP_UP"
}

// FormatHuman renders ev on one line for people: time, agent, pid and exe, outcome (marked when
// monitor mode did not enforce it), action, host/path, policy ids, the fields that decided and
// reason. Completion records show bytes, duration and upstream status.
func FormatHuman(ev *Event, loc *time.Location) string {
	var b strings.Builder
	b.WriteString(ev.Time.In(loc).Format("2006-01-02 15:04:05.000"))
	if ev.Kind == KindLog && ev.Log != nil {
		fmt.Fprintf(&b, "  audit %s", ev.Log.Event)
		if ev.Log.Reason != "" {
			fmt.Fprintf(&b, " %s", ev.Log.Reason)
		}
		if ev.Log.PreviousFile != "" {
			fmt.Fprintf(&b, " after %s", ev.Log.PreviousFile)
		}
		if ev.Log.Refused > 0 {
			fmt.Fprintf(&b, " (%d records refused since %s: %s)", ev.Log.Refused, ev.Log.Since.In(loc).Format("15:04:05"), ev.Log.Error)
		}
		if ev.Log.Event == LogSuppressed && ev.Log.Since != nil && ev.Log.Until != nil {
			fmt.Fprintf(&b, " %d %s records of agent %s between %s and %s", ev.Log.Suppressed, ev.Log.Class,
				orDash(ev.Log.AgentID), ev.Log.Since.In(loc).Format("15:04:05.000"), ev.Log.Until.In(loc).Format("15:04:05.000"))
		}
		if ev.Log.TornBytes > 0 {
			fmt.Fprintf(&b, " (cut %d torn bytes, saved to %s)", ev.Log.TornBytes, ev.Log.TornSavedTo)
		}
		fmt.Fprintf(&b, "  seq %d", ev.Seq)
		return b.String()
	}
	agent, proc := "-", "-"
	if e := ev.Envelope; e != nil {
		agent = orDash(e.Agent.AgentID)
		proc = fmt.Sprintf("pid=%d %s", e.Agent.PID, orDash(e.Agent.Exe))
	}
	fmt.Fprintf(&b, "  %s  %s", agent, proc)
	switch {
	case ev.Kind == KindCompletion && ev.Decision != nil:
		fmt.Fprintf(&b, "  DONE %s", ev.Decision.Outcome)
	case ev.Kind == KindCompletion:
		b.WriteString("  DONE")
	case ev.Decision != nil:
		fmt.Fprintf(&b, "  %s", ev.Decision.Outcome)
		if e := ev.Decision.Enforced; e != nil && !*e {
			b.WriteString(" (monitor: not enforced)")
		}
	default:
		fmt.Fprintf(&b, "  %s", ev.Kind)
	}
	if e := ev.Envelope; e != nil {
		action := "-"
		if e.Intent.ActionClass != nil {
			action = *e.Intent.ActionClass
		}
		res := e.Intent.Resource
		target := res.Host + res.Path
		if res.Method != "" {
			target = res.Method + " " + target
		}
		fmt.Fprintf(&b, "  %s  %s", action, orDash(target))
	}
	if d := ev.Decision; d != nil {
		if len(d.MatchedPolicies) > 0 {
			fmt.Fprintf(&b, "  [%s]", strings.Join(d.MatchedPolicies, ","))
		}
		if len(d.Fields) > 0 {
			fmt.Fprintf(&b, "  fields=%s", strings.Join(d.Fields, ","))
		}
		if d.Reason != "" {
			fmt.Fprintf(&b, "  %q", d.Reason)
		}
	}
	if r := ev.Result; r != nil {
		fmt.Fprintf(&b, "  up=%dB down=%dB %dms", r.BytesUp, r.BytesDown, r.DurationMS)
		if r.UpstreamStatus != 0 {
			fmt.Fprintf(&b, " status=%d", r.UpstreamStatus)
		}
		if r.Error != "" {
			fmt.Fprintf(&b, " error=%q", r.Error)
		}
	}
	if ev.DecisionID != "" {
		fmt.Fprintf(&b, "  (decision %s)", ev.DecisionID)
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
