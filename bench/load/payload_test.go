package load

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
)

// refByte is the payload stream's byte at off, computed the slow, obvious way.
func refByte(off int64) byte {
	in := off % chunkSize
	if in < indexBytes {
		var idx [indexBytes]byte
		binary.BigEndian.PutUint64(idx[:], uint64(off/chunkSize))
		return idx[in]
	}
	return block[in]
}

func refPayload(off, n int64) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = refByte(off + int64(i))
	}
	return b
}

func TestFillPayloadMatchesReference(t *testing.T) {
	for _, c := range []struct{ off, n int64 }{
		{0, 1}, {0, 8}, {3, 10}, {0, chunkSize}, {chunkSize - 3, 20}, {5*chunkSize + 7, 3*chunkSize + 11}, {1 << 33, 100},
	} {
		got := make([]byte, c.n)
		fillPayload(got, c.off)
		if !bytes.Equal(got, refPayload(c.off, c.n)) {
			t.Errorf("fillPayload(off %d, n %d) differs from the reference", c.off, c.n)
		}
	}
	if bytes.Equal(block[:64], make([]byte, 64)) {
		t.Fatal("the block is zeros: a zero-filled body would pass")
	}
}

// Reading with odd buffer sizes and WriteTo give the same stream.
func TestPayloadReader(t *testing.T) {
	const n = 3*chunkSize + 12345
	want := refPayload(0, n)
	var viaRead bytes.Buffer
	r := Payload(n)
	buf := make([]byte, 7777)
	for {
		k, err := r.Read(buf)
		viaRead.Write(buf[:k])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(viaRead.Bytes(), want) {
		t.Fatal("Read stream differs")
	}
	var viaWriteTo bytes.Buffer
	if m, err := io.Copy(&viaWriteTo, Payload(n)); err != nil || m != n {
		t.Fatalf("WriteTo: %d, %v", m, err)
	}
	if !bytes.Equal(viaWriteTo.Bytes(), want) {
		t.Fatal("WriteTo stream differs")
	}
}

func TestVerifierAcceptsThePayload(t *testing.T) {
	const n = 5*chunkSize + 99
	var v Verifier
	if _, err := io.CopyBuffer(&v, Payload(n), make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	if v.Count() != n {
		t.Fatalf("count %d, want %d", v.Count(), n)
	}
}

// Every way a proxy could get a stream wrong is caught at the byte where it happens.
func TestVerifierCatchesWrongBytes(t *testing.T) {
	const n = 4 * chunkSize
	good := refPayload(0, n)
	flip := func(at int) []byte {
		b := bytes.Clone(good)
		b[at] ^= 0x40
		return b
	}
	cases := map[string]struct {
		data []byte
		at   int64
	}{
		"flipped data byte":      {flip(100), 100},
		"flipped index byte":     {flip(chunkSize + 7), chunkSize + 7},
		"flipped last byte":      {flip(n - 1), n - 1},
		"chunk dropped":          {append(bytes.Clone(good[:chunkSize]), good[2*chunkSize:]...), chunkSize + 7},
		"chunk repeated":         {append(bytes.Clone(good[:2*chunkSize]), good[chunkSize:]...), 2*chunkSize + 7},
		"zeros":                  {make([]byte, n), indexBytes}, // chunk 0's index is zero
		"block without an index": {append(bytes.Clone(good[:chunkSize]), block...), chunkSize},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			var v Verifier
			_, err := io.CopyBuffer(&v, bytes.NewReader(c.data), make([]byte, 4096))
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("err = %v, want ErrCorrupt", err)
			}
			if !strings.HasSuffix(err.Error(), "at byte "+strconv.FormatInt(c.at, 10)) {
				t.Errorf("err = %v, want the offset %d", err, c.at)
			}
			if _, err2 := v.Write(good[:1]); !errors.Is(err2, ErrCorrupt) {
				t.Error("a Write after a mismatch succeeded")
			}
		})
	}
}

// FuzzVerifier feeds the payload in arbitrary pieces, optionally with one byte altered: the
// verifier accepts exactly the unaltered stream and names the altered byte.
func FuzzVerifier(f *testing.F) {
	f.Add(uint32(70000), []byte{1, 200, 7}, uint32(0), byte(0))
	f.Add(uint32(200000), []byte{255, 255, 3}, uint32(65536+3), byte(1))
	f.Add(uint32(9), []byte{}, uint32(8), byte(0x80))
	f.Fuzz(func(t *testing.T, n uint32, splits []byte, at uint32, xor byte) {
		n %= 4 * chunkSize
		data := refPayload(0, int64(n))
		altered := n > 0 && xor != 0
		if altered {
			at %= n
			data[at] ^= xor
		}
		var v Verifier
		var err error
		for i := 0; len(data) > 0 && err == nil; i++ {
			k := len(data)
			if len(splits) > 0 {
				k = min(k, int(splits[i%len(splits)])*97+1)
			}
			_, err = v.Write(data[:k])
			data = data[k:]
		}
		switch {
		case !altered && err != nil:
			t.Fatalf("unaltered stream rejected: %v", err)
		case !altered && v.Count() != int64(n):
			t.Fatalf("count %d, want %d", v.Count(), n)
		case altered && !errors.Is(err, ErrCorrupt):
			t.Fatalf("byte %d altered, err = %v", at, err)
		case altered && !strings.HasSuffix(err.Error(), "at byte "+strconv.FormatUint(uint64(at), 10)):
			t.Fatalf("byte %d altered, err = %v", at, err)
		}
	})
}
