package testutil

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// LoopbackAddr returns a random address in 127.0.0.0/8 (never 127.0.0.1) so that tests running in
// parallel can each bind real ports (443, 80) without colliding.
func LoopbackAddr(tb testing.TB) netip.Addr {
	tb.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		tb.Fatal(err)
	}
	n := binary.BigEndian.Uint32(b[:])%(1<<24-4) + 2 // 127.0.0.2 … 127.255.255.253
	return netip.AddrFrom4([4]byte{127, byte(n >> 16), byte(n >> 8), byte(n)})
}

// SeenRequest is what a fake upstream recorded of one HTTP request.
type SeenRequest struct {
	Method string
	Host   string
	Path   string
	Proto  string
	Header http.Header
	Body   []byte
	TLS    *tls.ConnectionState
}

// Upstream is a fake server that counts connections and records requests. It answers every HTTP
// request with "hello from <Name> <path>".
type Upstream struct {
	Name string
	Addr netip.AddrPort

	ln       net.Listener
	srv      *http.Server
	conns    atomic.Int64
	mu       sync.Mutex
	requests []SeenRequest
	// Handler, when set before traffic arrives, replaces the default answer (the request is still recorded).
	Handler http.Handler
}

// NewHTTPSUpstream serves HTTPS (h2 and http/1.1) on addr with a leaf from ca for names.
func NewHTTPSUpstream(tb testing.TB, name string, addr netip.AddrPort, ca *CA, names ...string) *Upstream {
	tb.Helper()
	cert := ca.Leaf(tb, names...)
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}
	return startUpstream(tb, name, addr, cfg)
}

// NewHTTPUpstream serves plain HTTP/1.1 on addr.
func NewHTTPUpstream(tb testing.TB, name string, addr netip.AddrPort) *Upstream {
	tb.Helper()
	return startUpstream(tb, name, addr, nil)
}

func startUpstream(tb testing.TB, name string, addr netip.AddrPort, cfg *tls.Config) *Upstream {
	tb.Helper()
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		tb.Fatalf("fake upstream %s: %v", name, err)
	}
	u := &Upstream{Name: name, Addr: netip.MustParseAddrPort(ln.Addr().String()), ln: ln}
	u.srv = &http.Server{
		Handler:           http.HandlerFunc(u.serve),
		ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				u.conns.Add(1)
			}
		},
	}
	if cfg != nil {
		u.srv.TLSConfig = cfg
		go u.srv.ServeTLS(ln, "", "")
	} else {
		go u.srv.Serve(ln)
	}
	tb.Cleanup(func() { u.srv.Close() })
	return u
}

func (u *Upstream) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	u.mu.Lock()
	u.requests = append(u.requests, SeenRequest{
		Method: r.Method, Host: r.Host, Path: r.URL.RequestURI(), Proto: r.Proto,
		Header: r.Header.Clone(), Body: body, TLS: r.TLS,
	})
	u.mu.Unlock()
	if u.Handler != nil {
		u.Handler.ServeHTTP(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintf(w, "hello from %s %s\n", u.Name, r.URL.Path)
}

// Conns is how many connections reached the upstream.
func (u *Upstream) Conns() int64 { return u.conns.Load() }

// Requests returns a copy of what the upstream has seen.
func (u *Upstream) Requests() []SeenRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]SeenRequest(nil), u.requests...)
}

// Port is the upstream's port as a string, for URLs.
func (u *Upstream) Port() string { return strconv.Itoa(int(u.Addr.Port())) }

// TCPCounter is a raw TCP listener that counts connections and echoes what it reads, for tests of
// non-HTTP traffic and of "nothing reached the upstream".
type TCPCounter struct {
	Addr  netip.AddrPort
	ln    net.Listener
	conns atomic.Int64
}

// NewTCPCounter listens on addr (port 0 = any).
func NewTCPCounter(tb testing.TB, addr netip.AddrPort) *TCPCounter {
	tb.Helper()
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		tb.Fatalf("tcp counter: %v", err)
	}
	c := &TCPCounter{Addr: netip.MustParseAddrPort(ln.Addr().String()), ln: ln}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			c.conns.Add(1)
			go func() {
				defer conn.Close()
				io.Copy(conn, conn)
			}()
		}
	}()
	tb.Cleanup(func() { ln.Close() })
	return c
}

// Conns is how many connections reached the listener.
func (c *TCPCounter) Conns() int64 { return c.conns.Load() }
