package front

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// How a tunnel's bytes were carried, as its completion record's result.path names it.
const (
	PathOffload = "offload" // upstream→agent straight into the agent's socket (kernel offload)
	PathSplice  = "splice"  // both ways over TCP, moved by splice(2) without entering user space
	PathCopy    = "copy"    // both ways through a buffer (a connection that is not plain TCP)
)

// Queue is the agent's socket of an offloaded tunnel; *bpf.Offloaded implements it.
type Queue interface {
	// Switch sends what the sidecar relays to the agent straight into the agent's socket from now
	// on, once the agent has read what was relayed over TCP so far (false: not yet).
	Switch() (bool, error)
	// Queued is how many bytes wait unread in the agent's socket; an error once it is gone.
	Queued() (int, error)
	// Demote takes the tunnel back to plain TCP: what the sidecar sends from then on reaches the
	// agent over its TCP connection again, after what waits in its socket.
	Demote() error
}

// OffloadFunc hands an allowed tunnel's accepted connection to the kernel, before anything is
// relayed to the agent; once the agent has read the first bytes relayed over TCP, Queue.Switch
// sends the rest straight into its socket. It fails (and changes nothing) when the kernel cannot
// take the connection.
type OffloadFunc func(agent *net.TCPConn) (Queue, error)

// Bounds of an offloaded tunnel's queue in the agent's socket: the relay sends at most
// offloadQueue bytes beyond what the agent has read; an agent that stays full for offloadStall
// is given back plain TCP, whose flow control then waits for it without polling.
const (
	offloadQueue = 2 << 20
	offloadStall = 50 * time.Millisecond
)

// maxChunk bounds one move of a relay.
const maxChunk = 1 << 20

// relayed is how a tunnel's relay ended.
type relayed struct {
	up, down int64 // bytes agent→upstream, upstream→agent
	path     string
	idle     bool // ended because one side was gone and the other idle past the timeout
}

// relay carries an allowed tunnel both ways until both directions end, or until one has ended and
// the other stays idle for idle: a peer that half-closed and went silent does not hold the tunnel
// (and its descriptors) forever. queue, when not nil, is the offloaded agent socket: bytes to the
// agent are bounded by what it reads. The caller closes both connections afterwards.
func relay(agent, upstream net.Conn, queue Queue, idle time.Duration) relayed {
	r := &relayer{idle: idle}
	up := r.direction(agent, upstream, nil)
	down := r.direction(upstream, agent, queue)
	res := relayed{path: PathCopy}
	if up.mover.spliced && down.mover.spliced {
		res.path = PathSplice
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.pump(up, down)
	}()
	r.pump(down, up)
	wg.Wait()
	res.up, res.down, res.idle = up.n.Load(), down.n.Load(), r.timedOut.Load()
	if down.offloaded {
		res.path = PathOffload
	}
	return res
}

type relayer struct {
	idle     time.Duration
	ended    atomic.Int32 // directions that have ended
	timedOut atomic.Bool
}

// direction is one way of a tunnel.
type direction struct {
	src, dst net.Conn
	mover    *mover
	queue    Queue // an offloaded agent socket; nil once back to plain TCP for good
	n        atomic.Int64
	switched bool      // what this direction sends goes straight into the agent's socket
	queued   int       // switched: what may wait unread in the agent's socket, at most
	full     time.Time // switched: since when the agent's socket has been full
	// offloaded: the kernel carried some of this direction's bytes.
	offloaded bool
	waited    time.Duration // trySwitch's waits for the agent to read, so far
}

func (r *relayer) direction(src, dst net.Conn, queue Queue) *direction {
	src, dst = unwrap(src), unwrap(dst)
	d := &direction{src: src, dst: dst, mover: newMover(dst, src), queue: queue}
	if queue != nil {
		d.mover.ready = d.trySwitch
	}
	return d
}

// Switching an offloaded direction: a chunk is ready to go to the agent, and something went over
// TCP since its socket was adopted. Once the agent has read that, the chunk and the rest can go
// straight into its socket. A tunnel that has carried bulkSwitch bytes over TCP waits for the agent
// to catch up, at most switchWait in all: a bulk stream's agent is reading, but rarely has read
// everything at the instant a chunk is ready. A small flow never waits.
const (
	bulkSwitch = 256 << 10
	switchWait = 5 * time.Millisecond
)

// trySwitch switches d to the offload when the agent has read what came over TCP (the mover calls
// it with a chunk read and not yet written).
func (d *direction) trySwitch() {
	if d.queue == nil || d.switched || d.n.Load() == 0 {
		return
	}
	backoff := 50 * time.Microsecond
	for {
		ok, err := d.queue.Switch()
		switch {
		case err != nil:
			d.queue = nil
			return
		case ok:
			d.switched, d.offloaded, d.queued = true, true, 0
			return
		case d.n.Load() < bulkSwitch || d.waited >= switchWait:
			return
		}
		time.Sleep(backoff)
		d.waited += backoff
		backoff = min(2*backoff, time.Millisecond)
	}
}

// pump moves d until its source ends, then half-closes its destination. If other has ended already,
// or ends meanwhile, d's source gets the idle deadline, renewed with every move.
func (r *relayer) pump(d, other *direction) {
	defer func() {
		closeWrite(d.dst)
		if r.ended.Add(1) == 1 && r.idle > 0 {
			// The other way is all that is left: it ends when idle.
			other.src.SetReadDeadline(time.Now().Add(r.idle))
		}
	}()
	for {
		max := maxChunk
		if d.switched {
			var ok bool
			if max, ok = d.room(); !ok {
				return
			}
		}
		n, err := d.mover.move(max)
		if n > 0 {
			d.n.Add(int64(n))
			d.queued += n
			if r.ended.Load() > 0 && r.idle > 0 {
				d.src.SetReadDeadline(time.Now().Add(r.idle))
			}
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && r.ended.Load() > 0 {
				r.timedOut.Store(true)
				// Unblock the other way too, whatever it waits for.
				d.src.Close()
				d.dst.Close()
			}
			return
		}
	}
}

// room is how much an offloaded direction may move now without more than offloadQueue bytes
// waiting unread in the agent's socket. While the agent's socket is full it waits; if it stays
// full for offloadStall, the tunnel goes back to plain TCP (and ok stays true). ok is false when the
// agent's socket is gone.
func (d *direction) room() (max int, ok bool) {
	const minRoom = 64 << 10
	backoff := 100 * time.Microsecond
	for {
		if offloadQueue-d.queued >= minRoom {
			return offloadQueue - d.queued, true
		}
		q, err := d.queue.Queued()
		if err != nil {
			return 0, false
		}
		d.queued = q
		if offloadQueue-q >= minRoom {
			d.full = time.Time{}
			continue
		}
		if d.full.IsZero() {
			d.full = time.Now()
		} else if time.Since(d.full) >= offloadStall {
			// The agent reads slower than the upstream sends: let TCP's flow control wait for it.
			if err := d.queue.Demote(); err != nil {
				return 0, false
			}
			d.queue, d.switched = nil, false
			return maxChunk, true
		}
		// An agent reading at loopback speed drains the queue in about 2 ms: a longer sleep would
		// leave it waiting for the relay.
		time.Sleep(backoff)
		backoff = min(2*backoff, time.Millisecond)
	}
}

// unwrap returns the connection under wrappers whose buffered bytes have been consumed — a
// prefixConn, or any conn that exposes its own (NetConn) — so that a relay between two TCP
// connections can use splice(2).
func unwrap(c net.Conn) net.Conn {
	for {
		switch w := c.(type) {
		case *prefixConn:
			if w.prefix.Len() != 0 {
				return c
			}
			c = w.Conn
		case interface{ NetConn() net.Conn }:
			c = w.NetConn()
		default:
			return c
		}
	}
}

// bufferPool holds the buffers of relays between connections that cannot splice. A relay takes one
// only while it moves bytes.
var bufferPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyOnce moves one chunk from src to dst through a pooled buffer, calling ready (when not nil)
// between reading and writing it.
func copyOnce(dst, src net.Conn, max int, ready func()) (int, error) {
	bp := bufferPool.Get().(*[]byte)
	defer bufferPool.Put(bp)
	b := *bp
	if max < len(b) {
		b = b[:max]
	}
	n, err := src.Read(b)
	if n > 0 {
		if ready != nil {
			ready()
		}
		if m, werr := dst.Write(b[:n]); werr != nil {
			return m, werr
		}
	}
	if err == nil && n == 0 {
		err = io.ErrNoProgress
	}
	return n, err
}
