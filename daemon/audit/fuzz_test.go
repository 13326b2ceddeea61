package audit

import (
	"bytes"
	"crypto/ecdsa"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var fuzzFormats = []Format{FormatFile, FormatJournal, FormatSyslog, FormatAuto}

// FuzzVerify feeds arbitrary input to the verifier in every format: it must not panic, and when it
// accepts the input, what it reports must be consistent.
func FuzzVerify(f *testing.F) {
	f.Add([]byte(`{"id":"a","seq":1,"time":"2026-01-01T00:00:00Z","prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","kind":"log","log":{"event":"open"}}`+"\n"), uint8(0))
	f.Add([]byte("<86>1 2026-01-01T00:00:00Z h firma 1 log - {\"id\":\"a\",\"seq\":1}\n"), uint8(2))
	f.Add([]byte(`{"MESSAGE":"{\"id\":\"a\",\"seq\":1}","_HOSTNAME":"h"}`+"\n"), uint8(1))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte, format uint8) {
		path := filepath.Join(dir, "in")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		fm := fuzzFormats[int(format)%len(fuzzFormats)]
		rep, err := VerifyWith(nil, VerifyOptions{Format: fm}, path)
		if err != nil || !rep.OK() {
			return
		}
		if rep.Records == 0 || rep.LastSeq < rep.FirstSeq || rep.LastSeq-rep.FirstSeq+1 != uint64(rep.Records) || len(rep.LastHash) != 64 {
			t.Fatalf("accepted with an inconsistent report: %+v", rep)
		}
		if rep.Format == FormatFile {
			// What verifies as a file verifies as a journal export, to the same end.
			again, err := VerifyWith(nil, VerifyOptions{Format: FormatJournal}, path)
			if err != nil || !again.OK() || again.LastHash != rep.LastHash || again.Records != rep.Records {
				t.Fatalf("file OK (%d records) but journal export not: %v %+v", rep.Records, err, again)
			}
		}
	})
}

var (
	fuzzOnce sync.Once
	fuzzLog  []byte
	fuzzPub  *ecdsa.PublicKey
)

// FuzzVerifyTamper changes one byte of a signed log, or cuts it: verify must never accept a log
// that is not byte for byte the one written.
func FuzzVerifyTamper(f *testing.F) {
	f.Add(uint32(10), byte('x'), false)
	f.Add(uint32(200), byte('\n'), false)
	f.Add(uint32(500), byte(0), true)
	dir := f.TempDir()
	fuzzOnce.Do(func() {
		key, _, pub := testKey(f)
		path := filepath.Join(f.TempDir(), "audit.jsonl")
		w := openTest(f, Config{FilePath: path, SigningKeyPath: key})
		for i, host := range []string{"api.anthropic.com", "paste.rs", "example.com"} {
			ev := decision(i, host, "ALLOW")
			if err := w.Append(ev); err != nil {
				f.Fatal(err)
			}
			w.Append(&Event{Kind: KindCompletion, DecisionID: ev.ID, Result: &Result{BytesUp: 1}})
		}
		w.Close()
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		fuzzLog, fuzzPub = data, pub
	})
	f.Fuzz(func(t *testing.T, pos uint32, b byte, cut bool) {
		data := bytes.Clone(fuzzLog)
		i := int(pos % uint32(len(data)))
		if cut {
			data = data[:i]
		} else {
			data[i] = b
		}
		if bytes.Equal(data, fuzzLog) {
			return
		}
		for _, fm := range fuzzFormats {
			path := filepath.Join(dir, "tampered")
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			rep, err := VerifyWith(fuzzPub, VerifyOptions{Format: fm}, path)
			if err != nil || !rep.OK() {
				continue
			}
			if cut && (len(data) == 0 || data[len(data)-1] == '\n') {
				// Cut at the end of a line: a prefix of the chain, which only the missing close
				// record (and the sidecar's last seq and hash) can tell.
				if rep.Closed {
					t.Fatalf("a log cut after %d bytes reads as closed", len(data))
				}
				continue
			}
			// A stream may legitimately end early or skip a line that is no longer a record; the
			// file format never may. A stream that verifies must still be a prefix of the chain:
			// every record it accepted is byte for byte one that was written.
			if fm == FormatFile || (fm == FormatAuto && rep.Format == FormatFile) {
				t.Fatalf("tampered log verified as a file: byte %d → %q (cut %v)", i, b, cut)
			}
			for _, line := range strings.Split(string(data), "\n") {
				fr := unframe(rep.Format, []byte(line))
				if fr.rec != nil && !bytes.Contains(fuzzLog, append(fr.rec, '\n')) {
					t.Fatalf("accepted an altered record in a %s stream: %q", rep.Format, fr.rec)
				}
			}
		}
	})
}
