//go:build linux

package bpf_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/internal/testutil"
)

func openOffload(t *testing.T) *bpf.Offload {
	t.Helper()
	testutil.RequireRoot(t)
	o, err := bpf.OpenOffload()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

func readN(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("reading %d bytes: %v", n, err)
	}
	return b
}

// switched adopts the agent's socket, sends first over TCP and switches once the agent has read it.
func switched(t *testing.T, o *bpf.Offload, agent, side *net.TCPConn) *bpf.Offloaded {
	t.Helper()
	tun, err := o.Tunnel(side)
	if err != nil {
		t.Fatal(err)
	}
	side.Write([]byte("tcp first;"))
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, err := tun.Switch()
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("never switched")
		}
		if string(readN(t, agent, len("tcp first;"))) != "tcp first;" {
			t.Fatal("the agent read something else first")
		}
	}
	return tun
}

// Once switched, what the sidecar sends reaches the agent intact and in order, counted in Queued
// until the agent reads it; what the agent sends still reaches the sidecar over TCP.
func TestOffloadSwitchCarriesBytes(t *testing.T) {
	o := openOffload(t)
	agent, side := testutil.TCPPair(t)
	tun := switched(t, o, agent, side)
	data := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	if _, err := side.Write(data); err != nil {
		t.Fatal(err)
	}
	if q, err := tun.Queued(); err != nil || q < len(data) {
		t.Fatalf("Queued = %d, %v; want at least the %d bytes sent", q, err, len(data))
	}
	if got := readN(t, agent, len(data)); !bytes.Equal(got, data) {
		t.Fatal("the agent read other bytes than were sent")
	}
	if q, err := tun.Queued(); err != nil || q != 0 {
		t.Fatalf("Queued = %d, %v after the agent read everything", q, err)
	}
	// The sidecar's FIN follows its last redirected byte.
	side.Write([]byte("last"))
	side.CloseWrite()
	rest, err := io.ReadAll(agent)
	if err != nil || string(rest) != "last" {
		t.Fatalf("after the switch the agent read %q then %v", rest, err)
	}
	agent.Write([]byte("agent to sidecar"))
	if got := readN(t, side, len("agent to sidecar")); string(got) != "agent to sidecar" {
		t.Fatalf("the sidecar read %q", got)
	}
}

// The switch waits while the agent has not read what came over TCP: redirected bytes would
// otherwise be read first.
func TestOffloadSwitchWaitsForTheAgent(t *testing.T) {
	o := openOffload(t)
	agent, side := testutil.TCPPair(t)
	tun, err := o.Tunnel(side)
	if err != nil {
		t.Fatal(err)
	}
	side.Write([]byte("unread"))
	if ok, err := tun.Switch(); ok || err != nil {
		t.Fatalf("Switch = %v, %v with bytes unread by the agent", ok, err)
	}
	readN(t, agent, len("unread"))
	if ok, err := tun.Switch(); !ok || err != nil {
		t.Fatalf("Switch = %v, %v once the agent read everything", ok, err)
	}
}

// An agent that stops reading gets its tunnel back on TCP: what waits in its socket comes first,
// then what the sidecar sends over TCP.
func TestOffloadDemoteKeepsOrder(t *testing.T) {
	o := openOffload(t)
	agent, side := testutil.TCPPair(t)
	tun := switched(t, o, agent, side)
	side.Write([]byte("redirected;"))
	if err := tun.Demote(); err != nil {
		t.Fatal(err)
	}
	side.Write([]byte("over tcp"))
	if got := readN(t, agent, len("redirected;over tcp")); string(got) != "redirected;over tcp" {
		t.Fatalf("the agent read %q", got)
	}
}

// A socket its agent reads in blocking mode is not adopted.
func TestOffloadRefusesBlockingSockets(t *testing.T) {
	o := openOffload(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0) // blocking
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	port := ln.Addr().(*net.TCPAddr).Port
	if err := unix.Connect(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	side, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer side.Close()
	if _, err := o.Tunnel(side.(*net.TCPConn)); !errors.Is(err, bpf.ErrNotAdopted) {
		t.Fatalf("Tunnel of a blocking agent socket: %v, want ErrNotAdopted", err)
	}
}

// When the agent closes its socket, Queued says so and the sidecar's sends fail.
func TestOffloadAgentGone(t *testing.T) {
	o := openOffload(t)
	agent, side := testutil.TCPPair(t)
	tun := switched(t, o, agent, side)
	agent.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := tun.Queued(); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Queued still answers for a closed agent socket")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := side.Write([]byte("to nobody")); err == nil {
		t.Fatal("a send to a closed agent's socket succeeded")
	}
}

// Closing the offload (a sidecar that exits or crashes) leaves nothing forwarding: once the kernel
// has freed the maps, the agent's socket is plain TCP again — its bytes are spliceable, which
// redirected ones are not — and the sidecar's socket sends over TCP.
func TestOffloadCloseReverts(t *testing.T) {
	testutil.RequireRoot(t)
	o, err := bpf.OpenOffload()
	if err != nil {
		t.Fatal(err)
	}
	agent, side := testutil.TCPPair(t)
	switched(t, o, agent, side)
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	rc, err := agent.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	p := make([]int, 2)
	if err := unix.Pipe2(p, unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	deadline := time.Now().Add(10 * time.Second)
	for {
		side.Write([]byte("x"))
		time.Sleep(10 * time.Millisecond)
		var n int64
		var serr error
		rc.Control(func(fd uintptr) {
			n, serr = unix.Splice(int(fd), nil, p[1], nil, 1, unix.SPLICE_F_NONBLOCK)
		})
		if n == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent's socket still is not plain TCP after Close: %v", os.NewSyscallError("splice", serr))
		}
	}
}
