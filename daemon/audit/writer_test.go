package audit

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openfirma/firma/internal/duration"
)

func TestAppendVerifySigned(t *testing.T) {
	key, _, pub := testKey(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	w := openTest(t, Config{FilePath: path, SigningKeyPath: key})
	var evs []*Event
	for i := range 20 {
		ev := decision(i, "paste.rs", "DENY")
		if err := w.Append(ev); err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
		done := &Event{Kind: KindCompletion, DecisionID: ev.ID, Result: &Result{BytesUp: 10, BytesDown: 20, DurationMS: 3}}
		if err := w.Append(done); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Healthy(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	for i, ev := range evs {
		// Line 1 is the open record; each decision is followed by its completion.
		if want := uint64(2 + 2*i); ev.Seq != want {
			t.Errorf("event %d: seq %d, want %d", i, ev.Seq, want)
		}
		if len(ev.ID) != 26 || ev.Sig == "" || len(ev.PrevHash) != 64 || ev.Time.IsZero() {
			t.Errorf("event %d not filled: %+v", i, ev)
		}
	}
	rep, err := Verify(pub, path)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || !rep.Signed || !rep.Closed || rep.Records != 42 || rep.FirstSeq != 1 || rep.LastSeq != 42 {
		t.Fatalf("report: %+v problem %v", rep, rep.Problem)
	}

	// The line on disk is the event Append filled in: same seq, prev_hash and sig.
	lines := readLines(t, path)
	var got Event
	if err := json.Unmarshal([]byte(lines[1]), &got); err != nil {
		t.Fatal(err)
	}
	if got.ID != evs[0].ID || got.Seq != evs[0].Seq || got.PrevHash != evs[0].PrevHash || got.Sig != evs[0].Sig ||
		got.Envelope.Agent.PID != 1000 || got.Envelope.Agent.Exe != "/usr/bin/curl" {
		t.Fatalf("line 2 = %s\nwant event %+v", lines[1], evs[0])
	}
	var first Event
	json.Unmarshal([]byte(lines[0]), &first)
	if first.Kind != KindLog || first.Log.Event != LogOpen || first.PrevHash != GenesisHash || first.Log.KeyID != KeyID(pub) {
		t.Fatalf("line 1 = %s", lines[0])
	}
}

func TestUnsignedLogsWarningAndVerifies(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	log, buf := testLogger(t)
	w, err := Open(Config{FilePath: path}, log)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := w.Append(decision(i, "api.anthropic.com", "ALLOW")); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	if !strings.Contains(buf.String(), "audit log unsigned") {
		t.Fatalf("no unsigned warning in %s", buf)
	}
	if strings.Contains(buf.String(), "api.anthropic.com") {
		t.Fatalf("record contents reached the process log: %s", buf)
	}
	rep, err := Verify(nil, path)
	if err != nil || !rep.OK() || rep.Signed || rep.Records != 7 {
		t.Fatalf("verify: %v %+v %v", err, rep, rep.Problem)
	}
	for _, l := range readLines(t, path) {
		if strings.Contains(l, `"sig"`) {
			t.Fatalf("unsigned log has a sig: %s", l)
		}
	}
}

func TestAppendRejects(t *testing.T) {
	w := openTest(t, Config{FilePath: filepath.Join(t.TempDir(), "audit.jsonl")})
	for _, ev := range []*Event{nil, {}, {Kind: KindLog}, {Kind: KindDecision, Log: &LogRecord{Event: LogClose}}} {
		if err := w.Append(ev); !errors.Is(err, ErrInvalid) {
			t.Errorf("Append(%+v) = %v, want ErrInvalid", ev, err)
		}
	}
	w.Close()
	if err := w.Append(decision(1, "x", "DENY")); !errors.Is(err, ErrClosed) {
		t.Errorf("Append after Close = %v", err)
	}
	if err := w.Healthy(); !errors.Is(err, ErrClosed) {
		t.Errorf("Healthy after Close = %v", err)
	}
	if err := w.Rotate(); !errors.Is(err, ErrClosed) {
		t.Errorf("Rotate after Close = %v", err)
	}
}

// The pieces Append assembles under the chain must be byte for byte what encoding the whole event
// gives, and eventTail must list exactly Event's members between prev_hash and sig.
func TestCanonicalBodyMatchesEventEncoding(t *testing.T) {
	et, tt := reflect.TypeOf(Event{}), reflect.TypeOf(eventTail{})
	var mid []reflect.StructField
	for i := range et.NumField() {
		if f := et.Field(i); f.Name != "ID" && f.Name != "Seq" && f.Name != "Time" && f.Name != "PrevHash" && f.Name != "Sig" {
			mid = append(mid, f)
		}
	}
	if et.Field(et.NumField()-1).Name != "Sig" {
		t.Fatal("Sig must be Event's last field")
	}
	if len(mid) != tt.NumField() {
		t.Fatalf("eventTail has %d fields, Event has %d between prev_hash and sig", tt.NumField(), len(mid))
	}
	for i, f := range mid {
		g := tt.Field(i)
		if f.Name != g.Name || f.Type != g.Type || f.Tag != g.Tag {
			t.Fatalf("eventTail field %d is %s %s %q, Event has %s %s %q", i, g.Name, g.Type, g.Tag, f.Name, f.Type, f.Tag)
		}
	}

	ev := decision(7, "example.com", "ALLOW")
	ev.ID, ev.Time, ev.DecisionID = `id"<&>`, time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), "d"
	ev.Capability = &Capability{TokenID: "tok"}
	ev.Result = &Result{BytesUp: 1, BytesDown: 2, DurationMS: 3, UpstreamStatus: 200, Injected: []string{"Authorization", `X-"q"`}, Error: "e"}
	ev.Decision.Enforced = new(bool)
	ev.Envelope.Intent.Resource.Path = "/v1/x?a=1&b=<2>"
	p, err := encodePending(ev)
	if err != nil {
		t.Fatal(err)
	}
	body := p.appendBody(nil, 42, GenesisHash)
	ev.Seq, ev.PrevHash = 42, GenesisHash
	want, _ := encodeJSON(ev)
	if string(body) != string(want) {
		t.Fatalf("body\n%s\nwant\n%s", body, want)
	}
	line := appendLine(nil, body, "c2ln")
	gotBody, sig := splitLine(line[:len(line)-1])
	if string(gotBody) != string(body) || sig != "c2ln" {
		t.Fatalf("splitLine(%s) = %s, %q", line, gotBody, sig)
	}
	ev.Sig = "c2ln"
	full, _ := encodeJSON(ev)
	if string(full)+"\n" != string(line) {
		t.Fatalf("line\n%s\nwant\n%s", line, full)
	}
}

func TestConcurrentAppend(t *testing.T) {
	key, _, pub := testKey(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	w := openTest(t, Config{FilePath: path, SigningKeyPath: key, MaxSizeBytes: 64 << 10})
	const n, each = 200, 3
	var wg sync.WaitGroup
	seqs := make([][]uint64, n)
	for g := range n {
		wg.Go(func() {
			for j := range each {
				ev := decision(g*each+j, "api.anthropic.com", "ALLOW")
				if err := w.Append(ev); err != nil {
					t.Error(err)
					return
				}
				seqs[g] = append(seqs[g], ev.Seq)
			}
		})
	}
	// Rotations by signal while appending: the chain must survive them.
	for range 3 {
		if err := w.Rotate(); err != nil {
			t.Error(err)
		}
	}
	wg.Wait()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for _, s := range seqs {
		for _, q := range s {
			if seen[q] {
				t.Fatalf("seq %d handed out twice", q)
			}
			seen[q] = true
		}
	}
	if len(seen) != n*each {
		t.Fatalf("%d seqs, want %d", len(seen), n*each)
	}
	files, err := Files(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 3 {
		t.Fatalf("files %v: want rotations", files)
	}
	rep, err := Verify(pub, files...)
	if err != nil || !rep.OK() {
		t.Fatalf("verify: %v %v", err, rep.Problem)
	}
	decisions := 0
	for _, f := range files {
		for _, l := range readLines(t, f) {
			var ev Event
			json.Unmarshal([]byte(l), &ev)
			if ev.Kind == KindDecision {
				decisions++
				if ev.Envelope.Agent.PID < 1000 || ev.Envelope.Agent.Exe != "/usr/bin/curl" {
					t.Fatalf("attribution lost: %s", l)
				}
			}
		}
	}
	if decisions != n*each {
		t.Fatalf("%d decision lines, want %d", decisions, n*each)
	}
}

func TestRotationAndRetention(t *testing.T) {
	key, _, pub := testKey(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	w := openTest(t, Config{FilePath: path, SigningKeyPath: key, MaxSizeBytes: 4096})
	for i := range 60 {
		if err := w.Append(decision(i, "paste.rs", "DENY")); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Rotate(); err != nil {
		t.Fatal(err)
	}
	if err := w.Append(decision(99, "paste.rs", "DENY")); err != nil {
		t.Fatal(err)
	}
	w.Close()
	files, _ := Files(path)
	if len(files) < 4 {
		t.Fatalf("want several files, got %v", files)
	}
	// Rotated names carry the seq of their first line.
	for _, f := range files[:len(files)-1] {
		seq, ok := rotatedSeq(path, f)
		first, err := firstLine(f)
		if !ok || err != nil || first.seq != seq {
			t.Fatalf("%s: name seq %d, first line %+v %v", f, seq, first, err)
		}
	}
	// Any order on the command line.
	shuffled := append([]string{files[len(files)-1]}, files[:len(files)-1]...)
	rep, err := Verify(pub, shuffled...)
	if err != nil || !rep.OK() || len(rep.Files) != len(files) || rep.Files[0].Path != files[0] {
		t.Fatalf("verify: %v %+v %v", err, rep, rep.Problem)
	}
	// A missing middle file.
	rep, _ = Verify(pub, append(append([]string{}, files[:1]...), files[2:]...)...)
	if rep.OK() || rep.Problem.Kind != ProblemMissing || rep.Problem.File != files[2] || rep.Problem.Line != 1 ||
		!strings.Contains(rep.Problem.Detail, filepath.Base(files[1])) {
		t.Fatalf("missing middle file: %v", rep.Problem)
	}
	// Whole lines cut from the end of a rotated file.
	lines := readLines(t, files[1])
	writeLines(t, files[1], lines[:len(lines)-2])
	rep, _ = Verify(pub, files...)
	if rep.OK() || rep.Problem.Kind != ProblemRemoved || rep.Problem.File != files[1] || rep.Problem.Line != len(lines)-1 {
		t.Fatalf("cut rotated tail: %v (file had %d lines)", rep.Problem, len(lines))
	}
	writeLines(t, files[1], lines)

	// Retention keeps max_files, and what is left still verifies, starting mid-chain.
	w2 := openTest(t, Config{FilePath: path, SigningKeyPath: key, MaxSizeBytes: 4096, MaxFiles: 3})
	if err := w2.Rotate(); err != nil {
		t.Fatal(err)
	}
	w2.Close()
	files, _ = Files(path)
	if len(files) != 3 {
		t.Fatalf("retention left %v", files)
	}
	rep, err = Verify(pub, files...)
	if err != nil || !rep.OK() || rep.FirstSeq <= 1 || !strings.Contains(strings.Join(rep.Notes, "\n"), "starts at seq") {
		t.Fatalf("after retention: %v %+v %v", err, rep, rep.Problem)
	}
}

func TestReopenContinuesChain(t *testing.T) {
	key, _, pub := testKey(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	for round := range 3 {
		w := openTest(t, Config{FilePath: path, SigningKeyPath: key})
		for i := range 5 {
			if err := w.Append(decision(round*10+i, "paste.rs", "DENY")); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := Verify(pub, path)
	// open + 3×(5 + close) + 2 resumes
	if err != nil || !rep.OK() || rep.Records != 1+3*6+2 {
		t.Fatalf("verify: %v %+v %v", err, rep, rep.Problem)
	}
	n := 0
	for _, l := range readLines(t, path) {
		if strings.Contains(l, `"event":"resume"`) {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("%d resume records, want 2", n)
	}
}

func TestReopenAfterRotationWithoutLiveFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	w := openTest(t, Config{FilePath: path})
	w.Append(decision(1, "a", "DENY"))
	w.Close()
	// As if the daemon died between renaming the live file and creating the next one.
	if err := os.Rename(path, rotatedName(path, 1)); err != nil {
		t.Fatal(err)
	}
	w = openTest(t, Config{FilePath: path})
	w.Append(decision(2, "a", "DENY"))
	w.Close()
	files, _ := Files(path)
	rep, err := Verify(nil, files...)
	if err != nil || !rep.OK() || rep.Records != 6 {
		t.Fatalf("verify %v: %v %+v %v", files, err, rep, rep.Problem)
	}
	if first := readLines(t, path)[0]; !strings.Contains(first, `"previous_file":"audit.jsonl.00000000000000000001"`) {
		t.Fatalf("open record does not name the previous file: %s", first)
	}
}

func TestTornTailIsCutSavedAndRecorded(t *testing.T) {
	key, _, pub := testKey(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	w := openTest(t, Config{FilePath: path, SigningKeyPath: key})
	for i := range 5 {
		w.Append(decision(i, "paste.rs", "DENY"))
	}
	w.Close()
	// A crash: no close record, and half a line at the end.
	lines := readLines(t, path)
	torn := lines[3][:40]
	writeLines(t, path, append(lines[:len(lines)-1], torn))
	rep, _ := Verify(pub, path)
	if rep.OK() || rep.Problem.Kind != ProblemTruncated || rep.Problem.Line != len(lines) {
		t.Fatalf("torn file: %v", rep.Problem)
	}

	log, buf := testLogger(t)
	w, err := Open(Config{FilePath: path, SigningKeyPath: key}, log)
	if err != nil {
		t.Fatal(err)
	}
	w.Append(decision(9, "paste.rs", "DENY"))
	w.Close()
	if !strings.Contains(buf.String(), "incomplete line") {
		t.Fatalf("torn tail not logged: %s", buf)
	}
	saved, _ := filepath.Glob(path + ".torn-*")
	if len(saved) != 1 {
		t.Fatalf("torn tail not saved: %v", saved)
	}
	if !IsTornSave(saved[0]) || IsTornSave(path) || IsTornSave(rotatedName(path, 1)) {
		t.Fatal("IsTornSave")
	}
	if data, _ := os.ReadFile(saved[0]); string(data) != torn {
		t.Fatalf("saved %q, want %q", data, torn)
	}
	rep, err = Verify(pub, path)
	if err != nil || !rep.OK() {
		t.Fatalf("after repair: %v %v", err, rep.Problem)
	}
	var resume Event
	json.Unmarshal([]byte(readLines(t, path)[len(lines)-1]), &resume)
	if resume.Log == nil || resume.Log.Event != LogResume || resume.Log.TornBytes != 40 || resume.Log.TornSavedTo != filepath.Base(saved[0]) {
		t.Fatalf("resume record: %+v", resume.Log)
	}
}

func TestForeignLastLineRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	os.WriteFile(path, []byte("hello\n"), 0o600)
	log, _ := testLogger(t)
	if _, err := Open(Config{FilePath: path}, log); err == nil || !strings.Contains(err.Error(), "not an audit record") {
		t.Fatalf("Open over a foreign file: %v", err)
	}
}

func TestLiveFileRemovedStartsNewFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	w := openTest(t, Config{FilePath: path, FsyncInterval: duration.Of(10 * time.Millisecond)})
	w.Append(decision(1, "a", "DENY"))
	os.Remove(path)
	waitFor(t, "a new live file", func() bool { _, err := os.Stat(path); return err == nil })
	if err := w.Append(decision(2, "a", "DENY")); err != nil {
		t.Fatal(err)
	}
	w.Close()
	lines := readLines(t, path)
	if !strings.Contains(lines[0], `"reopened (file moved or removed)"`) || !strings.Contains(lines[0], `"seq":3`) {
		t.Fatalf("new file starts with %s", lines[0])
	}
	rep, err := Verify(nil, path)
	if err != nil || !rep.OK() || rep.FirstSeq != 3 {
		t.Fatalf("verify: %v %+v %v", err, rep, rep.Problem)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "audit.file_path"},
		{Config{FilePath: "a", FsyncInterval: duration.Of(1)}, "audit.fsync_interval"},
		{Config{FilePath: "a", FsyncInterval: duration.Of(time.Hour)}, "audit.fsync_interval"},
		{Config{FilePath: "a", MaxSizeBytes: 10}, "audit.max_size_bytes"},
		{Config{FilePath: "a", MaxFiles: -1}, "audit.max_files"},
	} {
		if err := c.cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Validate(%+v) = %v, want %s", c.cfg, err, c.want)
		}
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestFailedRotationKeepsWriting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	w := openTest(t, Config{FilePath: path})
	w.Append(decision(1, "a", "DENY"))
	// Something already holds the name the live file would be rotated to.
	if err := os.WriteFile(rotatedName(path, 1), []byte("not ours\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := w.Rotate(); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("Rotate onto an existing name: %v", err)
	}
	if err := w.Append(decision(2, "a", "DENY")); err != nil {
		t.Fatal(err)
	}
	if err := w.Healthy(); err != nil {
		t.Fatal(err)
	}
	if err := w.Sync(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	rep, err := Verify(nil, path)
	if err != nil || !rep.OK() || rep.Records != 4 {
		t.Fatalf("verify: %v %+v %v", err, rep, rep.Problem)
	}
}
