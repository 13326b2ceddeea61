package audit

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/openfirma/firma/internal/duration"
)

// rfc5424 is the SYSLOG-MSG rule of RFC 5424 section 6 for a message without structured data:
// HEADER SP STRUCTURED-DATA [SP MSG], with HEADER = PRI VERSION SP TIMESTAMP SP HOSTNAME SP
// APP-NAME SP PROCID SP MSGID, each header field NILVALUE or 1*n PRINTUSASCII (%d33-126).
var rfc5424 = regexp.MustCompile(`^<(\d{1,3})>([1-9]\d{0,2}) ` +
	`(-|\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})) ` +
	`([!-~]{1,255}) ([!-~]{1,48}) ([!-~]{1,128}) ([!-~]{1,32}) (-|(?:\[[^\]]*\])+)(?: (.*))?$`)

func TestSyslogMessageFollowsRFC5424(t *testing.T) {
	at := time.Date(2026, 12, 2, 4, 5, 6, 123456789, time.UTC)
	line := []byte(`{"id":"01J","seq":7,"time":"2026-12-02T04:05:06.123456789Z","prev_hash":"00","kind":"decision"}`)
	cases := []struct {
		name     string
		cfg      SinkConfig
		f        fwd
		pri      int
		host     string
		msgid    string
		wantTime string
	}{
		{"deny is a warning", SinkConfig{Facility: "authpriv", AppName: "firma", Hostname: "box1"},
			fwd{line: line, time: at, kind: KindDecision, outcome: "DENY"}, 10*8 + 4, "box1", "decision", "2026-12-02T04:05:06.123456Z"},
		{"allow is info", SinkConfig{Facility: "local3", AppName: "firma-a", Hostname: "box1"},
			fwd{line: line, time: at, kind: KindDecision, outcome: "ALLOW"}, 19*8 + 6, "box1", "decision", "2026-12-02T04:05:06.123456Z"},
		{"completion", SinkConfig{Facility: "daemon", AppName: "firma", Hostname: "h"},
			fwd{line: line, time: at.In(time.FixedZone("x", 3600)), kind: KindCompletion}, 3*8 + 6, "h", "completion", "2026-12-02T04:05:06.123456Z"},
		{"suppressed is a warning", SinkConfig{Facility: "kern", AppName: "firma", Hostname: "h"},
			fwd{line: line, time: at, kind: KindLog, logEvent: LogSuppressed}, 4, "h", "log", "2026-12-02T04:05:06.123456Z"},
		{"odd host names are made printable", SinkConfig{Facility: "authpriv", AppName: "firma", Hostname: ""},
			fwd{line: line, time: at, kind: KindLog}, 10*8 + 6, "", "log", "2026-12-02T04:05:06.123456Z"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newSyslogHeader(c.cfg.withDefaults())
			if c.name == "odd host names are made printable" {
				h.hostname = string(appendToken(nil, "a host\twith ümlauts", 255))
				c.host = "a_host_with___mlauts" // ü is two bytes
			}
			msg := string(h.appendSyslog(nil, &c.f))
			m := rfc5424.FindStringSubmatch(msg)
			if m == nil {
				t.Fatalf("not RFC 5424: %q", msg)
			}
			pri, _ := strconv.Atoi(m[1])
			if pri != c.pri || pri > 191 || m[2] != "1" || m[3] != c.wantTime || m[4] != c.host || m[5] != c.cfg.withDefaults().AppName ||
				m[6] != h.procID || m[7] != c.msgid || m[8] != "-" || m[9] != string(line) {
				t.Fatalf("fields %q of %q", m[1:], msg)
			}
		})
	}
	if got := string(appendToken(nil, strings.Repeat("x", 40), 32)); len(got) != 32 {
		t.Errorf("MSGID longer than 32: %q", got)
	}
}

// A stream receiver gets octet-counted frames (RFC 6587 3.4.1), one per record, in order.
func TestSyslogStreamFraming(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		var msgs []string
		for len(msgs) < 3 {
			n, err := br.ReadString(' ')
			if err != nil {
				break
			}
			l, _ := strconv.Atoi(strings.TrimSpace(n))
			b := make([]byte, l)
			if _, err := io.ReadFull(br, b); err != nil {
				break
			}
			msgs = append(msgs, string(b))
		}
		got <- msgs
	}()
	tr, err := newSyslogTransport(SinkConfig{Type: SinkSyslog, Address: "unix://" + sock}.withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	defer tr.close()
	recs := []*fwd{
		{line: []byte(`{"id":"a","seq":1}`), kind: KindLog, time: time.Now()},
		{line: []byte(`{"id":"b","seq":2,"x":"with spaces and ` + "\u00e9" + `"}`), kind: KindDecision, time: time.Now()},
		{line: []byte(`{"id":"c","seq":3}`), kind: KindCompletion, time: time.Now()},
	}
	if n, err := tr.send(recs); n != 3 || err != nil {
		t.Fatalf("send: %d, %v", n, err)
	}
	if !tr.stream {
		t.Fatal("unix:// to a stream socket was not used as a stream")
	}
	msgs := <-got
	if len(msgs) != 3 {
		t.Fatalf("frames: %q", msgs)
	}
	for i, m := range msgs {
		if !rfc5424.MatchString(m) || !strings.HasSuffix(m, " - "+string(recs[i].line)) {
			t.Errorf("frame %d: %q", i, m)
		}
	}
}

// fakeTransport records what it delivers; hooks decide each attempt.
type fakeTransport struct {
	mu        sync.Mutex
	delivered []string
	attempts  int
	closes    int
	// before runs at the start of each attempt (outside the lock); it may block.
	before func(attempt int)
	// result says what attempt k does with recs: deliver n of them and return err.
	result func(attempt int, recs []*fwd) (int, error)
}

func (f *fakeTransport) send(recs []*fwd) (int, error) {
	f.mu.Lock()
	f.attempts++
	k := f.attempts
	f.mu.Unlock()
	if f.before != nil {
		f.before(k)
	}
	n, err := len(recs), error(nil)
	if f.result != nil {
		n, err = f.result(k, recs)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range recs[:n] {
		f.delivered = append(f.delivered, string(r.line))
	}
	return n, err
}

func (f *fakeTransport) close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closes++
	return nil
}

func (f *fakeTransport) lines() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.delivered)
}

func openWithFake(t *testing.T, cfg Config, ft *fakeTransport, o openOptions) (*Writer, *fakeTransport) {
	t.Helper()
	if ft == nil {
		ft = &fakeTransport{}
	}
	if len(cfg.Sinks) == 0 {
		cfg.Sinks = []SinkConfig{{Type: SinkSyslog, Address: "udp://127.0.0.1:9"}}
	}
	o.transport = func(SinkConfig) (transport, error) { return ft, nil }
	log, _ := testLogger(t)
	w, err := open(cfg, log, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w, ft
}

// fileLines is the log's lines without their "\n".
func fileLines(t *testing.T, path string) []string {
	t.Helper()
	var out []string
	for _, l := range readLines(t, path) {
		out = append(out, strings.TrimSuffix(l, "\n"))
	}
	return out
}

// Every line reaches the sink exactly as written, in order, after it is in the file.
func TestSinkGetsEveryLineInOrder(t *testing.T) {
	key, _, _ := testKey(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	var inFile []int // for each delivery attempt, how many lines the file had
	ft := &fakeTransport{}
	ft.before = func(int) { inFile = append(inFile, len(readLines(t, path))) }
	w, ft := openWithFake(t, Config{FilePath: path, SigningKeyPath: key, FsyncInterval: duration.Of(20 * time.Millisecond)}, ft, openOptions{})
	for i := range 50 {
		if err := w.Append(decision(i, "api.anthropic.com", "ALLOW")); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	want := fileLines(t, path)
	if got := ft.lines(); !slices.Equal(got, want) {
		t.Fatalf("sink got %d lines, file has %d; first difference at %d", len(got), len(want), firstDiff(got, want))
	}
	st := w.Stats().Sinks[0]
	if st.Sent != uint64(len(want)) || st.Dropped != 0 || st.Retries != 0 || !st.Up || st.Queued != 0 {
		t.Fatalf("stats %+v, want %d sent", st, len(want))
	}
	for i, n := range inFile {
		if n == 0 {
			t.Fatalf("attempt %d saw an empty file: forwarded before written", i)
		}
	}
}

func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// A sink that does not take records never holds up Append: its queue fills, then records are
// dropped for it alone, counted and logged; the file has them all.
func TestSinkQueueFullDropsWithoutBlocking(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	gate := make(chan struct{})
	inside := make(chan struct{}, 1)
	ft := &fakeTransport{before: func(k int) {
		if k == 1 {
			inside <- struct{}{}
			<-gate
		}
	}}
	log, buf := testLogger(t)
	cfg := Config{FilePath: path, FsyncInterval: duration.Of(20 * time.Millisecond),
		Sinks: []SinkConfig{{Type: SinkSyslog, Address: "udp://127.0.0.1:9", QueueSize: 5}}}
	w, err := open(cfg, log, openOptions{transport: func(SinkConfig) (transport, error) { return ft, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	<-inside // the sender holds the open record and is stuck delivering it
	for i := range 20 {
		if err := w.Append(decision(i, "paste.rs", "DENY")); err != nil {
			t.Fatal(err)
		}
	}
	st := w.Stats().Sinks[0]
	if st.Queued != 5 || st.Dropped != 15 {
		t.Fatalf("stats %+v, want 5 queued and 15 dropped", st)
	}
	waitFor(t, "the drop warning", func() bool { return strings.Contains(buf.String(), "audit sink queue full") })
	if !strings.Contains(buf.String(), `"dropped":15`) || !strings.Contains(buf.String(), `"first_seq":7`) || !strings.Contains(buf.String(), `"last_seq":21`) {
		t.Fatalf("drop warning without the count and seq range:\n%s", buf.String())
	}
	close(gate)
	waitFor(t, "the queue to drain", func() bool { return w.Stats().Sinks[0].Queued == 0 })
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	file := fileLines(t, path)
	if len(file) != 22 { // open, 20 decisions, close: nothing lost
		t.Fatalf("file has %d lines, want 22", len(file))
	}
	got := ft.lines()
	want := append(append([]string{}, file[:6]...), file[len(file)-1]) // open + the 5 queued + close
	if !slices.Equal(got, want) {
		t.Fatalf("sink got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	st = w.Stats().Sinks[0]
	if st.Sent != 7 || st.Dropped != 15 || st.Sent+st.Dropped != 22 {
		t.Fatalf("final stats %+v", st)
	}
	if !strings.Contains(buf.String(), `"message":"audit sink closed"`) {
		t.Fatalf("no closing summary:\n%s", buf.String())
	}
}

// A sink that is down is retried with backoff: nothing is lost while the queue holds, a partial
// delivery resumes where it stopped without duplicates, and the counters say what happened.
func TestSinkRetriesResumeWithoutDuplicates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	partial := false
	ft := &fakeTransport{result: func(k int, recs []*fwd) (int, error) {
		switch {
		case k <= 3:
			return 0, fmt.Errorf("connection refused (attempt %d)", k)
		case !partial && len(recs) > 2:
			partial = true
			return 2, errors.New("broken pipe after two records")
		}
		return len(recs), nil
	}}
	gate := make(chan struct{})
	ft.before = func(k int) {
		if k == 1 {
			<-gate // let every record queue up first, so that attempt 4 carries several
		}
	}
	log, buf := testLogger(t)
	cfg := Config{FilePath: path, Sinks: []SinkConfig{{Type: SinkSyslog, Address: "tcp://127.0.0.1:9"}}}
	w, err := open(cfg, log, openOptions{transport: func(SinkConfig) (transport, error) { return ft, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for i := range 10 {
		if err := w.Append(decision(i, "api.anthropic.com", "ALLOW")); err != nil {
			t.Fatal(err)
		}
	}
	close(gate)
	waitFor(t, "delivery", func() bool { return len(ft.lines()) == 11 })
	st := w.Stats().Sinks[0]
	if st.Retries != 4 || st.Sent != 11 || st.Dropped != 0 || !st.Up || st.LastError != "broken pipe after two records" {
		t.Fatalf("stats %+v", st)
	}
	if got, want := ft.lines(), fileLines(t, path); !slices.Equal(got, want) {
		t.Fatalf("delivered %d lines, file has %d: first difference at %d", len(got), len(want), firstDiff(got, want))
	}
	ft.mu.Lock()
	closes := ft.closes
	ft.mu.Unlock()
	if closes != 4 {
		t.Errorf("%d reconnects, want one per failure (4)", closes)
	}
	logs := buf.String()
	// Two outages: three refused connections, then the broken pipe.
	if strings.Count(logs, "audit sink down") != 2 || strings.Count(logs, "audit sink delivering again") != 2 || !strings.Contains(logs, `"attempts":3`) {
		t.Fatalf("want two 'down' and two 'delivering again', the first after 3 attempts:\n%s", logs)
	}
}

// A record the transport can never carry is dropped and counted, not retried for ever.
func TestSinkRecordTooLargeIsDropped(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	ft := &fakeTransport{result: func(k int, recs []*fwd) (int, error) {
		for i, r := range recs {
			if strings.Contains(string(r.line), "huge.example") {
				return i, fmt.Errorf("%w: 70000-byte datagram", errTooLarge)
			}
		}
		return len(recs), nil
	}}
	w, ft := openWithFake(t, Config{FilePath: path}, ft, openOptions{})
	for i, host := range []string{"a.example", "huge.example", "b.example"} {
		if err := w.Append(decision(i, host, "ALLOW")); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	file := fileLines(t, path)
	want := append(append([]string{}, file[:2]...), file[3:]...)
	if got := ft.lines(); !slices.Equal(got, want) {
		t.Fatalf("delivered:\n%s", strings.Join(got, "\n"))
	}
	if st := w.Stats().Sinks[0]; st.Dropped != 1 || st.Sent != 4 || st.Retries != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// Close gives a sink that stays down its drain time, then counts what it still holds as dropped.
func TestCloseGivesUpOnADeadSink(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	ft := &fakeTransport{result: func(int, []*fwd) (int, error) { return 0, errors.New("connection refused") }}
	w, _ := openWithFake(t, Config{FilePath: path}, ft, openOptions{drain: 300 * time.Millisecond})
	for i := range 5 {
		if err := w.Append(decision(i, "a.example", "ALLOW")); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	st := w.Stats().Sinks[0]
	if st.Sent != 0 || st.Dropped != 7 || st.Up || st.Retries == 0 || st.Queued != 0 {
		t.Fatalf("stats %+v, want all 7 lines dropped", st)
	}
	if n := len(fileLines(t, path)); n != 7 {
		t.Fatalf("file has %d lines, want 7", n)
	}
}

// The sink keys decode from TOML as documented, and each bad value is an error naming its key.
func TestSinkConfigDecodeAndValidate(t *testing.T) {
	const doc = `
file_path = "audit.jsonl"
refusal_rate = 5.0
refusal_burst = 20
refusal_window = "30s"

[[sinks]]
type = "journald"
app_name = "firma-a"
queue_size = 100

[[sinks]]
type = "syslog"
address = "tcp+tls://logs.example.com:6514"
ca_file = "ca.pem"
server_name = "logs.example.com"
cert_file = "c.pem"
key_file = "c.key"
facility = "local3"
hostname = "box-1"
`
	var c Config
	dec := toml.NewDecoder(strings.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	want := Config{FilePath: "audit.jsonl", RefusalRate: 5, RefusalBurst: 20, RefusalWindow: duration.Of(30 * time.Second), Sinks: []SinkConfig{
		{Type: SinkJournald, AppName: "firma-a", QueueSize: 100},
		{Type: SinkSyslog, Address: "tcp+tls://logs.example.com:6514", CAFile: "ca.pem", ServerName: "logs.example.com",
			CertFile: "c.pem", KeyFile: "c.key", Facility: "local3", Hostname: "box-1"}}}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("decoded %+v", c)
	}
	for _, tc := range []struct {
		sink SinkConfig
		want string
	}{
		{SinkConfig{}, "audit.sinks[0].type: must be set"},
		{SinkConfig{Type: "kafka"}, `audit.sinks[0].type: "kafka" is not`},
		{SinkConfig{Type: SinkSyslog}, "audit.sinks[0].address: must be set"},
		{SinkConfig{Type: SinkSyslog, Address: "127.0.0.1:514"}, "audit.sinks[0].address:"},
		{SinkConfig{Type: SinkSyslog, Address: "http://h:1"}, `unknown scheme "http"`},
		{SinkConfig{Type: SinkSyslog, Address: "unix://relative"}, "audit.sinks[0].address:"},
		{SinkConfig{Type: SinkSyslog, Address: "udp://h:514", CAFile: "x"}, "audit.sinks[0].ca_file: only a tcp+tls:// address uses it"},
		{SinkConfig{Type: SinkSyslog, Address: "tcp+tls://h:1", CertFile: "c"}, "audit.sinks[0].cert_file: cert_file and key_file go together"},
		{SinkConfig{Type: SinkJournald, Address: "unix:///x"}, "audit.sinks[0].address: not used by a journald sink"},
		{SinkConfig{Type: SinkJournald, Facility: "local9"}, `audit.sinks[0].facility: "local9" is not`},
		{SinkConfig{Type: SinkJournald, AppName: "fir ma"}, "audit.sinks[0].app_name:"},
		{SinkConfig{Type: SinkJournald, QueueSize: -1}, "audit.sinks[0].queue_size: -1"},
		{SinkConfig{Type: SinkSyslog, Address: "udp://h:514", Hostname: "a b"}, "audit.sinks[0].hostname:"},
	} {
		err := Config{FilePath: "a", Sinks: []SinkConfig{tc.sink}}.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.sink, err, tc.want)
		}
	}
	for _, c := range []Config{{FilePath: "a", RefusalRate: -1}, {FilePath: "a", RefusalBurst: -1}, {FilePath: "a", RefusalWindow: duration.Of(time.Millisecond)}} {
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "audit.refusal_") {
			t.Errorf("%+v: %v", c, err)
		}
	}
}

// What a sink received across a rotation and a restart verifies as one stream, to the same last
// hash as the files; the stream may start anywhere in the chain.
func TestForwardedStreamVerifiesAcrossRotationAndRestart(t *testing.T) {
	key, _, pub := testKey(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	var got []string
	for round := range 2 { // the second Open resumes the chain: a restart
		w, ft := openWithFake(t, Config{FilePath: path, SigningKeyPath: key}, nil, openOptions{})
		for i := range 5 {
			if err := w.Append(decision(i, "a.example", "ALLOW")); err != nil {
				t.Fatal(err)
			}
			if i == 2 && round == 0 {
				if err := w.Rotate(); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		got = append(got, ft.lines()...)
	}
	files, _ := Files(path)
	fileRep, err := Verify(pub, files...)
	if err != nil || !fileRep.OK() || len(files) != 2 {
		t.Fatal(err, fileRep.Problem, files)
	}
	stream := filepath.Join(t.TempDir(), "export")
	if err := os.WriteFile(stream, []byte(strings.Join(got, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rep, err := VerifyWith(pub, VerifyOptions{Format: FormatJournal}, stream)
	if err != nil || !rep.OK() || rep.Records != fileRep.Records || rep.LastHash != fileRep.LastHash || !rep.Closed {
		t.Fatalf("stream: %v %+v %v", err, rep, rep.Problem)
	}
	// The stream's second half alone: it starts mid-chain, which a stream may.
	half := filepath.Join(t.TempDir(), "half")
	os.WriteFile(half, []byte(strings.Join(got[len(got)/2:], "\n")+"\n"), 0o600)
	rep, err = VerifyWith(pub, VerifyOptions{Format: FormatJournal}, half)
	if err != nil || !rep.OK() || rep.FirstSeq == 1 || rep.LastHash != fileRep.LastHash {
		t.Fatalf("half stream: %v %+v %v", err, rep, rep.Problem)
	}
	// As a file it must begin with an open record.
	if rep, _ := VerifyWith(pub, VerifyOptions{Format: FormatFile}, half); rep.OK() && !strings.Contains(got[len(got)/2], `"event":"open"`) {
		t.Fatal("a file that starts mid-chain verified")
	}
}
