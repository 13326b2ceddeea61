package testutil

import (
	"crypto/rand"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/openfirma/firma/internal/fake"
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
type SeenRequest = fake.SeenRequest

// Upstream is a fake server that counts connections and records requests (fake.Upstream).
type Upstream = fake.Upstream

// NewHTTPSUpstream serves HTTPS (h2 and http/1.1) on addr with a leaf from ca for names, until the
// test ends.
func NewHTTPSUpstream(tb testing.TB, name string, addr netip.AddrPort, ca *CA, names ...string) *Upstream {
	tb.Helper()
	u, err := fake.NewHTTPS(name, addr, ca.CA, names...)
	return started(tb, u, err)
}

// NewHTTPUpstream serves plain HTTP/1.1 on addr until the test ends.
func NewHTTPUpstream(tb testing.TB, name string, addr netip.AddrPort) *Upstream {
	tb.Helper()
	u, err := fake.NewHTTP(name, addr)
	return started(tb, u, err)
}

func started(tb testing.TB, u *Upstream, err error) *Upstream {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { u.Close() })
	return u
}

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

// UDPCounter counts the datagrams that reach an address.
type UDPCounter struct {
	Addr netip.AddrPort
	n    atomic.Int64
}

// NewUDPCounter listens on addr (port 0 = any) until the test ends.
func NewUDPCounter(tb testing.TB, addr netip.AddrPort) *UDPCounter {
	tb.Helper()
	pc, err := net.ListenPacket("udp", addr.String())
	if err != nil {
		tb.Fatalf("udp counter: %v", err)
	}
	u := &UDPCounter{Addr: netip.MustParseAddrPort(pc.LocalAddr().String())}
	go func() {
		buf := make([]byte, 65536)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			u.n.Add(1)
		}
	}()
	tb.Cleanup(func() { pc.Close() })
	return u
}

// Datagrams is how many datagrams reached the listener.
func (u *UDPCounter) Datagrams() int64 { return u.n.Load() }
