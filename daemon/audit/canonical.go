package audit

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"strings"
	"time"
)

// GenesisHash is the prev_hash of the first line of a chain.
var GenesisHash = strings.Repeat("0", 64)

var sigMember = []byte(`,"sig":"`)

// splitLine returns body(line) as the package doc defines it and the base64 signature text ("" on
// an unsigned line). body shares no memory with line.
func splitLine(line []byte) (body []byte, sig string) {
	if bytes.HasSuffix(line, []byte(`"}`)) {
		if i := bytes.LastIndex(line, sigMember); i >= 0 {
			s := line[i+len(sigMember) : len(line)-2]
			if isBase64Std(s) {
				body = make([]byte, 0, i+1)
				return append(append(body, line[:i]...), '}'), string(s)
			}
		}
	}
	return bytes.Clone(line), ""
}

func isBase64Std(s []byte) bool {
	if len(s) == 0 {
		return false
	}
	for _, c := range s {
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '+', c == '/', c == '=':
		default:
			return false
		}
	}
	return true
}

// hashBody is prev_hash for the line after the one whose body this is.
func hashBody(body []byte) string {
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:])
}

// encodeJSON is json.Marshal without HTML escaping (paths with & stay readable).
func encodeJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// eventTail is Event's members after prev_hash and before sig, in the same order. A test keeps it
// in step with Event.
type eventTail struct {
	Kind       Kind        `json:"kind"`
	DecisionID string      `json:"decision_id,omitempty"`
	Envelope   *Envelope   `json:"envelope,omitempty"`
	Capability *Capability `json:"capability,omitempty"`
	Decision   *Decision   `json:"decision,omitempty"`
	Result     *Result     `json:"result,omitempty"`
	Log        *LogRecord  `json:"log,omitempty"`
}

// pending is an event encoded as far as it can be before it has a place in the chain: the members
// before seq and between seq and prev_hash, and everything after prev_hash.
type pending struct {
	head []byte // {"id":"…","seq":
	time []byte // ,"time":"…","prev_hash":"
	tail []byte // ",  "kind":… }  (the tail object's opening brace replaced)
}

func encodePending(ev *Event) (pending, error) {
	b := make([]byte, 0, 1024)
	b = append(b, `{"id":`...)
	b = appendJSONString(b, ev.ID)
	b = append(b, `,"seq":`...)
	h := len(b)
	b = append(b, `,"time":`...)
	b, err := appendJSONTime(b, ev.Time)
	if err != nil {
		return pending{}, err
	}
	b = append(b, `,"prev_hash":"`...)
	t := len(b)
	b = append(b, `",`...)
	tail := len(b)
	if b, err = appendTail(b, ev); err != nil {
		return pending{}, err
	}
	// appendTail wrote the tail object's opening brace: drop it, the members follow the comma.
	b = append(b[:tail], b[tail+1:]...)
	return pending{head: b[:h:h], time: b[h:t:t], tail: b[t:]}, nil
}

// appendBody appends the body of p placed at seq after the line whose body hashes to prev.
func (p *pending) appendBody(dst []byte, seq uint64, prev string) []byte {
	dst = append(dst, p.head...)
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, p.time...)
	dst = append(dst, prev...)
	return append(dst, p.tail...)
}

// appendLine appends the full line for body with its signature (sig "" = unsigned) and "\n".
func appendLine(dst, body []byte, sig string) []byte {
	if sig == "" {
		dst = append(dst, body...)
	} else {
		dst = append(dst, body[:len(body)-1]...)
		dst = append(dst, sigMember...)
		dst = append(dst, sig...)
		dst = append(dst, `"}`...)
	}
	return append(dst, '\n')
}

// newID returns a 26-character ULID-style id: 48 bits of Unix milliseconds then 80 random bits, in
// Crockford base32, so that ids sort by time.
func newID(t time.Time) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(t.UnixMilli())<<16)
	rand.Read(b[6:]) // never fails (crypto/rand, Go ≥ 1.24)
	const alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
	hi := binary.BigEndian.Uint64(b[:8])
	lo := binary.BigEndian.Uint64(b[8:])
	var out [26]byte
	// 128 bits = 2 leading bits + 25×5; take 5 bits at a time from the most significant end.
	for i := 25; i >= 0; i-- {
		out[i] = alphabet[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return string(out[:])
}
