package front

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// tcpPair is a connected pair of TCP connections on loopback.
func tcpPair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// tunnelRig is an agent, the sidecar's two sockets and an upstream, all TCP.
type tunnelRig struct {
	agent, side, up, server *net.TCPConn
}

func newTunnelRig(t *testing.T) *tunnelRig {
	r := &tunnelRig{}
	r.agent, r.side = tcpPair(t)
	r.up, r.server = tcpPair(t)
	return r
}

func (r *tunnelRig) relay(queue Queue, idle time.Duration) <-chan relayed {
	done := make(chan relayed, 1)
	go func() {
		res := relay(r.side, r.up, queue, idle)
		r.side.Close()
		r.up.Close()
		done <- res
	}()
	return done
}

// Both ways at once, the relay carries every byte, splices between TCP sockets and counts exactly.
func TestRelayCarriesBothWays(t *testing.T) {
	r := newTunnelRig(t)
	done := r.relay(nil, time.Minute)
	up := bytes.Repeat([]byte("agent→upstream "), 200000)
	down := bytes.Repeat([]byte("upstream→agent "), 300000)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); r.agent.Write(up); r.agent.CloseWrite() }()
	go func() { defer wg.Done(); r.server.Write(down); r.server.CloseWrite() }()
	gotUp, _ := io.ReadAll(r.server)
	gotDown, _ := io.ReadAll(r.agent)
	wg.Wait()
	res := <-done
	if !bytes.Equal(gotUp, up) || !bytes.Equal(gotDown, down) {
		t.Fatalf("relayed %d and %d bytes, want %d and %d, intact", len(gotUp), len(gotDown), len(up), len(down))
	}
	if res.up != int64(len(up)) || res.down != int64(len(down)) || res.path != PathSplice || res.idle {
		t.Fatalf("relayed %+v", res)
	}
}

// An agent that half-closes leaves the tunnel to the upstream's side; an upstream that then stays
// silent (and open) has the tunnel ended after the idle timeout, both connections closed.
func TestRelayEndsHalfClosedIdleTunnel(t *testing.T) {
	r := newTunnelRig(t)
	done := r.relay(nil, 100*time.Millisecond)
	r.agent.Write([]byte("request"))
	r.agent.CloseWrite()
	b := make([]byte, 7)
	if _, err := io.ReadFull(r.server, b); err != nil {
		t.Fatal(err)
	}
	r.server.Write([]byte("partial answer")) // activity renews the timeout
	res := <-done
	if !res.idle || res.up != 7 || res.down != int64(len("partial answer")) {
		t.Fatalf("relayed %+v, want an idle end after 7 bytes up and the partial answer down", res)
	}
	rest, _ := io.ReadAll(r.agent)
	if string(rest) != "partial answer" {
		t.Fatalf("the agent got %q, then the end", rest)
	}
	if _, err := io.ReadAll(r.server); err != nil {
		t.Fatalf("the upstream's connection did not end cleanly: %v", err)
	}
}

// Tunnels whose both sides are open are never ended for being idle.
func TestRelayKeepsOpenIdleTunnel(t *testing.T) {
	r := newTunnelRig(t)
	done := r.relay(nil, 20*time.Millisecond)
	select {
	case res := <-done:
		t.Fatalf("an idle tunnel with both sides open ended: %+v", res)
	case <-time.After(200 * time.Millisecond):
	}
	r.agent.Close()
	r.server.Close()
	<-done
}

func openFDs(t *testing.T) int {
	t.Helper()
	runtime.GC()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd:", err)
	}
	return len(fds)
}

// An idle tunnel holds its two sockets and nothing else: the pipes that splice moves bytes through
// are taken only while bytes move, and go back to a small pool.
func TestRelayHoldsNoPipeWhileIdle(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("splice is Linux's")
	}
	const tunnels = 64
	var rigs []*tunnelRig
	var dones []<-chan relayed
	for range tunnels {
		rigs = append(rigs, newTunnelRig(t))
	}
	before := openFDs(t)
	for _, r := range rigs {
		dones = append(dones, r.relay(nil, time.Minute))
	}
	// Each tunnel carries a little both ways, then idles.
	for _, r := range rigs {
		r.agent.Write([]byte("ping"))
		r.server.Write([]byte("pong"))
	}
	b := make([]byte, 4)
	for _, r := range rigs {
		io.ReadFull(r.server, b)
		io.ReadFull(r.agent, b)
	}
	if extra := openFDs(t) - before; extra > maxIdlePipes*2 {
		t.Fatalf("%d idle tunnels hold %d descriptors more than their sockets (at most the pool's %d pipes)",
			tunnels, extra, maxIdlePipes)
	}
	for i, r := range rigs {
		r.agent.Close()
		r.server.Close()
		<-dones[i]
	}
}

// fakeQueue stands in for an offloaded agent socket.
type fakeQueue struct {
	mu       sync.Mutex
	switchOK bool
	switches int
	queued   int
	gone     bool
	demoted  atomic.Bool
}

func (q *fakeQueue) Switch() (bool, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.switches++
	return q.switchOK, nil
}

func (q *fakeQueue) Queued() (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.gone {
		return 0, errors.New("gone")
	}
	return q.queued, nil
}

func (q *fakeQueue) Demote() error { q.demoted.Store(true); return nil }

// The relay switches once it has relayed something over TCP, and bounds what it sends past
// what the agent has read: an agent whose socket stays full gets its tunnel back on TCP, where
// every byte still arrives.
func TestRelayOffloadSwitchesThenDemotesAStalledAgent(t *testing.T) {
	r := newTunnelRig(t)
	q := &fakeQueue{switchOK: true, queued: offloadQueue}
	done := r.relay(q, time.Minute)
	r.server.Write([]byte("first"))
	b := make([]byte, 5)
	io.ReadFull(r.agent, b)
	more := bytes.Repeat([]byte("x"), 2*offloadQueue)
	go func() { r.server.Write(more); r.server.CloseWrite() }()
	rest, _ := io.ReadAll(r.agent)
	r.agent.Close()
	res := <-done
	if !bytes.Equal(rest, more) || !q.demoted.Load() || res.path != PathOffload || res.down != int64(5+len(more)) {
		t.Fatalf("agent read %d bytes after %q, demoted=%v, relayed %+v", len(rest), b, q.demoted.Load(), res)
	}
}

// An offloaded agent socket that is gone ends the relay's way to the agent once the relay must
// ask how much waits in it.
func TestRelayOffloadAgentGone(t *testing.T) {
	r := newTunnelRig(t)
	q := &fakeQueue{switchOK: true, gone: true}
	done := r.relay(q, time.Minute)
	r.server.Write([]byte("first"))
	b := make([]byte, 5)
	io.ReadFull(r.agent, b)
	go r.server.Write(bytes.Repeat([]byte("x"), 2*offloadQueue))
	got, _ := io.ReadAll(r.agent) // ends: the relay half-closes the agent's side
	r.agent.Close()
	res := <-done
	if len(got) >= 2*offloadQueue || res.down != int64(5+len(got)) {
		t.Fatalf("the agent got %d more bytes after its socket was gone; relayed %+v", len(got), res)
	}
}
