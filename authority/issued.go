package authority

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// ErrNotIssued is returned by FindIssued for a token id the issuance record does not hold.
var ErrNotIssued = errors.New("not issued by this authority")

// IssuedRecord is one line of the issuance record (authority.issued_file, JSON lines): what was
// issued, never the token itself. `firma authority revoke` looks ids up here, so that a mistyped
// id is an error rather than a revocation that matches nothing while the real token stays valid.
type IssuedRecord struct {
	TokenID       string    `json:"token_id"`
	AgentID       string    `json:"agent_id"`
	SessionID     string    `json:"session_id"`
	Actions       []string  `json:"actions"`
	ResourceScope string    `json:"resource_scope"`
	IssuedAt      time.Time `json:"issued_at"`
	ExpiresAt     time.Time `json:"expires_at"`
}

// RecordIssued appends i to the issuance record at path (created 0600, its directory 0700 if
// missing) and fsyncs it. One write of one line: concurrent issuers append whole lines.
func RecordIssued(path string, i *Issued) error {
	c := i.Claims
	line, err := json.Marshal(IssuedRecord{
		TokenID: c.TokenID, AgentID: c.AgentID, SessionID: c.SessionID, Actions: slices.Clone(c.ActionSet),
		ResourceScope: c.ResourceScope, IssuedAt: c.IssuedAt.UTC(), ExpiresAt: c.Expires.UTC(),
	})
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
func FindIssued(path, tokenID string) (*IssuedRecord, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("issuance record: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	damaged := 0
	for sc.Scan() {
		var rec IssuedRecord
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
