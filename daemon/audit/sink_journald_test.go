package audit

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	_ "unsafe" // go:linkname

	_ "github.com/coreos/go-systemd/v22/journal" // journalSocket below
)

// journalSocket is go-systemd's socket path, a build-time variable: the test points it at a
// socket of its own. The sidecar always uses /run/systemd/journal/socket (the e2e test runs a real
// journald in a mount namespace for that).
//
//go:linkname journalSocket github.com/coreos/go-systemd/v22/journal.journalSocket
var journalSocket string

// parseJournal decodes one native-protocol entry: "NAME=value\n", or for values that may hold a
// newline "NAME\n" + little-endian uint64 length + value + "\n".
func parseJournal(b []byte) (map[string]string, error) {
	out := map[string]string{}
	for len(b) > 0 {
		nl := bytes.IndexByte(b, '\n')
		if nl < 0 {
			return nil, fmt.Errorf("field without a newline: %q", b)
		}
		line := b[:nl]
		if eq := bytes.IndexByte(line, '='); eq >= 0 {
			out[string(line[:eq])] = string(line[eq+1:])
			b = b[nl+1:]
			continue
		}
		name := string(line)
		b = b[nl+1:]
		if len(b) < 8 {
			return nil, fmt.Errorf("%s: binary field without a length", name)
		}
		n := binary.LittleEndian.Uint64(b[:8])
		b = b[8:]
		if uint64(len(b)) < n+1 || b[n] != '\n' {
			return nil, fmt.Errorf("%s: binary field of %d bytes does not end in a newline", name, n)
		}
		out[name] = string(b[:n])
		out[name+"/binary"] = "yes"
		b = b[n+1:]
	}
	return out, nil
}

// journalListener receives entries on a unixgram socket, including those passed as a file
// descriptor (the protocol's form for entries too large for a datagram).
func journalListener(t *testing.T, path string) (entries func() []map[string]string) {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadBuffer(4 << 20)
	t.Cleanup(func() { c.Close() })
	ch := make(chan map[string]string, 1000)
	go func() {
		buf, oob := make([]byte, 1<<20), make([]byte, 1024)
		for {
			n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
			if err != nil {
				close(ch)
				return
			}
			data := slices.Clone(buf[:n])
			if n == 0 && oobn > 0 {
				msgs, _ := syscall.ParseSocketControlMessage(oob[:oobn])
				fds, _ := syscall.ParseUnixRights(&msgs[0])
				f := os.NewFile(uintptr(fds[0]), "memfd")
				f.Seek(0, 0)
				var bb bytes.Buffer
				bb.ReadFrom(f)
				f.Close()
				data = bb.Bytes()
			}
			e, err := parseJournal(data)
			if err != nil {
				e = map[string]string{"PARSE_ERROR": err.Error()}
			}
			ch <- e
		}
	}()
	var got []map[string]string
	return func() []map[string]string {
		for {
			select {
			case e, ok := <-ch:
				if !ok {
					return got
				}
				got = append(got, e)
			default:
				return got
			}
		}
	}
}

// The journald sink sends every line as MESSAGE with the FIRMA_* fields, in the native protocol
// (binary-safe form where a value holds a newline, a passed descriptor when too large for a
// datagram), and each field carries what the line says.
func TestJournaldSinkNativeProtocol(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "journal.socket")
	entries := journalListener(t, sock)
	old := journalSocket
	journalSocket = sock
	t.Cleanup(func() { journalSocket = old })

	path := filepath.Join(t.TempDir(), "audit.jsonl")
	key, _, _ := testKey(t)
	log, _ := testLogger(t)
	w, err := Open(Config{FilePath: path, SigningKeyPath: key, Sinks: []SinkConfig{{Type: SinkJournald, AppName: "firma-test"}}}, log)
	if err != nil {
		t.Fatal(err)
	}
	allow := decision(1, "api.anthropic.com", "ALLOW")
	deny := decision(2, "evil\nhost", "DENY") // a newline forces the binary-safe form
	big := decision(3, "big.example", "ALLOW")
	big.Envelope.Intent.Resource.Path = "/" + strings.Repeat("p", 300<<10) // over a datagram's limit
	for _, ev := range []*Event{allow, deny, big} {
		if err := w.Append(ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Append(&Event{Kind: KindCompletion, DecisionID: allow.ID, Result: &Result{BytesUp: 1}}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	lines := fileLines(t, path)
	var got []map[string]string
	waitFor(t, "every entry", func() bool { got = entries(); return len(got) >= len(lines) })
	if len(got) != len(lines) {
		t.Fatalf("%d entries for %d lines", len(got), len(lines))
	}
	for i, line := range lines {
		var ev Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatal(err)
		}
		want := map[string]string{
			"MESSAGE": line, "MESSAGE_ID": JournalMessageID, "SYSLOG_IDENTIFIER": "firma-test", "SYSLOG_FACILITY": "10",
			"PRIORITY": "6", "FIRMA_KIND": string(ev.Kind), "FIRMA_SEQ": strconv.FormatUint(ev.Seq, 10), "FIRMA_EVENT_ID": ev.ID,
		}
		if e := ev.Envelope; e != nil {
			want["FIRMA_AGENT_ID"], want["FIRMA_SESSION_ID"], want["FIRMA_PID"] = e.Agent.AgentID, e.Agent.SessionID, strconv.Itoa(e.Agent.PID)
			want["FIRMA_EXE"], want["FIRMA_HOST"], want["FIRMA_MODE"] = e.Agent.Exe, e.Intent.Resource.Host, e.Transport.Mode
			want["FIRMA_ACTION_CLASS"] = *e.Intent.ActionClass
		}
		if ev.Decision != nil {
			want["FIRMA_OUTCOME"] = ev.Decision.Outcome
			if ev.Decision.Outcome == "DENY" {
				want["PRIORITY"] = "4"
			}
		}
		if ev.DecisionID != "" {
			want["FIRMA_DECISION_ID"] = ev.DecisionID
		}
		if ev.Log != nil {
			want["FIRMA_LOG_EVENT"] = string(ev.Log.Event)
		}
		e := got[i]
		binaryHost := e["FIRMA_HOST/binary"] == "yes"
		delete(e, "FIRMA_HOST/binary")
		delete(e, "MESSAGE/binary")
		if !maps.Equal(e, want) {
			keys := maps.Clone(want)
			maps.Copy(keys, e)
			var diff []string
			for _, k := range slices.Sorted(maps.Keys(keys)) {
				if e[k] != want[k] {
					diff = append(diff, fmt.Sprintf("%s: got %.80q want %.80q", k, e[k], want[k]))
				}
			}
			t.Fatalf("entry %d (seq %d):\n%s", i, ev.Seq, strings.Join(diff, "\n"))
		}
		if (ev.Envelope != nil && strings.Contains(ev.Envelope.Intent.Resource.Host, "\n")) != binaryHost {
			t.Errorf("entry %d: FIRMA_HOST binary form %v", i, binaryHost)
		}
	}
	if st := w.Stats().Sinks[0]; st.Sent != uint64(len(lines)) || st.Dropped != 0 {
		t.Fatalf("stats %+v", st)
	}
}
