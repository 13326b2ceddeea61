package front

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/openfirma/firma/internal/hostname"
)

// Protocol is what the first bytes of a flow say it is.
type Protocol int

const (
	ProtoOther Protocol = iota // no recognisable first bytes (or none within the wait)
	ProtoTLS
	ProtoHTTP
)

func (p Protocol) String() string {
	switch p {
	case ProtoTLS:
		return "tls"
	case ProtoHTTP:
		return "http"
	}
	return "tcp"
}

// ClientHello is what the sidecar needs from a TLS ClientHello.
type ClientHello struct {
	ServerName string
	ALPN       []string
	ECH        bool // carries an encrypted_client_hello extension (real or GREASE)
}

// Sniffed is the verdict of Sniff: the protocol, what was parsed, and the bytes consumed, which
// must be replayed to whoever handles the flow next.
type Sniffed struct {
	Proto  Protocol
	Hello  *ClientHello
	Prefix []byte
}

var (
	// ErrBadHello is a TLS record stream that does not hold a well-formed ClientHello: fail closed.
	ErrBadHello = errors.New("unparsable TLS ClientHello")
	// errNeedMore means the bytes so far are a valid but incomplete prefix.
	errNeedMore = errors.New("need more bytes")
)

const (
	maxHelloBytes = 64 << 10 // a ClientHello never legitimately needs more
	recordHeader  = 5
)

// h2Preface is how an HTTP/2 client with prior knowledge (h2c) opens a connection.
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// maxRequestLine bounds how far the sniffer reads looking for the end of an HTTP request line.
const maxRequestLine = 16 << 10

// Sniff reads the first bytes of conn to tell TLS, HTTP/1.x and other TCP apart, waiting at most
// firstByte for the client to speak (server-first protocols never do) and, once it has, at most
// total for a complete ClientHello. The deadline is cleared before it returns.
func Sniff(conn net.Conn, firstByte, total time.Duration) (Sniffed, error) {
	defer conn.SetReadDeadline(time.Time{})
	conn.SetReadDeadline(time.Now().Add(firstByte))
	buf := make([]byte, 0, 2048)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, make([]byte, len(buf))...)[:len(buf)]
		}
		n, err := conn.Read(buf[len(buf):cap(buf)])
		if n > 0 && len(buf) == 0 {
			// The client spoke: it has total from now to finish its first message.
			conn.SetReadDeadline(time.Now().Add(total))
		}
		buf = buf[:len(buf)+n]
		if n > 0 {
			s, done, perr := classify(buf)
			if perr != nil {
				return s, perr
			}
			if done {
				return s, nil
			}
			if len(buf) >= maxHelloBytes {
				return Sniffed{Proto: ProtoTLS, Prefix: buf}, fmt.Errorf("%w: larger than %d bytes", ErrBadHello, maxHelloBytes)
			}
		}
		if err != nil {
			if len(buf) == 0 && errors.Is(err, os.ErrDeadlineExceeded) {
				return Sniffed{Proto: ProtoOther}, nil // the client waits for the server
			}
			if len(buf) > 0 && buf[0] == 0x16 {
				return Sniffed{Proto: ProtoTLS, Prefix: buf}, fmt.Errorf("%w: %v", ErrBadHello, err)
			}
			if len(buf) > 0 && (errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, io.EOF)) {
				s, _, _ := classify(buf)
				if httpRequestLine(buf) == lineMaybe {
					// A request line that stops short is still HTTP: tunnelling it raw would let a
					// slow client finish it unjudged. The HTTP server refuses it or waits for more.
					s.Proto = ProtoHTTP
				}
				return s, nil
			}
			return Sniffed{Prefix: buf}, err
		}
	}
}

// classify decides what buf starts with. done is false while more bytes could change the answer.
func classify(buf []byte) (Sniffed, bool, error) {
	s := Sniffed{Prefix: buf}
	if buf[0] == 0x16 {
		s.Proto = ProtoTLS
		hello, err := ParseClientHello(buf)
		if errors.Is(err, errNeedMore) {
			return s, false, nil
		}
		if err != nil {
			return s, true, err
		}
		s.Hello = hello
		return s, true, nil
	}
	switch httpRequestLine(buf) {
	case lineHTTP:
		s.Proto = ProtoHTTP
		return s, true, nil
	case lineMaybe:
		return s, false, nil
	}
	s.Proto = ProtoOther
	return s, true, nil
}

type lineVerdict int

const (
	lineNot   lineVerdict = iota // cannot be an HTTP/1.x request line or the h2c preface
	lineMaybe                    // a valid prefix of one: read more
	lineHTTP
)

// httpRequestLine tells whether buf starts with an HTTP request line — any token method (RFC 9110
// tchar), a request target, "HTTP/" and a digit — or the h2c connection preface. Every method counts,
// not a fixed list: WebDAV's MKCOL or a made-up one is judged per request like GET, and a line the
// HTTP server will reject (HTTP/2 on a request line, say) is refused and recorded, never tunnelled.
func httpRequestLine(buf []byte) lineVerdict {
	if n := min(len(buf), len(h2Preface)); string(buf[:n]) == h2Preface[:n] {
		if n == len(h2Preface) {
			return lineHTTP
		}
		return lineMaybe
	}
	i := 0
	for i < len(buf) && isTchar(buf[i]) {
		i++
	}
	switch {
	case i == len(buf):
		return maybeIf(len(buf) < maxRequestLine)
	case i == 0 || !isSpace(buf[i]):
		return lineNot
	}
	// Lenient servers accept runs of spaces and tabs between the parts; so does the sniffer, so that
	// no such line slips through as raw TCP.
	for i < len(buf) && isSpace(buf[i]) {
		i++
	}
	start := i
	for i < len(buf) && buf[i] > ' ' && buf[i] < 0x7f {
		i++
	}
	switch {
	case i == len(buf):
		return maybeIf(len(buf) < maxRequestLine)
	case i == start || !isSpace(buf[i]):
		return lineNot
	}
	for i < len(buf) && isSpace(buf[i]) {
		i++
	}
	const version = "HTTP/"
	rest := buf[i:]
	if n := min(len(rest), len(version)); string(rest[:n]) != version[:n] {
		return lineNot
	}
	if len(rest) < len(version)+1 {
		return maybeIf(len(buf) < maxRequestLine)
	}
	if c := rest[len(version)]; c < '0' || c > '9' {
		return lineNot
	}
	return lineHTTP
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' }

func maybeIf(b bool) lineVerdict {
	if b {
		return lineMaybe
	}
	return lineNot
}

// isTchar reports whether c may appear in an HTTP token (RFC 9110 §5.6.2).
func isTchar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// ParseClientHello parses a ClientHello from the start of a TLS record stream, reassembling a
// handshake message fragmented over several records. It returns errNeedMore for a valid prefix.
func ParseClientHello(stream []byte) (*ClientHello, error) {
	var msg []byte
	rest := stream
	for {
		if len(rest) < recordHeader {
			return nil, errNeedMore
		}
		typ, major, length := rest[0], rest[1], int(rest[3])<<8|int(rest[4])
		if typ != 0x16 || major != 3 {
			return nil, fmt.Errorf("%w: record type %#x version %#x", ErrBadHello, typ, rest[1:3])
		}
		if length == 0 || length > 1<<14+2048 {
			return nil, fmt.Errorf("%w: record length %d", ErrBadHello, length)
		}
		if len(rest) < recordHeader+length {
			return nil, errNeedMore
		}
		msg = append(msg, rest[recordHeader:recordHeader+length]...)
		rest = rest[recordHeader+length:]
		if len(msg) >= 4 {
			if msg[0] != 1 {
				return nil, fmt.Errorf("%w: handshake type %d", ErrBadHello, msg[0])
			}
			want := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
			if want > maxHelloBytes {
				return nil, fmt.Errorf("%w: handshake length %d", ErrBadHello, want)
			}
			if len(msg) >= 4+want {
				return parseHelloBody(msg[4 : 4+want])
			}
		}
	}
}

func parseHelloBody(body []byte) (*ClientHello, error) {
	s := cryptobyte.String(body)
	var (
		version             uint16
		random, sid, suites cryptobyte.String
		compression         cryptobyte.String
	)
	if !s.ReadUint16(&version) || !s.ReadBytes((*[]byte)(&random), 32) ||
		!s.ReadUint8LengthPrefixed(&sid) || !s.ReadUint16LengthPrefixed(&suites) ||
		!s.ReadUint8LengthPrefixed(&compression) {
		return nil, fmt.Errorf("%w: truncated header", ErrBadHello)
	}
	hello := &ClientHello{}
	if s.Empty() {
		return hello, nil // no extensions at all: no SNI
	}
	var exts cryptobyte.String
	if !s.ReadUint16LengthPrefixed(&exts) || !s.Empty() {
		return nil, fmt.Errorf("%w: bad extensions block", ErrBadHello)
	}
	seen := map[uint16]bool{}
	for !exts.Empty() {
		var typ uint16
		var data cryptobyte.String
		if !exts.ReadUint16(&typ) || !exts.ReadUint16LengthPrefixed(&data) {
			return nil, fmt.Errorf("%w: truncated extension", ErrBadHello)
		}
		if seen[typ] {
			return nil, fmt.Errorf("%w: duplicate extension %d", ErrBadHello, typ)
		}
		seen[typ] = true
		switch typ {
		case 0: // server_name
			name, err := parseSNI(data)
			if err != nil {
				return nil, err
			}
			hello.ServerName = name
		case 16: // application_layer_protocol_negotiation
			var list cryptobyte.String
			if !data.ReadUint16LengthPrefixed(&list) || !data.Empty() {
				return nil, fmt.Errorf("%w: bad ALPN", ErrBadHello)
			}
			for !list.Empty() {
				var proto cryptobyte.String
				if !list.ReadUint8LengthPrefixed(&proto) || len(proto) == 0 {
					return nil, fmt.Errorf("%w: bad ALPN entry", ErrBadHello)
				}
				hello.ALPN = append(hello.ALPN, string(proto))
			}
		case 0xfe0d: // encrypted_client_hello
			hello.ECH = true
		}
	}
	return hello, nil
}

// parseSNI returns the host_name entry. A server_name extension with any other entry type, more than
// one host name, or a name that is not a plausible DNS name is refused rather than guessed at.
func parseSNI(data cryptobyte.String) (string, error) {
	var list cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || !data.Empty() || list.Empty() {
		return "", fmt.Errorf("%w: bad server_name", ErrBadHello)
	}
	var name string
	for !list.Empty() {
		var typ uint8
		var host cryptobyte.String
		if !list.ReadUint8(&typ) || !list.ReadUint16LengthPrefixed(&host) {
			return "", fmt.Errorf("%w: bad server_name entry", ErrBadHello)
		}
		if typ != 0 || name != "" {
			return "", fmt.Errorf("%w: unexpected server_name entry", ErrBadHello)
		}
		name = string(host)
	}
	host := strings.ToLower(strings.TrimSuffix(name, "."))
	if hostname.Check(host) != nil {
		return "", fmt.Errorf("%w: server name %q", ErrBadHello, name)
	}
	return host, nil
}

// prefixConn replays bytes already read from a connection before reading on from it.
type prefixConn struct {
	net.Conn
	prefix *bytes.Reader
}

func withPrefix(c net.Conn, prefix []byte) net.Conn {
	if len(prefix) == 0 {
		return c
	}
	return &prefixConn{Conn: c, prefix: bytes.NewReader(prefix)}
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if c.prefix.Len() > 0 {
		return c.prefix.Read(p)
	}
	return c.Conn.Read(p)
}

// CloseWrite lets a splice half-close a prefixed TCP connection.
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
