package audit

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
)

// ProblemKind classifies the first thing wrong with a log.
type ProblemKind string

const (
	ProblemMalformed ProblemKind = "malformed"     // not a well-formed record
	ProblemTruncated ProblemKind = "truncated"     // the file ends inside a line
	ProblemSignature ProblemKind = "bad signature" // altered, inserted, or signed by another key
	ProblemUnsigned  ProblemKind = "unsigned"      // a key was given but the line has no sig
	ProblemAltered   ProblemKind = "altered"       // content no longer matches the chain
	ProblemRemoved   ProblemKind = "removed"       // lines are missing
	ProblemInserted  ProblemKind = "inserted"      // a line that does not belong where it is
	ProblemReordered ProblemKind = "reordered"     // lines out of order
	ProblemMissing   ProblemKind = "missing file"  // a file in the middle of the chain was not given
)

// Problem is the first bad line: File and Line (1-based) locate it.
type Problem struct {
	File   string
	Line   int
	Seq    uint64 // the line's seq when it has one
	Kind   ProblemKind
	Detail string
}

func (p *Problem) Error() string {
	return fmt.Sprintf("%s:%d: %s: %s", p.File, p.Line, p.Kind, p.Detail)
}

// Report is what Verify found. Problem is nil when every line checked out.
type Report struct {
	Files    []FileSummary // in chain order
	Records  int
	FirstSeq uint64
	LastSeq  uint64
	LastHash string // hashBody of the last line: compare with the seq/hash the sidecar logs
	// Signed is true when a public key was given and every line's signature verified.
	Signed  bool
	Closed  bool // the last line is a close record
	Problem *Problem
	Notes   []string
	// Format is how the inputs were read; Skipped counts their lines that held no record (or
	// one from another host or program).
	Format  Format
	Skipped int
}

// OK reports whether no problem was found.
func (r *Report) OK() bool { return r.Problem == nil }

// FileSummary is one verified file.
type FileSummary struct {
	Path     string
	Lines    int
	FirstSeq uint64
	LastSeq  uint64
}

// record is what verification reads of a line.
type record struct {
	Seq      uint64 `json:"seq"`
	PrevHash string `json:"prev_hash"`
	Kind     Kind   `json:"kind"`
	Log      *struct {
		Event        LogEvent `json:"event"`
		PreviousFile string   `json:"previous_file"`
		KeyID        string   `json:"key_id"`
	} `json:"log"`
	Sig string `json:"sig"`
}

// VerifyOptions say what Verify reads.
type VerifyOptions struct {
	// Format is how the inputs carry the records; "" is FormatFile.
	Format Format
	// Host and App keep only the lines a syslog or journal JSON export says came from this host
	// (HOSTNAME, _HOSTNAME) and program (APP-NAME or TAG, SYSLOG_IDENTIFIER): one chain when a
	// receiver holds several sidecars' records. "" keeps all.
	Host, App string
}

// Verify checks the signatures (when pub is not nil) and the chain across files, given in any
// order: they are put in chain order by the seq of their first line. It stops at the first problem
// and says where it is. The error is for files that cannot be read; what is wrong with their
// content is in the Report.
func Verify(pub crypto.PublicKey, files ...string) (*Report, error) {
	return VerifyWith(pub, VerifyOptions{Format: FormatFile}, files...)
}

// VerifyWith is Verify on inputs in any Format. An exported stream (journal, syslog) is checked
// exactly like the files, except that lines without a record are skipped and the stream may begin
// anywhere in the chain (a note says where): lines missing, altered or reordered in it are found
// and named by their line in the input.
func VerifyWith(pub crypto.PublicKey, opt VerifyOptions, files ...string) (*Report, error) {
	var ecPub *ecdsa.PublicKey
	if pub != nil {
		k, ok := pub.(*ecdsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("verifying audit log: %w: %T, want *ecdsa.PublicKey", ErrKey, pub)
		}
		ecPub = k
	}
	if len(files) == 0 {
		return nil, errors.New("verifying audit log: no files")
	}
	format, err := resolveFormat(opt.Format, files[0])
	if err != nil {
		return nil, fmt.Errorf("verifying audit log: %w", err)
	}
	if format == FormatFile && (opt.Host != "" || opt.App != "") {
		return nil, errors.New("verifying audit log: a host or app filter applies to journal and syslog exports, not to the log files")
	}
	v := &verifier{pub: ecPub, report: &Report{Format: format}, format: format, opt: opt, sources: map[string]int{}}
	if pub != nil {
		v.wantKeyID = KeyID(pub)
	}
	ordered, err := v.order(files)
	if err != nil || v.report.Problem != nil {
		return v.report, err
	}
	v.files = ordered
	for i := range ordered {
		if err := v.file(i); err != nil {
			return v.report, err
		}
		if v.report.Problem != nil {
			v.hintSources()
			return v.report, nil
		}
	}
	r := v.report
	if r.Records == 0 {
		return r, errors.New("verifying audit log: no audit record in the input")
	}
	r.Signed = ecPub != nil
	if ecPub == nil {
		r.Notes = append(r.Notes, "signatures not checked: no public key given (chain only)")
	}
	if r.Skipped > 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("%d line(s) without an audit record skipped (other messages, or other hosts and programs)", r.Skipped))
	}
	if r.FirstSeq > 1 {
		note := fmt.Sprintf("the chain starts at seq %d: earlier lines were not given", r.FirstSeq)
		if v.firstPrevFile != "" {
			note += fmt.Sprintf(" (they end in %s)", v.firstPrevFile)
		}
		r.Notes = append(r.Notes, note)
	}
	if !r.Closed {
		r.Notes = append(r.Notes, "the last line is not a close record: the log is still being written, "+
			"its writer stopped without closing, or lines were cut from its end; compare the last seq and hash with the sidecar's log")
	}
	return r, nil
}

// hintSources adds to a problem found in a stream that holds records from several sources.
func (v *verifier) hintSources() {
	if len(v.sources) < 2 {
		return
	}
	var names []string
	for s, n := range v.sources {
		names = append(names, fmt.Sprintf("%s (%d)", s, n))
	}
	sort.Strings(names)
	v.report.Problem.Detail += fmt.Sprintf("; the input holds records from %d sources (host/app: %s): select one chain with --host and --app",
		len(names), strings.Join(names, ", "))
}

type verifier struct {
	pub       *ecdsa.PublicKey
	wantKeyID string
	report    *Report
	files     []string
	format    Format
	opt       VerifyOptions
	sources   map[string]int // host/app → records, for streams

	recsInFile int // records seen so far in the current file

	have          bool // a previous line exists
	prevSeq       uint64
	prevHash      string
	prevFile      string
	prevLine      int
	keyID         string // key_id of the last open/resume record
	keyIDLine     string // where it was declared
	firstPrevFile string
}

func (v *verifier) fail(file string, line int, seq uint64, kind ProblemKind, format string, a ...any) {
	v.report.Problem = &Problem{File: file, Line: line, Seq: seq, Kind: kind, Detail: fmt.Sprintf(format, a...)}
}

// order sorts files by the seq of their first record; files without one are dropped with a note.
func (v *verifier) order(files []string) ([]string, error) {
	type keyed struct {
		path string
		seq  uint64
	}
	var ks []keyed
	seen := map[string]string{}
	for _, f := range files {
		abs, err := filepath.Abs(f)
		if err != nil {
			return nil, err
		}
		if other, dup := seen[abs]; dup {
			return nil, fmt.Errorf("verifying audit log: %s given twice (as %s)", f, other)
		}
		seen[abs] = f
		rec, n, complete, err := v.firstRecord(f)
		if err != nil {
			return nil, fmt.Errorf("verifying audit log: %w", err)
		}
		if rec == nil {
			v.report.Notes = append(v.report.Notes, fmt.Sprintf("%s holds no audit record", f))
			continue
		}
		var r record
		if jerr := json.Unmarshal(rec, &r); jerr != nil || r.Seq == 0 {
			if !complete {
				v.fail(f, n, 0, ProblemTruncated, "the file ends inside its first record")
			} else {
				v.fail(f, n, 0, ProblemMalformed, "not an audit record, so the file cannot be put in chain order")
			}
			return nil, nil
		}
		ks = append(ks, keyed{f, r.Seq})
	}
	sort.SliceStable(ks, func(i, j int) bool { return ks[i].seq < ks[j].seq })
	out := make([]string, len(ks))
	for i, k := range ks {
		if i > 0 && ks[i-1].seq == k.seq {
			v.fail(k.path, 1, k.seq, ProblemInserted, "%s also starts at seq %d: two copies of one file, or a forged file", ks[i-1].path, k.seq)
			return nil, nil
		}
		out[i] = k.path
	}
	if len(out) == 0 {
		return nil, errors.New("verifying audit log: no audit record in the input")
	}
	return out, nil
}

// record returns what raw carries in this input (rec nil: no record, or one filtered out).
func (v *verifier) record(raw []byte) framed {
	fr := unframe(v.format, raw)
	if fr.rec == nil || (v.opt.Host != "" && fr.host != v.opt.Host) || (v.opt.App != "" && fr.app != v.opt.App) {
		return framed{}
	}
	return fr
}

// firstRecord returns the first record of path and its line number; complete is false when it is
// the end of a file without a newline.
func (v *verifier) firstRecord(path string) (rec []byte, line int, complete bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, false, err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	for n := 1; ; n++ {
		raw, err := br.ReadBytes('\n')
		eof := errors.Is(err, io.EOF)
		if err != nil && !eof {
			return nil, 0, false, fmt.Errorf("reading %s: %w", path, err)
		}
		if eof && len(raw) == 0 {
			return nil, 0, false, nil
		}
		if fr := v.record(bytes.TrimSuffix(raw, []byte("\n"))); fr.rec != nil {
			return fr.rec, n, !eof, nil
		}
		if eof {
			return nil, 0, false, nil
		}
	}
}

// file checks every line of v.files[fi]. Lines are read in chunks whose signatures are checked on
// every CPU; the chain is then checked in order.
func (v *verifier) file(fi int) error {
	path := v.files[fi]
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("verifying audit log: %w", err)
	}
	defer f.Close()
	sum := FileSummary{Path: path}
	br := bufio.NewReaderSize(f, 256<<10)
	n := 0
	v.recsInFile = 0
	for {
		chunk, torn, err := readChunk(br, 1024)
		if err != nil {
			return fmt.Errorf("verifying audit log: reading %s: %w", path, err)
		}
		recs, lineNos := chunk[:0], make([]int, 0, len(chunk))
		for _, raw := range chunk {
			n++
			if fr := v.record(raw); fr.rec != nil {
				recs = append(recs, fr.rec)
				lineNos = append(lineNos, n)
				if v.format != FormatFile {
					v.sources[nilToDash(fr.host)+"/"+nilToDash(fr.app)]++
				}
			} else {
				v.report.Skipped++
			}
		}
		sigOK := v.checkSigs(recs)
		for i, line := range recs {
			if !v.line(fi, lineNos[i], line, sigOK[i]) {
				return nil
			}
			if sum.FirstSeq == 0 {
				sum.FirstSeq = v.prevSeq
			}
			sum.LastSeq = v.prevSeq
		}
		sum.Lines = n
		if torn != nil && (v.format == FormatFile || v.record(torn).rec != nil) {
			v.fail(path, n+1, 0, ProblemTruncated, "the file ends inside this line (%d bytes without a newline): cut short or a torn write", len(torn))
			return nil
		}
		if len(chunk) == 0 {
			break
		}
	}
	v.report.Files = append(v.report.Files, sum)
	return nil
}

// readChunk reads up to max complete lines (without their "\n"); torn is a last line without a
// newline at the end of the file.
func readChunk(br *bufio.Reader, max int) (lines [][]byte, torn []byte, err error) {
	for len(lines) < max {
		raw, err := br.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			if len(raw) > 0 {
				torn = raw
			}
			return lines, torn, nil
		}
		if err != nil {
			return nil, nil, err
		}
		lines = append(lines, raw[:len(raw)-1])
	}
	return lines, nil, nil
}

// checkSigs verifies the signatures of lines in parallel; without a key every entry is true.
func (v *verifier) checkSigs(lines [][]byte) []bool {
	ok := make([]bool, len(lines))
	if v.pub == nil {
		for i := range ok {
			ok[i] = true
		}
		return ok
	}
	workers := max(1, min(runtime.GOMAXPROCS(0), len(lines)/8))
	var wg sync.WaitGroup
	for k := range workers {
		wg.Go(func() {
			for i := k; i < len(lines); i += workers {
				body, sig := splitLine(lines[i])
				der, err := base64.StdEncoding.Strict().DecodeString(sig) // Strict: one encoding per signature
				digest := sha256.Sum256(body)
				ok[i] = sig != "" && err == nil && ecdsa.VerifyASN1(v.pub, digest[:], der)
			}
		})
	}
	wg.Wait()
	return ok
}

// line checks one line; false means a problem was recorded.
func (v *verifier) line(fi, n int, line []byte, sigOK bool) bool {
	path := v.files[fi]
	if !bytes.HasPrefix(line, recordStart) {
		v.fail(path, n, 0, ProblemMalformed, "not a record as the writer writes them (every record begins with %s)", recordStart)
		return false
	}
	var r record
	if err := json.Unmarshal(line, &r); err != nil {
		v.fail(path, n, 0, ProblemMalformed, "not JSON: %v", err)
		return false
	}
	if r.Seq == 0 {
		v.fail(path, n, 0, ProblemMalformed, "no seq")
		return false
	}
	body, sig := splitLine(line)
	if r.Sig != sig {
		v.fail(path, n, r.Seq, ProblemMalformed, "the sig member is not the last member of the line")
		return false
	}
	if r.Log != nil && (r.Log.Event == LogOpen || r.Log.Event == LogResume) {
		v.keyID, v.keyIDLine = r.Log.KeyID, fmt.Sprintf("%s:%d", path, n)
	}

	// Signature first: an altered or inserted line is named as itself.
	if v.pub != nil {
		if sig == "" {
			v.fail(path, n, r.Seq, ProblemUnsigned, "no sig, but a public key was given (written without a signing key?)")
			return false
		}
		if !sigOK {
			detail := "the signature does not verify: the line was altered, or inserted by someone without the key"
			if v.keyID != "" && v.keyID != v.wantKeyID {
				detail = fmt.Sprintf("the signature does not verify with the given key (%.16s…); the record at %s says the log is signed by key %.16s…",
					v.wantKeyID, v.keyIDLine, v.keyID)
			}
			v.fail(path, n, r.Seq, ProblemSignature, "%s", detail)
			return false
		}
	}

	isOpen := r.Kind == KindLog && r.Log != nil && r.Log.Event == LogOpen
	stream := v.format != FormatFile
	first := v.recsInFile == 0
	v.recsInFile++
	if !v.have {
		if !isOpen && (!stream || r.Seq == 1) {
			v.fail(path, n, r.Seq, ProblemRemoved, "the first file does not begin with an open record: lines were cut from its head")
			return false
		}
		if r.Seq == 1 && r.PrevHash != GenesisHash {
			v.fail(path, n, r.Seq, ProblemAltered, "seq 1 must carry the genesis prev_hash")
			return false
		}
		v.report.FirstSeq = r.Seq
		if isOpen {
			v.firstPrevFile = r.Log.PreviousFile
		}
		return v.accept(fi, n, r, body)
	}

	want := v.prevSeq + 1
	switch {
	case r.Seq > want && first:
		// A gap between files: the previous file lost its end, or a whole file is missing.
		prevBase := filepath.Base(v.prevFile)
		if isOpen && r.Log.PreviousFile != "" && r.Log.PreviousFile != prevBase {
			v.fail(path, n, r.Seq, ProblemMissing, "seq %d..%d are missing: this file continues %s, which was not given", want, r.Seq-1, r.Log.PreviousFile)
		} else {
			v.fail(v.prevFile, v.prevLine+1, want, ProblemRemoved, "the file ends at seq %d but %s continues from seq %d: its last %d line(s) were removed",
				v.prevSeq, path, r.Seq-1, r.Seq-want)
		}
		return false
	case r.Seq > want:
		if at := v.find(fi, n, want); at != "" {
			v.fail(path, n, r.Seq, ProblemReordered, "seq %d where %d was expected; seq %d is at %s", r.Seq, want, want, at)
		} else {
			v.fail(path, n, r.Seq, ProblemRemoved, "seq %d follows %d: %d line(s) removed before this line", r.Seq, v.prevSeq, r.Seq-want)
		}
		return false
	case r.Seq < want:
		v.fail(path, n, r.Seq, ProblemInserted, "seq %d where %d was expected: a duplicated or inserted line", r.Seq, want)
		return false
	}
	if r.PrevHash != v.prevHash {
		if v.pub != nil {
			// The previous line's signature verified, so it is authentic: this one is out of place.
			v.fail(path, n, r.Seq, ProblemInserted, "prev_hash does not match the previous line: a signed line from another chain")
		} else if next, ok := v.lineAfter(fi, n); ok && !bytes.Contains(next, []byte(`"prev_hash":"`+hashBody(body)+`"`)) {
			// The line after this one does not chain to it either: this line was changed.
			v.fail(path, n, r.Seq, ProblemAltered, "it does not chain to the previous line, nor the next line to it")
		} else {
			v.fail(v.prevFile, v.prevLine, v.prevSeq, ProblemAltered, "its content does not match the prev_hash of the next line (%s:%d)", path, n)
		}
		return false
	}
	if first && !isOpen && !stream {
		v.fail(path, n, r.Seq, ProblemMalformed, "the file does not begin with an open record")
		return false
	}
	return v.accept(fi, n, r, body)
}

func (v *verifier) accept(fi, n int, r record, body []byte) bool {
	v.have = true
	v.prevSeq, v.prevHash, v.prevFile, v.prevLine = r.Seq, hashBody(body), v.files[fi], n
	v.report.Records++
	v.report.LastSeq, v.report.LastHash = r.Seq, v.prevHash
	v.report.Closed = r.Kind == KindLog && r.Log != nil && r.Log.Event == LogClose
	return true
}

// lineAfter returns the line after line n of file fi, in that file or the next.
func (v *verifier) lineAfter(fi, n int) (next []byte, ok bool) {
	v.scanAfter(fi, n, func(_ string, _ int, raw []byte) bool {
		next, ok = raw, true
		return true
	})
	return next, ok
}

// find looks for a line with seq after line n of file fi, and returns where it is ("" if nowhere):
// it tells a reordered line from a removed one.
func (v *verifier) find(fi, n int, seq uint64) (at string) {
	v.scanAfter(fi, n, func(file string, k int, raw []byte) bool {
		var r record
		if json.Unmarshal(raw, &r) == nil && r.Seq == seq {
			at = fmt.Sprintf("%s:%d", file, k)
			return true
		}
		return false
	})
	return at
}

func nilToDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// scanAfter calls fn for each record on a complete line after line n of file fi, through the remaining files,
// until fn returns true. It runs only after a problem was found, so it rereads the files.
func (v *verifier) scanAfter(fi, n int, fn func(file string, line int, raw []byte) bool) {
	for i := fi; i < len(v.files); i++ {
		f, err := os.Open(v.files[i])
		if err != nil {
			return
		}
		br := bufio.NewReaderSize(f, 256<<10)
		for k := 1; ; k++ {
			raw, err := br.ReadBytes('\n')
			if err != nil {
				break
			}
			if i > fi || k > n {
				if fr := v.record(raw[:len(raw)-1]); fr.rec != nil && fn(v.files[i], k, fr.rec) {
					f.Close()
					return
				}
			}
		}
		f.Close()
	}
}
