package dns

import (
	"net/netip"
	"sync"
	"time"
)

// Names is what the resolver learned: per cgroup, which name each answered address stands for, so
// that a later raw TCP flow to that address is judged and audited by name. Entries expire with
// their answer's TTL (at least a minute) and the table is bounded.
type Names struct {
	mu      sync.Mutex
	entries map[nameKey]nameEntry
	max     int
	now     func() time.Time
}

type nameKey struct {
	cgroup uint64
	addr   netip.Addr
}

type nameEntry struct {
	name    string
	expires time.Time
}

// DefaultMaxNames bounds the table.
const DefaultMaxNames = 100_000

// NewNames returns an empty table holding at most max entries.
func NewNames(max int) *Names {
	return &Names{entries: map[nameKey]nameEntry{}, max: max, now: time.Now}
}

// Add remembers that, for cgroup, a stands for name until ttl has passed. When the table is full,
// expired entries go first, then everything (an agent can always look a name up again).
func (t *Names) Add(cgroup uint64, a netip.Addr, name string, ttl time.Duration) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.entries) >= t.max {
		for k, e := range t.entries {
			if now.After(e.expires) {
				delete(t.entries, k)
			}
		}
		if len(t.entries) >= t.max {
			clear(t.entries)
		}
	}
	t.entries[nameKey{cgroup, a.Unmap()}] = nameEntry{name: name, expires: now.Add(ttl)}
}

// Lookup returns the name cgroup last resolved to a, if the answer has not expired.
func (t *Names) Lookup(cgroup uint64, a netip.Addr) (string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.entries[nameKey{cgroup, a.Unmap()}]
	if !ok || t.now().After(e.expires) {
		return "", false
	}
	return e.name, true
}
