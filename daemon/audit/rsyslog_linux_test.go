package audit_test

import (
	"bufio"
	"crypto/ecdsa"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/internal/e2e"
	"github.com/openfirma/firma/internal/testutil"
)

func event(i int, host, outcome string) *audit.Event {
	class := "communication.external.send"
	return &audit.Event{
		Kind: audit.KindDecision,
		Envelope: &audit.Envelope{
			Agent:     audit.Agent{AgentID: "claude-code", SessionID: "s1", Cgroup: "/firma-agents.slice/claude", PID: 1000 + i, Exe: "/usr/bin/curl"},
			Intent:    audit.Intent{ActionClass: &class, Resource: audit.Resource{Host: host + ":443"}, RawTransport: "tls"},
			Transport: audit.Transport{Mode: "connect", SNI: host},
		},
		Decision: &audit.Decision{Outcome: outcome, MatchedPolicies: []string{}, Reason: "test"},
	}
}

func lines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// rsyslogFields is rsyslog's fields file: for each APP-NAME, its messages' fields in order.
func rsyslogFields(t *testing.T, r *e2e.Rsyslog) map[string][][]string {
	t.Helper()
	f, err := os.Open(r.FieldsFile())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][][]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		fs := strings.SplitN(sc.Text(), "|", 8)
		if len(fs) != 8 {
			t.Fatalf("fields line %q", sc.Text())
		}
		out[fs[3]] = append(out[fs[3]], fs)
	}
	return out
}

// waitRsyslog polls rsyslog's fields file until done holds for it: what a sink sent is in the
// receiver's socket buffer, not yet necessarily in its files.
func waitRsyslog(t *testing.T, r *e2e.Rsyslog, done func(map[string][][]string) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(r.FieldsFile()); err == nil && done(rsyslogFields(t, r)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("rsyslog did not write the expected messages within 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Every transport delivers every line, in order and byte for byte, to a real rsyslogd, which parses
// the RFC 5424 header as the sink meant it; `verify --format syslog` then checks the chain in what
// rsyslog wrote, with either of its file formats, and finds a line removed from it.
func TestSyslogSinksIntoRsyslog(t *testing.T) {
	r, key, pub := rsyslogAndKey(t)
	sinks := map[string]audit.SinkConfig{
		"firma-udp":        {Address: fmt.Sprintf("udp://127.0.0.1:%d", r.UDPPort)},
		"firma-tcp":        {Address: fmt.Sprintf("tcp://127.0.0.1:%d", r.TCPPort)},
		"firma-tls":        {Address: fmt.Sprintf("tcp+tls://127.0.0.1:%d", r.TLSPort), CAFile: r.CA.CertFile, CertFile: r.ClientCert, KeyFile: r.ClientKey},
		"firma-unixstream": {Address: "unixstream://" + r.UnixStream},
		"firma-unixgram":   {Address: "unixgram://" + r.UnixGram},
		"firma-unix":       {Address: "unix://" + r.UnixGram},
	}
	cfg := audit.Config{FilePath: filepath.Join(t.TempDir(), "audit.jsonl"), SigningKeyPath: key}
	for _, app := range slices.Sorted(func(yield func(string) bool) {
		for k := range sinks {
			if !yield(k) {
				return
			}
		}
	}) {
		s := sinks[app]
		s.Type, s.AppName, s.Hostname, s.Facility = audit.SinkSyslog, app, "sidecar-host-1", "local4"
		cfg.Sinks = append(cfg.Sinks, s)
	}
	w, err := audit.Open(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		outcome := "ALLOW"
		if i%3 == 0 {
			outcome = "DENY"
		}
		ev := event(i, fmt.Sprintf("host%d.example", i), outcome)
		if err := w.Append(ev); err != nil {
			t.Fatal(err)
		}
		if err := w.Append(&audit.Event{Kind: audit.KindCompletion, DecisionID: ev.ID, Result: &audit.Result{BytesUp: int64(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	for _, st := range w.Stats().Sinks {
		if st.Sent != 62 || st.Dropped != 0 {
			t.Errorf("%s: %+v", st.Name, st)
		}
	}
	want := lines(t, cfg.FilePath)
	waitRsyslog(t, r, func(got map[string][][]string) bool {
		for app := range sinks {
			if len(got[app]) < len(want) {
				return false
			}
		}
		return true
	})
	r.Stop(t) // flushes its files
	fileRep, err := audit.Verify(pub, cfg.FilePath)
	if err != nil || !fileRep.OK() {
		t.Fatal(err, fileRep.Problem)
	}

	got := rsyslogFields(t, r)
	pid := strconv.Itoa(os.Getpid())
	for app := range sinks {
		msgs := got[app]
		if len(msgs) != len(want) {
			t.Errorf("%s: rsyslog got %d messages, the file has %d lines", app, len(msgs), len(want))
			continue
		}
		for i, f := range msgs {
			// PRI|TIMESTAMP|HOSTNAME|APP-NAME|PROCID|MSGID|SD|MSG
			var ev audit.Event
			if err := jsonUnmarshal(want[i], &ev); err != nil {
				t.Fatal(err)
			}
			sev := 6
			if ev.Decision != nil && ev.Decision.Outcome == "DENY" {
				sev = 4
			}
			ts, err := time.Parse(time.RFC3339Nano, f[1])
			if f[0] != strconv.Itoa(20*8+sev) || err != nil || !ts.Equal(ev.Time.Truncate(time.Microsecond)) || f[2] != "sidecar-host-1" ||
				f[4] != pid || f[5] != string(ev.Kind) || f[6] != "-" || f[7] != want[i] {
				t.Fatalf("%s message %d: fields %q\nwant line %q (time %s)", app, i, f, want[i], ev.Time)
			}
		}
	}

	for _, c := range []struct {
		file   string
		format audit.Format
	}{{r.RFC5424File(), audit.FormatSyslog}, {r.TraditionalFile(), audit.FormatAuto}} {
		for app := range sinks {
			rep, err := audit.VerifyWith(pub, audit.VerifyOptions{Format: c.format, App: app, Host: "sidecar-host-1"}, c.file)
			if err != nil || !rep.OK() || rep.Records != len(want) || rep.LastHash != fileRep.LastHash || !rep.Closed || rep.Format != audit.FormatSyslog {
				t.Fatalf("verify %s --app %s: %v %+v %v", filepath.Base(c.file), app, err, rep, rep.Problem)
			}
		}
	}
	// All six chains in one file, unfiltered: the interleaving is reported, with the way out.
	rep, err := audit.VerifyWith(pub, audit.VerifyOptions{Format: audit.FormatSyslog}, r.RFC5424File())
	if err != nil || rep.OK() || !strings.Contains(rep.Problem.Detail, "6 sources") || !strings.Contains(rep.Problem.Detail, "--app") {
		t.Fatalf("unfiltered verify of six interleaved chains: %v %+v", err, rep.Problem)
	}

	// A record cut out of rsyslog's file is named by its line in that file.
	all := lines(t, r.RFC5424File())
	var k, seen int
	for i, l := range all {
		if strings.Contains(l, " firma-tcp ") {
			if seen++; seen == 20 {
				k = i
				break
			}
		}
	}
	cut := filepath.Join(t.TempDir(), "cut.log")
	if err := os.WriteFile(cut, []byte(strings.Join(append(all[:k:k], all[k+1:]...), "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rep, err = audit.VerifyWith(pub, audit.VerifyOptions{Format: audit.FormatSyslog, App: "firma-tcp"}, cut)
	if err != nil || rep.OK() || rep.Problem.Kind != audit.ProblemRemoved {
		t.Fatalf("verify of the cut file: %v %+v", err, rep.Problem)
	}
	next := k + 1 // the next firma-tcp line, numbered in the cut file
	for !strings.Contains(all[next], " firma-tcp ") {
		next++
	}
	if rep.Problem.Line != next { // 1-based in the cut file = index in all
		t.Fatalf("problem at line %d, want %d: %v", rep.Problem.Line, next, rep.Problem)
	}
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

// rsyslogAndKey starts an rsyslogd and makes an audit signing key (its path) and public key.
func rsyslogAndKey(t *testing.T) (*e2e.Rsyslog, string, *ecdsa.PublicKey) {
	t.Helper()
	testutil.RequireRoot(t)
	r := e2e.StartRsyslog(t)
	key, pubPath := e2e.AuditKey(t)
	pub, err := audit.LoadPublicKey(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	return r, key, pub
}

// With the receiver stopped mid-run, no record is lost from the file, the sink retries until the
// receiver is back, and what it could not hold is counted: the receiver has exactly the file's
// lines minus the dropped ones, in order.
func TestSyslogReceiverStoppedMidRun(t *testing.T) {
	r, key, pub := rsyslogAndKey(t)
	cfg := audit.Config{FilePath: filepath.Join(t.TempDir(), "audit.jsonl"), SigningKeyPath: key,
		Sinks: []audit.SinkConfig{{Type: audit.SinkSyslog, Address: fmt.Sprintf("tcp://127.0.0.1:%d", r.TCPPort), QueueSize: 8}}}
	w, err := audit.Open(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	appended := 1 // the open record
	appendN := func(n int) {
		for i := range n {
			if err := w.Append(event(appended+i, "a.example", "ALLOW")); err != nil {
				t.Fatal(err)
			}
		}
		appended += n
	}
	settled := func(what string) audit.SinkStats {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			st := w.Stats().Sinks[0]
			if st.Queued == 0 && st.Sent+st.Dropped == uint64(appended) {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: sink never settled: %+v, %d records", what, st, appended)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	appendN(5)
	if st := settled("before the outage"); st.Sent != 6 || st.Dropped != 0 {
		t.Fatalf("before the outage: %+v", st)
	}
	waitRsyslog(t, r, func(got map[string][][]string) bool { return len(got["firma"]) == 6 })
	r.Stop(t)

	appendN(40) // the receiver is down: 8 queue, the rest are dropped for the sink
	downStats := w.Stats().Sinks[0]
	if downStats.Dropped == 0 || downStats.Sent != 6 {
		t.Fatalf("while down: %+v", downStats)
	}
	r.Start(t)
	if st := settled("after the receiver came back"); st.Dropped != downStats.Dropped {
		t.Fatalf("records dropped after the outage: %+v (dropped while down: %d)", st, downStats.Dropped)
	}
	appendN(5)
	st := settled("after the receiver came back")
	if st.Retries == 0 || !st.Up || st.Dropped != downStats.Dropped {
		t.Fatalf("after the outage: %+v (dropped while down: %d)", st, downStats.Dropped)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	final := w.Stats().Sinks[0]
	file := lines(t, cfg.FilePath)
	if len(file) != appended+1 || final.Sent+final.Dropped != uint64(len(file)) {
		t.Fatalf("file has %d lines for %d appended + close; stats %+v", len(file), appended, final)
	}
	if rep, err := audit.Verify(pub, cfg.FilePath); err != nil || !rep.OK() {
		t.Fatalf("the file: %v %v", err, rep.Problem)
	}
	waitRsyslog(t, r, func(got map[string][][]string) bool { return uint64(len(got["firma"])) >= final.Sent })
	r.Stop(t)
	var got []string
	var seqs []uint64
	for _, f := range rsyslogFields(t, r)["firma"] {
		got = append(got, f[7])
		var ev audit.Event
		jsonUnmarshal(f[7], &ev)
		seqs = append(seqs, ev.Seq)
	}
	prefix := 0 // the records before the first gap
	for prefix < len(seqs) && seqs[prefix] == uint64(prefix+1) {
		prefix++
	}
	if uint64(len(got)) != final.Sent {
		t.Fatalf("rsyslog has %d records, the sink sent %d", len(got), final.Sent)
	}
	// In order, a subsequence of the file, missing exactly the dropped records.
	j := 0
	for _, l := range file {
		if j < len(got) && got[j] == l {
			j++
		}
	}
	if j != len(got) || uint64(len(file)-len(got)) != final.Dropped {
		t.Fatalf("rsyslog's records are not the file minus %d dropped (matched %d of %d)", final.Dropped, j, len(got))
	}
	// The exported stream has a gap where the first drops were, and verify says so there.
	rep, err := audit.VerifyWith(pub, audit.VerifyOptions{Format: audit.FormatSyslog}, r.RFC5424File())
	if err != nil || rep.OK() || rep.Problem.Kind != audit.ProblemRemoved || rep.Records != prefix || rep.Problem.Line != prefix+1 {
		t.Fatalf("verify of the stream with a gap after %d records (%v): %v %+v %+v", prefix, seqs, err, rep, rep.Problem)
	}
}
