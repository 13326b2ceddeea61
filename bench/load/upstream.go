package load

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
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
}

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

// Reset zeroes the counts.
func (u *Upstream) Reset() {
	for _, c := range u.counts {
		c.Store(0)
	}
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
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		io.Copy(w, Payload(n))
	case r.Method == http.MethodPost && r.URL.Path == PathUpload:
		n, err := sizeParam(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var v Verifier
		if _, err := io.CopyBuffer(&v, r.Body, make([]byte, 256<<10)); err != nil {
			http.Error(w, fmt.Sprintf("upload: %v after %d bytes", err, v.Count()), http.StatusUnprocessableEntity)
			return
		}
		if v.Count() != n {
			http.Error(w, fmt.Sprintf("upload: got %d bytes, want %d", v.Count(), n), http.StatusUnprocessableEntity)
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
