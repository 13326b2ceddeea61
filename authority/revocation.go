package authority

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/internal/logfields"
)

// Revocation is one record of the revocation file.
//
// The file is append-only text, one record per line: `TOKEN_ID [RFC3339-TIME] [REASON…]`, fields
// separated by spaces; blank lines and lines starting with "#" are ignored. `firma authority revoke`
// writes all three fields; an operator may also append a bare token id by hand
// (`echo ID >> revocations.txt`).
type Revocation struct {
	TokenID   string    `json:"token_id"`
	RevokedAt time.Time `json:"revoked_at,omitzero"`
	Reason    string    `json:"reason,omitempty"`
}

// RevocationChecker answers Stage 1's revocation question. *Client and *RevocationFile implement it.
type RevocationChecker interface {
	Revoked(tokenID string) bool
}

// ParseRevocations reads revocation records from r. A malformed line does not stop the parse: it is
// skipped and reported in bad (naming name and the line), so that one typo cannot hide the
// revocations after it. err is for a failure to read at all, after which recs must not be used.
func ParseRevocations(name string, r io.Reader) (recs []Revocation, bad, err error) {
	var out []Revocation
	var errs []error
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Fields(text)
		rec := Revocation{TokenID: fields[0]}
		if !ValidID(rec.TokenID) {
			errs = append(errs, fmt.Errorf("%s:%d: %q is not a token id", name, line, rec.TokenID))
			continue
		}
		rest := fields[1:]
		if len(rest) > 0 {
			if t, err := time.Parse(time.RFC3339, rest[0]); err == nil {
				rec.RevokedAt = t
				rest = rest[1:]
			}
		}
		rec.Reason = strings.Join(rest, " ")
		out = append(out, rec)
	}
	if err := sc.Err(); err != nil {
		return nil, nil, fmt.Errorf("reading %s: %w", name, err)
	}
	return out, errors.Join(errs...), nil
}

// ReadRevocations parses the revocation file at path, as ParseRevocations. A missing file is an
// error (os.ErrNotExist) for the caller to judge: empty at startup, but never a reason to forget
// revocations already loaded.
func ReadRevocations(path string) (recs []Revocation, bad, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	return ParseRevocations(path, f)
}

// AppendRevocation appends one record to the revocation file (created 0644 if missing: it holds
// no secrets) and fsyncs it.
func AppendRevocation(path string, rec Revocation) error {
	if !ValidID(rec.TokenID) {
		return fmt.Errorf("%q is not a token id", rec.TokenID)
	}
	reason := strings.Join(strings.Fields(rec.Reason), " ")
	if rec.RevokedAt.IsZero() {
		rec.RevokedAt = time.Now()
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	var b bytes.Buffer
	if st, err := f.Stat(); err != nil {
		return err
	} else if st.Size() > 0 {
		// Start on a fresh line if a hand edit left the file without a final newline.
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, st.Size()-1); err != nil {
			return err
		}
		if last[0] != '\n' {
			b.WriteByte('\n')
		}
	}
	fmt.Fprintf(&b, "%s %s", rec.TokenID, rec.RevokedAt.UTC().Format(time.RFC3339))
	if reason != "" {
		b.WriteString(" " + reason)
	}
	b.WriteByte('\n')
	if _, err := f.Write(b.Bytes()); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

// revocationSet is a concurrency-safe set of revoked token ids.
type revocationSet struct {
	mu  sync.RWMutex
	ids map[string]struct{}
}

func (s *revocationSet) Revoked(tokenID string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.ids[tokenID]
	return ok
}

func (s *revocationSet) replace(recs []Revocation) {
	ids := make(map[string]struct{}, len(recs))
	for _, r := range recs {
		ids[r.TokenID] = struct{}{}
	}
	s.mu.Lock()
	s.ids = ids
	s.mu.Unlock()
}

func (s *revocationSet) add(recs []Revocation) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ids == nil {
		s.ids = map[string]struct{}{}
	}
	for _, r := range recs {
		s.ids[r.TokenID] = struct{}{}
	}
}

func (s *revocationSet) len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.ids)
}

// RevocationFile is a local revocation file kept in memory and reloaded when it changes: Stage 1's
// revocation source for a sidecar without an authority.
type RevocationFile struct {
	path string
	set  revocationSet
	log  zerolog.Logger
	stop func() error
}

// OpenRevocationFile loads path (which need not exist yet) and watches it. A line that fails to
// parse is logged and skipped; the rest take effect.
func OpenRevocationFile(path string, log zerolog.Logger) (*RevocationFile, error) {
	rf := &RevocationFile{path: path, log: log}
	if err := rf.reload(); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("loading revocation file: %w", err)
	}
	stop, err := watchPaths(log, []string{path}, func() { rf.reload() })
	if err != nil {
		return nil, fmt.Errorf("watching revocation file %s: %w", path, err)
	}
	rf.stop = stop
	return rf, nil
}

// reload replaces the set with the file's records. If the file cannot be read, the old set stays.
func (rf *RevocationFile) reload() error {
	recs, bad, err := ReadRevocations(rf.path)
	if errors.Is(err, os.ErrNotExist) {
		rf.log.Warn().Str(logfields.File, rf.path).Msg("revocation file does not exist; keeping the revocations already loaded")
		return err
	}
	if err != nil {
		rf.log.Error().Err(err).Str(logfields.File, rf.path).Msg("revocation file unreadable; keeping the revocations already loaded")
		return err
	}
	if bad != nil {
		rf.log.Error().Err(bad).Str(logfields.File, rf.path).Msg("revocation file has bad lines; they are skipped")
	}
	rf.set.replace(recs)
	rf.log.Debug().Str(logfields.File, rf.path).Int(logfields.Count, len(recs)).Msg("revocations loaded")
	return nil
}

// Revoked reports whether tokenID is listed.
func (rf *RevocationFile) Revoked(tokenID string) bool { return rf.set.Revoked(tokenID) }

// Close stops watching.
func (rf *RevocationFile) Close() error { return rf.stop() }

func equalRevocations(a, b []Revocation) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].TokenID != b[i].TokenID || !a[i].RevokedAt.Equal(b[i].RevokedAt) || a[i].Reason != b[i].Reason {
			return false
		}
	}
	return true
}
