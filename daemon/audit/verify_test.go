package audit

import (
	"crypto/ecdsa"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tamperLog writes a closed, signed log of 10 lines: open, 8 decisions, close.
func tamperLog(t *testing.T) (path string, pub *ecdsa.PublicKey, lines []string) {
	t.Helper()
	key, _, pub := testKey(t)
	path = filepath.Join(t.TempDir(), "audit.jsonl")
	w := openTest(t, Config{FilePath: path, SigningKeyPath: key})
	for i := range 8 {
		if err := w.Append(decision(i, "paste.rs", "DENY")); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	lines = readLines(t, path)
	if len(lines) != 10 {
		t.Fatalf("%d lines", len(lines))
	}
	return path, pub, lines
}

func TestVerifyFindsTampering(t *testing.T) {
	_, _, otherPub := testKey(t)
	cases := []struct {
		name   string
		edit   func(l []string) []string
		other  bool // verify with a different key
		signed expectProblem
		chain  expectProblem // checked without a key
	}{
		{
			name: "edit one field",
			edit: func(l []string) []string {
				l[4] = strings.Replace(l[4], `"outcome":"DENY"`, `"outcome":"ALLOW"`, 1)
				return l
			},
			signed: expectProblem{ProblemSignature, 5},
			chain:  expectProblem{ProblemAltered, 5},
		},
		{
			name: "edit prev_hash",
			edit: func(l []string) []string {
				l[4] = strings.Replace(l[4], `"prev_hash":"`, `"prev_hash":"f`, 1)
				return l
			},
			signed: expectProblem{ProblemSignature, 5},
			chain:  expectProblem{ProblemAltered, 5}, // line 6 does not chain to line 5 either
		},
		{
			name:   "edit the line before last",
			edit:   func(l []string) []string { l[8] = strings.Replace(l[8], `"pid":1007`, `"pid":1`, 1); return l },
			signed: expectProblem{ProblemSignature, 9},
			chain:  expectProblem{ProblemAltered, 9},
		},
		{
			name: "swap signatures",
			edit: func(l []string) []string {
				l[4] = l[4][:strings.Index(l[4], `,"sig"`)] + l[5][strings.Index(l[5], `,"sig"`):]
				return l
			},
			signed: expectProblem{ProblemSignature, 5},
			chain:  expectProblem{}, // the chain does not cover sig
		},
		{
			name:   "delete a line",
			edit:   func(l []string) []string { return append(l[:4:4], l[5:]...) },
			signed: expectProblem{ProblemRemoved, 5},
			chain:  expectProblem{ProblemRemoved, 5},
		},
		{
			name:   "delete the first line",
			edit:   func(l []string) []string { return l[1:] },
			signed: expectProblem{ProblemRemoved, 1},
			chain:  expectProblem{ProblemRemoved, 1},
		},
		{
			name:   "insert a copy of an earlier line",
			edit:   func(l []string) []string { return append(append(l[:4:4], l[2]), l[4:]...) },
			signed: expectProblem{ProblemInserted, 5},
			chain:  expectProblem{ProblemInserted, 5},
		},
		{
			name: "insert a forged line",
			edit: func(l []string) []string {
				forged := strings.Replace(l[4], `"outcome":"DENY"`, `"outcome":"ALLOW"`, 1)
				return append(append(l[:4:4], forged), l[4:]...)
			},
			signed: expectProblem{ProblemSignature, 5},
			// Without a key a well-chained forgery is indistinguishable from the original it displaces.
			chain: expectProblem{ProblemInserted, 6},
		},
		{
			name:   "swap two lines",
			edit:   func(l []string) []string { l[3], l[4] = l[4], l[3]; return l },
			signed: expectProblem{ProblemReordered, 4},
			chain:  expectProblem{ProblemReordered, 4},
		},
		{
			name:   "truncate the tail",
			edit:   func(l []string) []string { l[9] = l[9][:len(l[9])-10]; return l },
			signed: expectProblem{ProblemTruncated, 10},
			chain:  expectProblem{ProblemTruncated, 10},
		},
		{
			name:   "blank line",
			edit:   func(l []string) []string { return append(append(l[:6:6], "\n"), l[6:]...) },
			signed: expectProblem{ProblemMalformed, 7},
			chain:  expectProblem{ProblemMalformed, 7},
		},
		{
			name:   "wrong key",
			edit:   func(l []string) []string { return l },
			other:  true,
			signed: expectProblem{ProblemSignature, 1},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path, pub, lines := tamperLog(t)
			writeLines(t, path, c.edit(lines))
			if c.other {
				pub = otherPub
			}
			rep, err := Verify(pub, path)
			if err != nil {
				t.Fatal(err)
			}
			c.signed.check(t, "with key", rep)
			if c.other {
				if !strings.Contains(rep.Problem.Detail, "signed by key") {
					t.Errorf("wrong-key detail does not name the log's key: %s", rep.Problem.Detail)
				}
				return
			}
			rep, err = Verify(nil, path)
			if err != nil {
				t.Fatal(err)
			}
			c.chain.check(t, "chain only", rep)
		})
	}
}

type expectProblem struct {
	kind ProblemKind
	line int
}

func (e expectProblem) check(t *testing.T, mode string, rep *Report) {
	t.Helper()
	if e.kind == "" {
		if !rep.OK() {
			t.Errorf("%s: unexpected problem %v", mode, rep.Problem)
		}
		return
	}
	if rep.OK() {
		t.Errorf("%s: not detected (want %s at line %d)", mode, e.kind, e.line)
		return
	}
	if rep.Problem.Kind != e.kind || rep.Problem.Line != e.line {
		t.Errorf("%s: got %v, want %s at line %d", mode, rep.Problem, e.kind, e.line)
	}
}

func TestVerifyUnsignedLogWithKey(t *testing.T) {
	_, _, pub := testKey(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	w := openTest(t, Config{FilePath: path})
	w.Append(decision(1, "a", "DENY"))
	w.Close()
	rep, err := Verify(pub, path)
	if err != nil || rep.OK() || rep.Problem.Kind != ProblemUnsigned || rep.Problem.Line != 1 {
		t.Fatalf("%v %v", err, rep.Problem)
	}
}

func TestVerifyOpenClosedAfterTailLinesRemoved(t *testing.T) {
	path, pub, lines := tamperLog(t)
	// Whole lines cut from the end of the last file cannot be told from a log still being written;
	// the report says the close record is missing and gives the last seq and hash to compare.
	writeLines(t, path, lines[:7])
	rep, err := Verify(pub, path)
	if err != nil || !rep.OK() || rep.Closed || rep.LastSeq != 7 || len(rep.LastHash) != 64 {
		t.Fatalf("%v %+v", err, rep)
	}
	if !strings.Contains(strings.Join(rep.Notes, "\n"), "not a close record") {
		t.Fatalf("notes: %q", rep.Notes)
	}
}

func TestVerifyErrors(t *testing.T) {
	if _, err := Verify(nil); err == nil {
		t.Fatal("no files: no error")
	}
	if _, err := Verify(nil, filepath.Join(t.TempDir(), "nope")); err == nil {
		t.Fatal("missing file: no error")
	}
	path, _, _ := tamperLog(t)
	if _, err := Verify(nil, path, path); err == nil {
		t.Fatal("same file twice: no error")
	}
	empty := filepath.Join(t.TempDir(), "empty")
	os.WriteFile(empty, nil, 0o600)
	rep, err := Verify(nil, path, empty)
	if err != nil || !rep.OK() {
		t.Fatalf("an empty file beside a good one: %v %v", err, rep.Problem)
	}
}
