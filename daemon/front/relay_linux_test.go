package front

import (
	"io"
	"os"
	"runtime"
	"testing"
	"time"
)

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
