package front

import (
	"crypto/tls"
	"errors"
	"net"
	"reflect"
	"testing"
	"time"

	"github.com/openfirma/firma/internal/hostname"
)

// realHello captures the ClientHello that crypto/tls sends for cfg.
func realHello(t *testing.T, cfg *tls.Config) []byte {
	t.Helper()
	client, server := net.Pipe()
	go func() {
		tls.Client(client, cfg).Handshake()
		client.Close()
	}()
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 5)
	if _, err := readFull(server, hdr); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := readFull(server, body); err != nil {
		t.Fatal(err)
	}
	server.Close()
	return append(hdr, body...)
}

func readFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// refragment re-wraps a single-record handshake into records of at most size bytes each.
func refragment(record []byte, size int) []byte {
	msg := record[5:]
	var out []byte
	for len(msg) > 0 {
		n := min(size, len(msg))
		out = append(out, 0x16, 0x03, 0x01, byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

func TestParseClientHello(t *testing.T) {
	hello := realHello(t, &tls.Config{ServerName: "API.Anthropic.com", NextProtos: []string{"h2", "http/1.1"}})
	want := &ClientHello{ServerName: "api.anthropic.com", ALPN: []string{"h2", "http/1.1"}}
	for _, tc := range []struct {
		name   string
		stream []byte
	}{
		{"one record", hello},
		{"fragmented into 7-byte records", refragment(hello, 7)},
		{"fragmented into 100-byte records", refragment(hello, 100)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseClientHello(tc.stream)
			if err != nil || !reflect.DeepEqual(got, want) {
				t.Fatalf("got %+v, %v; want %+v", got, err, want)
			}
			for i := 0; i < len(tc.stream); i++ {
				if _, err := ParseClientHello(tc.stream[:i]); !errors.Is(err, errNeedMore) {
					t.Fatalf("prefix of %d bytes: %v, want errNeedMore", i, err)
				}
			}
		})
	}
}

func TestParseClientHelloRefuses(t *testing.T) {
	hello := realHello(t, &tls.Config{ServerName: "example.com"})
	noSNI := realHello(t, &tls.Config{InsecureSkipVerify: true})
	if h, err := ParseClientHello(noSNI); err != nil || h.ServerName != "" {
		t.Fatalf("no SNI: %+v %v", h, err)
	}
	corrupt := func(f func(b []byte)) []byte {
		b := append([]byte(nil), hello...)
		f(b)
		return b
	}
	for name, stream := range map[string][]byte{
		"alert record":    corrupt(func(b []byte) { b[0] = 0x15 }),
		"ssl2 version":    corrupt(func(b []byte) { b[1] = 2 }),
		"server hello":    corrupt(func(b []byte) { b[5] = 2 }),
		"zero length":     {0x16, 3, 1, 0, 0},
		"truncated body":  corrupt(func(b []byte) { b[9] = 3; b[8] = 0; b[7] = 0; b[3] = 0; b[4] = 4 }),
		"bad sni byte":    withSNI(t, hello, "example.com", "exa\x00ple.com"),
		"sni with space":  withSNI(t, hello, "example.com", "exa ple.com"),
		"sni empty label": withSNI(t, hello, "example.com", "example..om"),
	} {
		if _, err := ParseClientHello(stream); !errors.Is(err, ErrBadHello) {
			t.Errorf("%s: got %v, want ErrBadHello", name, err)
		}
	}
}

// withSNI replaces one server name by another of the same length.
func withSNI(t *testing.T, hello []byte, from, to string) []byte {
	t.Helper()
	if len(from) != len(to) {
		t.Fatal("names must have equal length")
	}
	b := append([]byte(nil), hello...)
	i := indexOf(b, []byte(from))
	if i < 0 {
		t.Fatal("name not found")
	}
	copy(b[i:], to)
	return b
}

func indexOf(b, sub []byte) int {
	for i := 0; i+len(sub) <= len(b); i++ {
		if string(b[i:i+len(sub)]) == string(sub) {
			return i
		}
	}
	return -1
}

func TestSniff(t *testing.T) {
	hello := realHello(t, &tls.Config{ServerName: "allowed.test"})
	cases := []struct {
		name   string
		chunks [][]byte
		gap    time.Duration
		proto  Protocol
		sni    string
		err    error
	}{
		{"tls in one segment", [][]byte{hello}, 0, ProtoTLS, "allowed.test", nil},
		{"tls split over segments", [][]byte{hello[:3], hello[3:40], hello[40:]}, 20 * time.Millisecond, ProtoTLS, "allowed.test", nil},
		{"tls split records over segments", split(refragment(hello, 50), 17), 5 * time.Millisecond, ProtoTLS, "allowed.test", nil},
		{"http", [][]byte{[]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n")}, 0, ProtoHTTP, "", nil},
		{"http split method", [][]byte{[]byte("PO"), []byte("ST /x HTTP/1.1\r\n")}, 20 * time.Millisecond, ProtoHTTP, "", nil},
		{"any token method", [][]byte{[]byte("MKCOL /dav/x HTTP/1.1\r\nHost: a\r\n\r\n")}, 0, ProtoHTTP, "", nil},
		{"made-up method split", [][]byte{[]byte("X-EXFIL"), []byte(" /x HT"), []byte("TP/1.0\r\n")}, 20 * time.Millisecond, ProtoHTTP, "", nil},
		{"h2c prior knowledge", [][]byte{[]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")}, 0, ProtoHTTP, "", nil},
		{"h2c preface split", [][]byte{[]byte("PRI * HTTP/2"), []byte(".0\r\n\r\nSM\r\n\r\n")}, 20 * time.Millisecond, ProtoHTTP, "", nil},
		{"ssh", [][]byte{[]byte("SSH-2.0-OpenSSH_9.2\r\n")}, 0, ProtoOther, "", nil},
		{"redis inline", [][]byte{[]byte("PING\r\n")}, 0, ProtoOther, "", nil},
		{"http/2 version on a request line", [][]byte{[]byte("GET / HTTP/2\r\n")}, 0, ProtoHTTP, "", nil},
		{"runs of spaces", [][]byte{[]byte("GET \t /x  HTTP/1.1\r\n")}, 0, ProtoHTTP, "", nil},
		{"request line cut short then silence", [][]byte{[]byte("GET /secret HT")}, 0, ProtoHTTP, "", nil},
		{"memcached text", [][]byte{[]byte("get foo\r\n")}, 0, ProtoOther, "", nil},
		{"server first", nil, 0, ProtoOther, "", nil},
		{"truncated hello then eof", [][]byte{hello[:30]}, 0, ProtoTLS, "", ErrBadHello},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			client, server := net.Pipe()
			go func() {
				for _, c := range tc.chunks {
					client.Write(c)
					time.Sleep(tc.gap)
				}
				if tc.err != nil {
					client.Close()
				}
			}()
			defer client.Close()
			s, err := Sniff(server, 200*time.Millisecond, 10*time.Second)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if s.Proto != tc.proto {
				t.Fatalf("proto = %v, want %v", s.Proto, tc.proto)
			}
			if tc.sni != "" && (s.Hello == nil || s.Hello.ServerName != tc.sni) {
				t.Fatalf("hello = %+v, want SNI %s", s.Hello, tc.sni)
			}
			var sent []byte
			for _, c := range tc.chunks {
				sent = append(sent, c...)
			}
			if tc.err == nil && string(s.Prefix) != string(sent) {
				t.Fatalf("prefix has %d bytes, sent %d", len(s.Prefix), len(sent))
			}
		})
	}
}

func split(b []byte, n int) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		k := min(n, len(b))
		out = append(out, b[:k])
		b = b[k:]
	}
	return out
}

func FuzzParseClientHello(f *testing.F) {
	f.Add([]byte{0x16, 3, 1, 0, 4, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseClientHello(b)
		if err == nil && h.ServerName != "" && hostname.Check(h.ServerName) != nil {
			t.Fatalf("accepted invalid name %q", h.ServerName)
		}
	})
}

// FuzzSniffClassify: whatever the first bytes, classify never panics, never claims HTTP for bytes
// that do not start with a request line or the h2c preface, and a TLS verdict comes with a hello or
// an error.
func FuzzSniffClassify(f *testing.F) {
	for _, seed := range []string{"GET / HTTP/1.1\r\n", "MKCOL /x HTTP/1.0\r\n", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"SSH-2.0-x\r\n", "\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00", "GET  / HTTP/1.1\r\n", "G"} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) == 0 {
			return
		}
		s, done, err := classify(b)
		if !done {
			return
		}
		switch s.Proto {
		case ProtoHTTP:
			if httpRequestLine(b) != lineHTTP {
				t.Fatalf("HTTP claimed for %q", b)
			}
		case ProtoTLS:
			if err == nil && s.Hello == nil {
				t.Fatalf("TLS without a hello or an error for %q", b)
			}
		}
	})
}
