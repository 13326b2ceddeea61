package l7

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/openfirma/firma/daemon/judge"
	"github.com/openfirma/firma/policies"
)

// A request body reaches the policy only when a policy reads it (the judge's NeedsBody): it is
// then buffered — at most max_body_bytes+1 bytes of it, within the engine's budget for all bodies
// buffered at once — judged, and forwarded from the buffer followed by whatever the agent still
// sends. Every other body streams. max_request_body_bytes, when set, caps every body: a declared
// length over it is refused before anything is sent, a streamed body that passes it is cut off
// and its request aborted.

var (
	errBudget    = errors.New(judge.ReasonBodyBudget)
	errBodyLimit = errors.New(judge.ReasonBodyLimit)
	errBodyFreed = errors.New("request body released")
)

// bodyBudget bounds the bytes of request bodies buffered at once across every connection of the
// engine ([sidecar.interceptor.https_mitm] body_buffer_bytes), and what one agent may hold of it:
// half, or one body of the largest size a policy reads if that is more — so that an agent sending
// slow bodies cannot leave the others none.
type bodyBudget struct {
	mu        sync.Mutex
	cap, used int64
	byAgent   map[string]int64
}

// share is what one agent may hold when a policy reads bodies of up to maxBody bytes.
func (b *bodyBudget) share(maxBody int64) int64 {
	return min(b.cap, max(b.cap/2, maxBody+1))
}

// acquire reserves n bytes for agent, or reports that they are not available: the budget is
// spent, or agent holds its share of it.
func (b *bodyBudget) acquire(agent string, n, share int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.cap || b.byAgent[agent]+n > share {
		return false
	}
	if b.byAgent == nil {
		b.byAgent = map[string]int64{}
	}
	b.used += n
	b.byAgent[agent] += n
	return true
}

func (b *bodyBudget) release(agent string, n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
	if b.byAgent[agent] -= n; b.byAgent[agent] <= 0 {
		delete(b.byAgent, agent)
	}
}

// inUse is how many bytes are reserved now.
func (b *bodyBudget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// bodySize is what the request head says of its body: 0 without one, its Content-Length, or -1
// when the length is not known (chunked, or HTTP/2 without content-length).
func bodySize(r *http.Request) int64 {
	if r.Body == nil || r.Body == http.NoBody {
		return 0
	}
	return r.ContentLength
}

// bodyRefusal is a request the sidecar refuses because of its body, before the policy decides.
type bodyRefusal struct {
	status int
	reason string
}

// prepareBody fills in.Content and readies r's body for the decision: buffered when the policy
// reads it, capped by max_request_body_bytes when that is set. It returns the request to go on
// with and release, which frees the buffer (call it once the request is done); or a refusal,
// when the sidecar refuses the request because of its body before the policy decides.
func (c *agentConn) prepareBody(w http.ResponseWriter, r *http.Request, in *judge.Intent) (_ *http.Request, release func(), refusal *bodyRefusal) {
	content := &policies.Content{Header: r.Header, BodySize: bodySize(r)}
	in.Content = content
	release = func() {}
	limit := c.e.cfg.MaxRequestBodyBytes
	if limit > 0 && content.BodySize > limit {
		return r, release, &bodyRefusal{http.StatusRequestEntityTooLarge,
			fmt.Sprintf("%s (%d bytes, limit %d)", judge.ReasonBodyLimit, content.BodySize, limit)}
	}
	if c.e.judge.NeedsBody(c.f, *in) {
		b, err := c.bufferBody(w, r, content, limit)
		switch {
		case errors.Is(err, errBudget):
			return r, release, &bodyRefusal{http.StatusServiceUnavailable, judge.ReasonBodyBudget}
		case errors.Is(err, errBodyLimit):
			return r, release, &bodyRefusal{http.StatusRequestEntityTooLarge, fmt.Sprintf("%s (limit %d)", judge.ReasonBodyLimit, limit)}
		case err != nil:
			status := http.StatusBadRequest
			if isTimeout(err) {
				status = http.StatusRequestTimeout
			}
			return r, release, &bodyRefusal{status, judge.ReasonBodyRead + ": " + err.Error()}
		}
		r.Body, release = b, b.free
	}
	if limit > 0 && content.BodySize < 0 {
		// Not buffered whole: count while streaming.
		lb := &limitedBody{rc: r.Body, limit: limit}
		r.Body = lb
		r = r.WithContext(context.WithValue(r.Context(), limitKey{}, lb))
	}
	return r, release, nil
}

// bufferBody reads the body of r for the policy into content: all of it when it is at most
// MaxBodyBytes long, else its first MaxBodyBytes bytes (BodyTruncated). Each step of the buffer's
// growth is reserved in the engine's budget first. It returns the body to forward: the buffered
// bytes, then the rest. A body of unknown length that passes limit (max_request_body_bytes, when
// smaller than MaxBodyBytes) is errBodyLimit.
func (c *agentConn) bufferBody(w http.ResponseWriter, r *http.Request, content *policies.Content, limit int64) (*bufferedBody, error) {
	max := c.e.judge.MaxBodyBytes()
	known := content.BodySize
	// Read one byte past the limit to learn whether the body is longer; a declared length is read
	// exactly (or its first max bytes: the length says the rest is there).
	want := max + 1
	limited := limit > 0 && limit < max
	if limited {
		want = limit + 1
	}
	if known >= 0 {
		want = min(known, max)
	}
	rc := http.NewResponseController(w)
	if rc.SetReadDeadline(time.Now().Add(c.e.cfg.BodyReadTimeout.Duration)) == nil {
		defer rc.SetReadDeadline(time.Time{})
	}
	b := &bufferedBody{budget: c.e.bodies, agent: c.f.AgentID, share: c.e.bodies.share(max), rest: r.Body}
	if err := b.fill(r.Body, want, known >= 0); err != nil {
		b.free()
		return nil, err
	}
	n := int64(len(b.buf))
	switch {
	case known >= 0 && n < known:
		// Longer than max: the rest streams after the buffered prefix.
		content.Body, content.BodyTruncated = b.buf, true
	case known < 0 && n == want && limited:
		b.free()
		return nil, errBodyLimit
	case known < 0 && n == want:
		content.Body, content.BodyTruncated = b.buf[:max], true
	default:
		// The whole body: forward it with the length that was judged.
		content.Body, content.BodySize = b.buf, n
		r.ContentLength, r.TransferEncoding = n, nil
		r.Body.Close()
		b.rest = nil
	}
	return b, nil
}

// bufferedBody is a request body read ahead: the buffered bytes, then the rest of the agent's
// body. Its budget reservation is released once the buffer has been read through, or at free
// (Close); after free, Read fails.
type bufferedBody struct {
	budget *bodyBudget
	agent  string // whose share the reservation is
	share  int64
	mu     sync.Mutex
	buf    []byte
	off    int
	held   int64 // bytes reserved in budget
	freed  bool
	rest   io.ReadCloser // nil when buf is the whole body
}

// growStep is the first allocation for a body of unknown length; it doubles from there.
const growStep = 64 << 10

// fill reads up to want bytes of body into the buffer, reserving each allocation first. exact:
// want bytes must come (a declared length), and are allocated at once.
func (b *bufferedBody) fill(body io.Reader, want int64, exact bool) error {
	size := min(want, growStep)
	if exact {
		size = want
	}
	if err := b.grow(size); err != nil {
		return err
	}
	for int64(len(b.buf)) < want {
		if len(b.buf) == cap(b.buf) {
			if err := b.grow(min(want, 2*int64(cap(b.buf)))); err != nil {
				return err
			}
		}
		n, err := body.Read(b.buf[len(b.buf):cap(b.buf)])
		b.buf = b.buf[:len(b.buf)+n]
		if err == io.EOF {
			if exact && int64(len(b.buf)) < want {
				return io.ErrUnexpectedEOF
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// grow reallocates the buffer with capacity size, reserving the difference in the budget. (The
// old array is garbage once copied: the budget bounds what requests hold, not the collector.)
func (b *bufferedBody) grow(size int64) error {
	delta := size - int64(cap(b.buf))
	if !b.budget.acquire(b.agent, delta, b.share) {
		return errBudget
	}
	b.held += delta
	nb := make([]byte, len(b.buf), size)
	copy(nb, b.buf)
	b.buf = nb
	return nil
}

func (b *bufferedBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	if b.freed {
		b.mu.Unlock()
		return 0, errBodyFreed
	}
	if b.off < len(b.buf) {
		n := copy(p, b.buf[b.off:])
		b.off += n
		if b.off == len(b.buf) {
			b.releaseLocked() // read through: the memory can go before the request ends
		}
		b.mu.Unlock()
		return n, nil
	}
	rest := b.rest
	b.mu.Unlock()
	if rest == nil {
		return 0, io.EOF
	}
	return rest.Read(p)
}

func (b *bufferedBody) Close() error {
	b.free()
	if b.rest != nil {
		return b.rest.Close()
	}
	return nil
}

// free releases the buffer and its reservation. Idempotent.
func (b *bufferedBody) free() {
	b.mu.Lock()
	b.freed = true
	b.releaseLocked()
	b.mu.Unlock()
}

func (b *bufferedBody) releaseLocked() {
	b.budget.release(b.agent, b.held)
	b.held, b.buf, b.off = 0, nil, 0
}

// limitedBody is a streamed request body capped at limit bytes: past it, Read fails with
// errBodyLimit, which aborts the upstream request, and exceeded reports it.
type limitedBody struct {
	rc    io.ReadCloser
	limit int64
	n     int64
	hit   atomic.Bool
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.hit.Load() {
		return 0, errBodyLimit
	}
	n, err := b.rc.Read(p)
	b.n += int64(n)
	if b.n > b.limit {
		b.hit.Store(true)
		return n - int(b.n-b.limit), errBodyLimit
	}
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }

func (b *limitedBody) exceeded() bool { return b.hit.Load() }

type limitKey struct{}

// bodyLimitHit reports whether the request of ctx had its streamed body cut off at
// max_request_body_bytes.
func bodyLimitHit(ctx context.Context) bool {
	lb, _ := ctx.Value(limitKey{}).(*limitedBody)
	return lb != nil && lb.exceeded()
}

// Draining a refused request's body: at most this much, for at most this long, and no longer than
// the client keeps sending.
const (
	refusedDrainBytes   = 16 << 20
	refusedDrainTimeout = 5 * time.Second
	refusedDrainIdle    = 500 * time.Millisecond
)

// discardRefused reads and throws away what is left of a refused request's body, after sending
// the refusal, until the client stops sending. Nothing read here goes anywhere. Without it:
//   - HTTP/1: closing a connection whose client is still sending makes the kernel answer with a
//     reset, which can destroy the refusal before the client reads it: a refused 2 MiB upload
//     would end in "connection reset" instead of a 403;
//   - HTTP/2: a stream whose handler returns before the request ends is reset (RST_STREAM
//     NO_ERROR) right behind the response, and clients such as curl 7.88 then drop the response
//     body they had just received ("transfer closed with 35 bytes remaining").
//
// Flushing the refusal first lets the client see it and stop (curl ends its upload on an error
// status). A body larger than refusedDrainBytes, or one that trickles, is cut off; a client that
// waits for 100-continue sends nothing and is let go after refusedDrainIdle (over HTTP/2 it is not
// read at all: reading would send a 100 Continue after the final status).
func discardRefused(w http.ResponseWriter, r *http.Request) {
	if r.Body == nil || r.Body == http.NoBody {
		return
	}
	if r.ProtoMajor == 2 && strings.EqualFold(r.Header.Get("Expect"), "100-continue") {
		return
	}
	rc := http.NewResponseController(w)
	if rc.Flush() != nil {
		return
	}
	defer rc.SetReadDeadline(time.Time{})
	end := time.Now().Add(refusedDrainTimeout)
	buf := make([]byte, 32<<10)
	for left := int64(refusedDrainBytes); left > 0; {
		deadline := time.Now().Add(refusedDrainIdle)
		if deadline.After(end) {
			deadline = end
		}
		if rc.SetReadDeadline(deadline) != nil {
			return
		}
		n, err := r.Body.Read(buf[:min(left, int64(len(buf)))])
		left -= int64(n)
		if err != nil {
			return
		}
	}
}
