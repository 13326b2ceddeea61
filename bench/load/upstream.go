package load

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
)

// The paths the upstream serves.
const (
	PathSmall    = "/small"    // GET: SmallBody
	PathDownload = "/download" // GET ?bytes=N: the first N bytes of the payload stream
	PathUpload   = "/upload"   // POST ?bytes=N with the first N payload bytes: an UploadReport
)

// KeyHeader carries the credential: the client sends DecoyKey in it, a system that injects
// credentials replaces it with the real key, and the upstream reports in KeySeenHeader what it got.
const (
	KeyHeader     = "X-Api-Key"
	DecoyKey      = "agent-decoy-not-a-credential"
	KeySeenHeader = "X-Bench-Key-Seen"
)

// KeySeen is what the upstream found in KeyHeader.
type KeySeen string

const (
	KeyInjected KeySeen = "injected" // exactly the real key: a system injected it and dropped the decoy
	KeyAgent    KeySeen = "agent"    // exactly the client's decoy: nothing touched the header
	KeyNone     KeySeen = "none"     // no KeyHeader at all
	KeyOther    KeySeen = "other"    // anything else: several values, or a value nobody sent
)

// UploadReport is the upstream's answer to an upload it verified.
type UploadReport struct {
	Bytes int64 `json:"bytes"`
}

// Upstream is the fake server every system reaches: an http.Handler for the paths above that
// verifies uploads and counts, per KeySeen, the requests it answered.
type Upstream struct {
	key    string
	counts map[KeySeen]*atomic.Int64 // one per KeySeen, fixed at construction

	mu      sync.Mutex
	refused []string // why requests were refused since the last Reset, the first few
}

// maxRefusals bounds how many refusal reasons the upstream keeps.
const maxRefusals = 8

// NewUpstream returns an upstream for which key is the real credential.
func NewUpstream(key string) *Upstream {
	u := &Upstream{key: key, counts: map[KeySeen]*atomic.Int64{}}
	for _, k := range []KeySeen{KeyInjected, KeyAgent, KeyNone, KeyOther} {
		u.counts[k] = new(atomic.Int64)
	}
	return u
}

func (u *Upstream) classify(r *http.Request) KeySeen {
	v := r.Header.Values(KeyHeader)
	switch {
	case len(v) == 0:
		return KeyNone
	case len(v) > 1:
		return KeyOther
	case v[0] == u.key:
		return KeyInjected
	case v[0] == DecoyKey:
		return KeyAgent
	}
	return KeyOther
}

// Counts returns how many requests the upstream has answered since the last Reset, per KeySeen.
func (u *Upstream) Counts() map[KeySeen]int64 {
	m := make(map[KeySeen]int64, len(u.counts))
	for k, c := range u.counts {
		m[k] = c.Load()
	}
	return m
}

// Refusals are the reasons the upstream refused requests (a corrupted upload, a bad size) since
// the last Reset: what a failed run's client saw only as a reset connection.
func (u *Upstream) Refusals() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.refused)
}

// Reset zeroes the counts and forgets the refusals.
func (u *Upstream) Reset() {
	for _, c := range u.counts {
		c.Store(0)
	}
	u.mu.Lock()
	u.refused = nil
	u.mu.Unlock()
}

// refuse answers status with msg and remembers why.
func (u *Upstream) refuse(w http.ResponseWriter, r *http.Request, status int, msg string) {
	u.mu.Lock()
	if len(u.refused) < maxRefusals {
		u.refused = append(u.refused, fmt.Sprintf("%s %s: %s", r.Method, r.URL.Path, msg))
	}
	u.mu.Unlock()
	http.Error(w, msg, status)
}

func (u *Upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	seen := u.classify(r)
	u.counts[seen].Add(1)
	w.Header().Set(KeySeenHeader, string(seen))
	w.Header().Set("Content-Type", "application/octet-stream")
	switch {
	case r.Method == http.MethodGet && r.URL.Path == PathSmall:
		w.Header().Set("Content-Length", strconv.Itoa(SmallSize))
		w.Write(SmallBody)
	case r.Method == http.MethodGet && r.URL.Path == PathDownload:
		n, err := sizeParam(r)
		if err != nil {
			u.refuse(w, r, http.StatusBadRequest, err.Error())
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		io.Copy(w, Payload(n))
	case r.Method == http.MethodPost && r.URL.Path == PathUpload:
		n, err := sizeParam(r)
		if err != nil {
			u.refuse(w, r, http.StatusBadRequest, err.Error())
			return
		}
		var v Verifier
		if _, err := io.CopyBuffer(&v, r.Body, make([]byte, 256<<10)); err != nil {
			u.refuse(w, r, http.StatusUnprocessableEntity, fmt.Sprintf("upload: %v after %d of %d bytes", err, v.Count(), n))
			return
		}
		if v.Count() != n {
			u.refuse(w, r, http.StatusUnprocessableEntity, fmt.Sprintf("upload: got %d bytes, want %d", v.Count(), n))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(UploadReport{Bytes: v.Count()})
	default:
		http.NotFound(w, r)
	}
}

func sizeParam(r *http.Request) (int64, error) {
	n, err := strconv.ParseInt(r.URL.Query().Get("bytes"), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bytes=%q is not a size", r.URL.Query().Get("bytes"))
	}
	return n, nil
}
