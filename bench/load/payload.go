package load

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
)

// The payload stream is chunkSize-byte chunks of one pseudo-random block, each chunk's first eight
// bytes replaced by its index (big-endian): cheap to produce and to check at memory speed, and a
// dropped, repeated, reordered or altered chunk changes the bytes at a known offset.
const (
	chunkSize  = 64 << 10
	indexBytes = 8
)

var block = func() []byte {
	b := make([]byte, chunkSize)
	r := rand.New(rand.NewPCG(0x6669726d61, 0x62656e6368)) // fixed: client and upstream agree
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}()

// SmallSize is the length of the small response body.
const SmallSize = 128

// SmallBody is what the upstream answers to a small GET: the first SmallSize bytes of the payload
// stream.
var SmallBody = func() []byte {
	b := make([]byte, SmallSize)
	fillPayload(b, 0)
	return b
}()

// ErrCorrupt is what a Verifier returns when the bytes differ from the payload stream.
var ErrCorrupt = errors.New("payload corrupted")

// fillPayload writes the payload stream's bytes from offset off into p.
func fillPayload(p []byte, off int64) {
	for len(p) > 0 {
		in := int(off % chunkSize)
		n := copy(p, block[in:])
		if in < indexBytes {
			var idx [indexBytes]byte
			binary.BigEndian.PutUint64(idx[:], uint64(off/chunkSize))
			copy(p[:n], idx[in:])
		}
		off += int64(n)
		p = p[n:]
	}
}

// Payload returns a reader of the first n bytes of the payload stream.
func Payload(n int64) io.Reader { return &payloadReader{n: n} }

type payloadReader struct {
	off, n  int64
	scratch []byte
}

func (r *payloadReader) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.n-r.off)]
	fillPayload(p, r.off)
	r.off += int64(len(p))
	return len(p), nil
}

// WriteTo writes whole chunks from one buffer, patching only the index bytes: no copy per chunk.
func (r *payloadReader) WriteTo(w io.Writer) (int64, error) {
	if r.scratch == nil {
		r.scratch = bytes.Clone(block)
	}
	var total int64
	for r.off < r.n {
		in := r.off % chunkSize
		binary.BigEndian.PutUint64(r.scratch, uint64(r.off/chunkSize))
		seg := r.scratch[in:min(chunkSize, in+r.n-r.off)]
		n, err := w.Write(seg)
		r.off += int64(n)
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// Verifier is an io.Writer that checks what is written against the payload stream and counts it.
// The first mismatch is returned (wrapping ErrCorrupt) by that Write and every later one.
type Verifier struct {
	off int64
	err error
}

func (v *Verifier) Write(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	written := len(p)
	for len(p) > 0 {
		in := int(v.off % chunkSize)
		n := min(len(p), chunkSize-in)
		if !v.matches(p[:n], in) {
			v.err = fmt.Errorf("%w at byte %d", ErrCorrupt, v.off+firstDiff(p[:n], v.off))
			return written - len(p), v.err
		}
		v.off += int64(n)
		p = p[n:]
	}
	return written, nil
}

// matches compares seg, which starts at offset in of the current chunk and does not cross its
// end, with the stream.
func (v *Verifier) matches(seg []byte, in int) bool {
	want := block[in : in+len(seg)]
	if in < indexBytes {
		var idx [indexBytes]byte
		binary.BigEndian.PutUint64(idx[:], uint64(v.off/chunkSize))
		k := min(len(seg), indexBytes-in)
		if !bytes.Equal(seg[:k], idx[in:in+k]) {
			return false
		}
		seg, want = seg[k:], want[k:]
	}
	return bytes.Equal(seg, want)
}

// firstDiff is the index of the first byte of p that differs from the stream at off.
func firstDiff(p []byte, off int64) int64 {
	want := make([]byte, len(p))
	fillPayload(want, off)
	for i := range p {
		if p[i] != want[i] {
			return int64(i)
		}
	}
	return int64(len(p))
}

// Count is how many bytes have been verified.
func (v *Verifier) Count() int64 { return v.off }
