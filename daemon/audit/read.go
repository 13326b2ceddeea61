package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
)

// Record is one audit record as Read found it: the line it is on, and what it says.
type Record struct {
	File  string
	Line  int // 1-based, in File
	Event *Event
}

// Where is "file:line", for messages.
func (r Record) Where() string { return fmt.Sprintf("%s:%d", r.File, r.Line) }

// Read calls fn with every record of files, in chain order: the files are put in order by the seq of
// their first record, as Verify orders them, and each is read from its first line to its last. It
// reads what VerifyWith reads — the log files (the live one and its rotations), or a journal or
// syslog export, FormatAuto choosing from the first file — with the same host and app filter. A
// torn tail saved beside the log (IsTornSave) is passed over. It does not check the chain or the
// signatures (Verify does), so a caller that must trust the records verifies them first.
//
// In a log file every line must be a record: one that is not is an error naming file and line.
// In an export, lines without a record are skipped. A last line without a newline is left out: it
// is a record still being written.
func Read(opt VerifyOptions, files []string, fn func(Record) error) error {
	var chain []string
	for _, f := range files {
		if !IsTornSave(f) {
			chain = append(chain, f)
		}
	}
	if len(chain) == 0 {
		return errors.New("reading audit log: no files")
	}
	format, err := resolveFormat(opt.Format, chain[0])
	if err != nil {
		return fmt.Errorf("reading audit log: %w", err)
	}
	v := &verifier{report: &Report{Format: format}, format: format, opt: opt, sources: map[string]int{}}
	ordered, err := v.order(chain)
	if err != nil {
		return err
	}
	if p := v.report.Problem; p != nil {
		return fmt.Errorf("reading audit log: %w", p)
	}
	for _, path := range ordered {
		if err := v.read(path, fn); err != nil {
			return err
		}
	}
	return nil
}

// read passes the records of one file to fn.
func (v *verifier) read(path string, fn func(Record) error) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("reading audit log: %w", err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 256<<10)
	for n := 1; ; n++ {
		raw, err := br.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			return nil // an incomplete last line (or none): still being written
		}
		if err != nil {
			return fmt.Errorf("reading audit log: %s: %w", path, err)
		}
		fr := v.record(bytes.TrimSuffix(raw, []byte("\n")))
		if fr.rec == nil {
			continue
		}
		var ev Event
		if err := json.Unmarshal(fr.rec, &ev); err != nil || ev.Seq == 0 {
			if v.format != FormatFile && err != nil {
				continue // a message that only looks like a record
			}
			return fmt.Errorf("reading audit log: %s:%d: not an audit record", path, n)
		}
		if err := fn(Record{File: path, Line: n, Event: &ev}); err != nil {
			return err
		}
	}
}
