package front

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openfirma/firma/internal/testutil"
)

// tunnelRig is an agent, the sidecar's two sockets and an upstream, all TCP.
type tunnelRig struct {
	agent, side, up, server *net.TCPConn
}

func newTunnelRig(t *testing.T) *tunnelRig {
	r := &tunnelRig{}
	r.agent, r.side = testutil.TCPPair(t)
	r.up, r.server = testutil.TCPPair(t)
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

// fakeQueue stands in for an offloaded agent socket.
type fakeQueue struct {
	mu       sync.Mutex
	switchOK bool
	notYet   int       // Switch answers false this many times before switchOK counts
	notUntil time.Time // and until then
	switches int
	queued   int
	gone     bool
	demoted  atomic.Bool
}

func (q *fakeQueue) Switch() (bool, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.switches++
	if q.switches <= q.notYet || time.Now().Before(q.notUntil) {
		return false, nil
	}
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

// A bulk stream's agent rarely has read everything at the instant the next chunk is ready: the
// relay waits a little for it, once, and offloads the rest. A small flow never waits: it asks once
// per chunk.
func TestRelayOffloadWaitsForABulkAgentToCatchUp(t *testing.T) {
	r := newTunnelRig(t)
	q := &fakeQueue{switchOK: true, notUntil: time.Now().Add(time.Hour)}
	done := r.relay(q, time.Minute)
	first := bytes.Repeat([]byte("a"), bulkSwitch)
	r.server.Write(first)
	io.ReadFull(r.agent, make([]byte, len(first)))
	q.mu.Lock()
	q.notUntil = time.Now().Add(2 * time.Millisecond) // the agent has bytes to read, for less than switchWait
	q.mu.Unlock()
	more := bytes.Repeat([]byte("b"), 32<<10) // one chunk

	go func() { r.server.Write(more); r.server.CloseWrite() }()
	rest, _ := io.ReadAll(r.agent)
	r.agent.Close()
	res := <-done
	if !bytes.Equal(rest, more) || res.path != PathOffload {
		t.Fatalf("agent read %d bytes, %d switch attempts, relayed %+v", len(rest), q.switches, res)
	}

	r = newTunnelRig(t)
	q = &fakeQueue{switchOK: true, notYet: 1 << 30}
	done = r.relay(q, time.Minute)
	for _, m := range []string{"hello", "world"} {
		r.server.Write([]byte(m))
		io.ReadFull(r.agent, make([]byte, len(m)))
	}
	r.server.CloseWrite()
	io.ReadAll(r.agent)
	r.agent.Close()
	if res := <-done; res.path == PathOffload || q.switches != 1 {
		t.Fatalf("a small flow: %d switch attempts, relayed %+v", q.switches, res)
	}
}
