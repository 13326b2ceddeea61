package authority

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// ErrNotIssued is returned by FindIssued for a token id the issuance record does not hold.
var ErrNotIssued = errors.New("not issued by this authority")

// RecordIssued appends i to the issuance record at path (authority.issued_file: JSON lines, one
// per capability, its file's fields without the token) and fsyncs it. The record is created 0600,
// its directory 0700 if missing. One write of one line: concurrent issuers append whole lines.
// `firma authority revoke` looks ids up here, so that a mistyped id is an error rather than a
// revocation that matches nothing while the real token stays valid.
func RecordIssued(path string, i *Issued) error {
	line, err := json.Marshal(i.File())
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("issuance record: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("issuance record: %w", err)
	}
	defer f.Close()
	if _, err := f.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("issuance record %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("issuance record %s: %w", path, err)
	}
	return f.Close()
}

// FindIssued returns the record of tokenID in the issuance record at path: ErrNotIssued when it
// is not there, an error wrapping os.ErrNotExist when there is no record at all. A line that does
// not parse is skipped (and counted in the error only if the id is not found), so that one damaged
// line cannot hide the others.
func FindIssued(path, tokenID string) (*CapabilityFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("issuance record: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	damaged := 0
	for sc.Scan() {
		var rec CapabilityFile
		if len(sc.Bytes()) == 0 {
			continue
		}
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			damaged++
			continue
		}
		if rec.TokenID == tokenID {
			return &rec, nil
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading issuance record %s: %w", path, err)
	}
	if damaged > 0 {
		return nil, fmt.Errorf("%w (%s has %d lines that do not parse)", ErrNotIssued, path, damaged)
	}
	return nil, ErrNotIssued
}
