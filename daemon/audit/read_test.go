package audit

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// readAll collects what Read passes on: "seq kind host" per record, and where each came from.
func readAll(t *testing.T, opt VerifyOptions, files ...string) ([]string, []Record, error) {
	t.Helper()
	var got []string
	var recs []Record
	err := Read(opt, files, func(r Record) error {
		host := ""
		if r.Event.Envelope != nil {
			host = r.Event.Envelope.Intent.Resource.Host
		}
		got = append(got, fmt.Sprintf("%d %s %s", r.Event.Seq, r.Event.Kind, host))
		recs = append(recs, r)
		return nil
	})
	return got, recs, err
}

// A rotated log, given in any order, is read in chain order; a torn save beside it is passed over.
func TestReadRotatedFilesInChainOrder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	w := openTest(t, Config{FilePath: path})
	for i := range 6 {
		if err := w.Append(decision(i, fmt.Sprintf("h%d.test", i), "ALLOW")); err != nil {
			t.Fatal(err)
		}
		if i == 2 {
			if err := w.Rotate(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	files, err := Files(path)
	if err != nil || len(files) != 2 {
		t.Fatalf("files %v, %v", files, err)
	}
	torn := path + ".torn-123"
	if err := os.WriteFile(torn, []byte(`{"id":"x","seq":3,"kind":"decision"`), 0o600); err != nil {
		t.Fatal(err)
	}
	slices.Reverse(files)
	got, recs, err := readAll(t, VerifyOptions{Format: FormatAuto}, append(files, torn)...)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"1 log ", "2 decision h0.test:443", "3 decision h1.test:443", "4 decision h2.test:443",
		"5 log ", "6 decision h3.test:443", "7 decision h4.test:443", "8 decision h5.test:443", "9 log "}
	if !slices.Equal(got, want) {
		t.Errorf("read\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if recs[1].Where() != files[1]+":2" {
		t.Errorf("the first decision is at %s, want %s:2", recs[1].Where(), files[1])
	}
}

// The live file's last line may still be being written: it is left out. A line of a log file that
// is not a record is an error naming the file and the line.
func TestReadTornTailAndBadLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	w := openTest(t, Config{FilePath: path})
	for i := range 2 {
		if err := w.Append(decision(i, "a.test", "DENY")); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, path)
	writeLines(t, path, append(slices.Clone(lines), `{"id":"01","seq":5,"kind":"deci`))
	got, _, err := readAll(t, VerifyOptions{})
	if err == nil {
		t.Fatal("no files: no error")
	}
	if got, _, err = readAll(t, VerifyOptions{}, path); err != nil || len(got) != len(lines) {
		t.Errorf("with a torn tail: %v, %v", got, err)
	}
	writeLines(t, path, append(slices.Clone(lines[:2]), "not json\n", lines[2]))
	if _, _, err = readAll(t, VerifyOptions{}, path); err == nil || !strings.Contains(err.Error(), path+":3: not an audit record") {
		t.Errorf("a bad line: %v", err)
	}
}

// An export (journalctl -o short, syslog) is read like the files: other messages are skipped, and
// the host filter keeps one sidecar's records.
func TestReadExports(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	w := openTest(t, Config{FilePath: path})
	if err := w.Append(decision(0, "a.test", "ALLOW")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	var export []string
	for i, l := range readLines(t, path) {
		export = append(export, "Dec 02 05:34:18 host1 firma[42]: "+l)
		if i == 0 {
			export = append(export, "Dec 02 05:34:18 host1 systemd[1]: Started something.\n",
				"Dec 02 05:34:18 host2 firma[43]: "+strings.Replace(l, `"seq":1`, `"seq":7`, 1))
		}
	}
	exp := filepath.Join(t.TempDir(), "journal.txt")
	writeLines(t, exp, export)
	got, _, err := readAll(t, VerifyOptions{Format: FormatAuto, Host: "host1"}, exp)
	if want := []string{"1 log ", "2 decision a.test:443", "3 log "}; err != nil || !slices.Equal(got, want) {
		t.Errorf("journal export: %v, %v; want %v", got, err, want)
	}
	if _, _, err := readAll(t, VerifyOptions{Format: "xml"}, exp); err == nil {
		t.Error("unknown format accepted")
	}
}

// BenchmarkRead: reading and decoding one record of a log file.
func BenchmarkRead(b *testing.B) {
	path := filepath.Join(b.TempDir(), "audit.jsonl")
	log, _ := testLogger(b)
	w, err := Open(Config{FilePath: path}, log)
	if err != nil {
		b.Fatal(err)
	}
	const n = 20_000
	for i := range n {
		ev := decision(i, "api.example.com", "ALLOW")
		ev.Envelope.Intent.Resource.Path = fmt.Sprintf("/v1/items/%d", i)
		if err := w.Append(ev); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	records := 0
	for b.Loop() {
		if err := Read(VerifyOptions{}, []string{path}, func(Record) error { records++; return nil }); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(records), "ns/record")
}
