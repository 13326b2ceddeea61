//go:build linux

package daemon_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/internal/e2e"
	"github.com/openfirma/firma/internal/testutil"
)

// tlsUpstream is a TLS server on its own loopback address, port 443, that counts the raw bytes of
// every connection (TLS records included: what the sidecar's completion record counts) and serves
// each connection with its handler.
type tlsUpstream struct {
	addr    netip.AddrPort
	handle  func(*tls.Conn)
	mu      sync.Mutex
	conns   []*countedConn
	started atomic.Int64
}

type countedConn struct {
	net.Conn
	read, written atomic.Int64
	done          chan struct{} // closed when the server is done with the connection
}

func (c *countedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func (c *countedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

func newTLSUpstream(t *testing.T, ca *testutil.CA, name string, handle func(*tls.Conn)) *tlsUpstream {
	t.Helper()
	u := &tlsUpstream{addr: netip.AddrPortFrom(testutil.LoopbackAddr(t), 443), handle: handle}
	ln, err := net.Listen("tcp", u.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	// No session tickets: an agent that closes without reading them would reset its connection,
	// and a reset loses what it sent last.
	cfg := &tls.Config{Certificates: []tls.Certificate{ca.Leaf(t, name)}, SessionTicketsDisabled: true}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		u.mu.Lock()
		for _, c := range u.conns {
			c.Close()
		}
		u.mu.Unlock()
		wg.Wait()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			cc := &countedConn{Conn: c, done: make(chan struct{})}
			u.mu.Lock()
			u.conns = append(u.conns, cc)
			u.mu.Unlock()
			u.started.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer close(cc.done)
				defer cc.Close()
				u.handle(tls.Server(cc, cfg))
			}()
		}
	}()
	return u
}

// conn is the i-th connection the upstream accepted, waiting for it to arrive.
func (u *tlsUpstream) conn(t *testing.T, i int) *countedConn {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		u.mu.Lock()
		if len(u.conns) > i {
			c := u.conns[i]
			u.mu.Unlock()
			return c
		}
		u.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("the upstream got no connection %d", i)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// echo sends back everything it reads, then ends its side.
func echo(c *tls.Conn) {
	io.Copy(c, c)
	c.CloseWrite()
}

// completionFor waits for the completion record of the decision for host.
func completionFor(t *testing.T, s *e2e.Sidecar, host string) (decision, completion audit.Event) {
	t.Helper()
	d := s.WaitEvent(t, "deciding "+host, func(ev audit.Event) bool {
		return decisionFor(host)(ev) && ev.Decision.Outcome == "ALLOW"
	})
	c := s.WaitEvent(t, "completing "+host, func(ev audit.Event) bool {
		return ev.Kind == audit.KindCompletion && ev.DecisionID == d.ID
	})
	if c.Result == nil {
		t.Fatalf("completion %d has no result", c.Seq)
	}
	return d, c
}

// A TLS tunnel is offloaded: what the sidecar relays from the upstream goes straight into the
// agent's socket. A gibibyte each way, at once, arrives intact (the client checks every byte), and
// the completion record counts exactly what the upstream's socket read and wrote.
func TestOffloadedTunnelCarriesGiBBothWays(t *testing.T) {
	const n = 1 << 30
	ca := testutil.NewCA(t, "datapath CA")
	up := newTLSUpstream(t, ca, "bulk.allowed.test", echo)
	s := e2e.NewSidecar(t, e2e.SidecarOptions{Resolve: map[string]string{"bulk.allowed.test": up.addr.Addr().String()}})
	client := e2e.Binary(t, "benchclient")

	out, err := s.Run(t, client, "-mode", "stream", "-n", strconv.Itoa(n), "-cacert", ca.CertFile, "bulk.allowed.test:443")
	if err != nil {
		t.Fatalf("stream: %v\n%s\nsidecar:\n%s", err, out, s.Logs())
	}
	t.Logf("%s", strings.TrimSpace(out))
	c := up.conn(t, 0)
	<-c.done
	_, done := completionFor(t, s, "bulk.allowed.test")
	res := done.Result
	if res.Path != "offload" {
		t.Errorf("result.path = %q, want offload\nsidecar:\n%s", res.Path, s.Logs())
	}
	if res.BytesUp != c.read.Load() || res.BytesDown != c.written.Load() {
		t.Errorf("completion counts %d up, %d down; the upstream's socket read %d and wrote %d",
			res.BytesUp, res.BytesDown, c.read.Load(), c.written.Load())
	}
	if res.BytesUp < n || res.BytesDown < n {
		t.Errorf("completion counts %d up, %d down: less than the %d bytes of the stream", res.BytesUp, res.BytesDown, n)
	}
}

// An agent sends its request and shuts its side down; the upstream takes the half-close and neither
// answers nor closes. The sidecar ends the tunnel once the upstream has been silent for idle_timeout:
// it closes both connections (the agent, still reading, sees the end: its recv returns) and records
// the completion.
func TestTunnelEndsWhenUpstreamIdlesAfterAgentLeaves(t *testing.T) {
	const idle = time.Second
	ca := testutil.NewCA(t, "datapath CA")
	got := make(chan string, 1)
	silence := make(chan struct{})
	up := newTLSUpstream(t, ca, "silent.allowed.test", func(c *tls.Conn) {
		b, _ := io.ReadAll(c) // the agent's request, up to its half-close
		got <- string(b)
		<-silence // then nothing, and no close, until the test ends
	})
	t.Cleanup(func() { close(silence) })
	s := e2e.NewSidecar(t, e2e.SidecarOptions{
		Resolve:         map[string]string{"silent.allowed.test": up.addr.Addr().String()},
		TransparentTOML: fmt.Sprintf("idle_timeout = %q", idle),
	})
	out, err := s.Run(t, "python3", "-c", `import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
s = ctx.wrap_socket(socket.create_connection(("silent.allowed.test", 443)), server_hostname="silent.allowed.test")
s.sendall(b"request and goodbye")
s.shutdown(socket.SHUT_WR)
print("answer", s.recv(100))`, ca.CertFile)
	if err != nil || strings.TrimSpace(out) != "answer b''" {
		t.Fatalf("agent: %v\n%s\nsidecar:\n%s", err, out, s.Logs())
	}
	if r := <-got; r != "request and goodbye" {
		t.Fatalf("the upstream read %q", r)
	}
	_, done := completionFor(t, s, "silent.allowed.test")
	c := up.conn(t, 0)
	if d := time.Duration(done.Result.DurationMS) * time.Millisecond; d < idle {
		t.Errorf("the tunnel ended after %v, before the upstream had been idle for %v", d, idle)
	}
	if done.Result.BytesUp == 0 || done.Result.BytesUp != c.read.Load() {
		t.Errorf("completion counts %d bytes up; the upstream read %d", done.Result.BytesUp, c.read.Load())
	}
}

// The sidecar runs out of descriptors: agents' connections wait in the listen queue while the
// accept loop backs off and says so, and once descriptors are free again it accepts and serves
// them — the next agent gets through without a restart.
func TestAcceptSurvivesEMFILE(t *testing.T) {
	w := newWorld(t, e2e.SidecarOptions{})
	pid := w.PID()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	var lim unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &lim); err != nil {
		t.Fatal(err)
	}
	low := unix.Rlimit{Cur: uint64(len(fds) + 16), Max: lim.Max}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &low, nil); err != nil {
		t.Fatal(err)
	}
	t.Logf("sidecar %d: %d descriptors open, soft limit lowered to %d", pid, len(fds), low.Cur)

	// An agent holds 64 silent connections: the sidecar waits for each one's first bytes (sniff
	// timeout) with a descriptor per connection, and runs out.
	holder := w.Agent.Command(context.Background(), t, "python3", "-c", `import socket, sys
conns = [socket.create_connection(("allowed.test", 443), timeout=5) for _ in range(64)]
print("holding", flush=True)
sys.stdin.read()`)
	stdin, err := holder.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	line := make([]byte, 8)
	if _, err := io.ReadFull(stdout, line); err != nil || string(line) != "holding\n" {
		t.Fatalf("holder: %q %v", line, err)
	}
	waitLog(t, w.Sidecar, "accept failed: backing off")

	stdin.Close() // the holder exits and its connections close
	if err := holder.Wait(); err != nil {
		t.Fatalf("holder: %v", err)
	}
	if out, err := w.curl(t, "https://allowed.test/after"); err != nil || out != "hello from allowed /after\n" {
		t.Fatalf("after the descriptors came back: %v %q\n%s", err, out, w.Logs())
	}
	waitLog(t, w.Sidecar, "accepting again")
}

func waitLog(t *testing.T, s *e2e.Sidecar, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(s.Logs(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("the sidecar never logged %q:\n%s", want, s.Logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A sidecar killed in the middle of an offloaded tunnel takes the tunnel with it: the agent's
// connection fails, the upstream's is closed, and nothing the agent sends afterwards reaches the
// upstream. The restarted sidecar offloads new tunnels again.
func TestKill9EndsOffloadedTunnels(t *testing.T) {
	ca := testutil.NewCA(t, "datapath CA")
	up := newTLSUpstream(t, ca, "bulk.allowed.test", echo)
	s := e2e.NewSidecar(t, e2e.SidecarOptions{Resolve: map[string]string{"bulk.allowed.test": up.addr.Addr().String()}})
	client := e2e.Binary(t, "benchclient")

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	agent := s.Agent.Command(ctx, t, client, "-mode", "stream", "-n", strconv.Itoa(64<<30), "-cacert", ca.CertFile, "bulk.allowed.test:443")
	var out strings.Builder
	agent.Stdout, agent.Stderr = &out, &out
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	c := up.conn(t, 0)
	for c.read.Load() < 64<<20 {
		time.Sleep(10 * time.Millisecond)
	}
	s.Kill9(t)
	err := agent.Wait()
	var ee interface{ ExitCode() int }
	if err == nil || !errors.As(err, &ee) || ctx.Err() != nil {
		t.Fatalf("with its sidecar killed the agent's stream went on: %v\n%s", err, out.String())
	}
	t.Logf("agent: %s", strings.TrimSpace(out.String()))
	<-c.done // the upstream's connection ended with the sidecar
	if up.started.Load() != 1 {
		t.Fatalf("the upstream got %d connections, want 1", up.started.Load())
	}

	s.Start(t)
	if out, err := s.Run(t, client, "-mode", "stream", "-n", strconv.Itoa(32<<20), "-cacert", ca.CertFile, "bulk.allowed.test:443"); err != nil {
		t.Fatalf("after the restart: %v\n%s", err, out)
	}
	c2 := up.conn(t, 1)
	<-c2.done
	// The killed tunnel has no completion record (its decision is the record of it); the new one's
	// is the only one, and it was offloaded.
	done := s.WaitEvent(t, "completing the tunnel after the restart", func(ev audit.Event) bool {
		return ev.Kind == audit.KindCompletion && ev.Result != nil && ev.Envelope != nil && ev.Envelope.Transport.Mode == "connect"
	})
	if done.Result.Path != "offload" || done.Result.BytesUp != c2.read.Load() || done.Result.BytesDown != c2.written.Load() {
		t.Errorf("after the restart: path %q, %d up, %d down; want offload, %d up, %d down\n%s", done.Result.Path,
			done.Result.BytesUp, done.Result.BytesDown, c2.read.Load(), c2.written.Load(), s.Logs())
	}
}
