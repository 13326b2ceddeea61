//go:build linux

package bpf_test

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/internal/testutil"
)

const labInboundPort = 8080

// TestSealInbound runs a server inside the enforced cgroup and dials it from outside (IPv4 and
// IPv6) and from a process outside the cgroup on the inside loopback — as the sidecar would when it
// lets an agent reach another agent's server. Without inbound ports every dial must fail, with an
// ingress report naming the server; with the port configured every dial must succeed, and still
// nothing but the server's replies may leave, not even from a socket bound to the inbound port.
func TestSealInbound(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		inbound []uint16
	}{{"closed", nil}, {"inbound port", []uint16{labInboundPort}}} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t, func(c *bpf.Config) { c.InboundPorts = tc.inbound })
			open := len(tc.inbound) > 0

			srv := l.command(t, escapeBinary(t), "-uid", "65534", "-listen", fmt.Sprint(labInboundPort))
			stdin, err := srv.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			stdout, err := srv.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := srv.Start(); err != nil {
				t.Fatal(err)
			}
			lines := bufio.NewScanner(stdout)
			if !lines.Scan() || !strings.HasPrefix(lines.Text(), `{"ready":true,`) {
				t.Fatalf("server did not start: %q", lines.Text())
			}

			dials := []struct {
				from *testutil.NetNS
				to   netip.AddrPort
			}{
				{l.Outside, netip.AddrPortFrom(l.Inside4, labInboundPort)},
				{l.Outside, netip.AddrPortFrom(l.Inside6, labInboundPort)},
				{l.Inside, netip.MustParseAddrPort(fmt.Sprintf("127.0.0.1:%d", labInboundPort))},
			}
			results := make([]error, len(dials))
			var wg sync.WaitGroup
			for i, d := range dials {
				wg.Go(func() {
					results[i] = d.from.Do(func() error {
						c, err := net.DialTimeout("tcp", d.to.String(), time.Second)
						if err == nil {
							c.Close()
						}
						return err
					})
				})
			}
			wg.Wait()
			for i, d := range dials {
				switch {
				case open && results[i] != nil:
					t.Errorf("dial %s with the port open: %v", d.to, results[i])
				case !open && results[i] == nil:
					t.Errorf("dial %s reached an enforced server", d.to)
				case !open:
					r, ok := l.refusals.await(func(r bpf.Refusal) bool {
						return r.Kind == bpf.RefusalIngress && r.LocalPort == labInboundPort &&
							r.PID == uint32(srv.Process.Pid) && r.Addr.Addr().Unmap() == sourceFor(l, d.to.Addr())
					})
					if !ok {
						t.Errorf("dial %s: no ingress report for the server (pid %d)", d.to, srv.Process.Pid)
					} else if r.Comm != "escape" || r.UID != 65534 || r.CgroupID != l.cg.ID {
						t.Errorf("dial %s: report names %q uid %d cgroup %d: %v", d.to, r.Comm, r.UID, r.CgroupID, r)
					}
				}
			}
			stdin.Close()
			var res attempt
			if !lines.Scan() || json.Unmarshal(lines.Bytes(), &res) != nil {
				t.Fatalf("server result: %q", lines.Text())
			}
			srv.Wait()
			if want := map[bool]int{true: len(dials), false: 0}[open]; res.Accepted != want {
				t.Errorf("server accepted %d connections, want %d", res.Accepted, want)
			}

			// Enforced client, enforced server on loopback: the connection goes to the sidecar,
			// which decides (and, to reach the server, dials it as above).
			got, pid := l.runEscape(t, "-only", "connect_local_listener,inbound_port_connect_out", "-inbound-port", fmt.Sprint(labInboundPort))
			l.checkAttempt(t, got["connect_local_listener"], outcome{answer: fmt.Sprintf("stand-in 127.0.0.1:%d", labInboundPort)})
			out := outcome{failed: "connect", errnos: []string{"TIMEOUT"}, report: bpf.RefusalEgress}
			if l.progs.Features().CompatSockopt {
				out = refused("compat setsockopt SO_BINDTODEVICE", bpf.RefusalSockopt)
			}
			l.checkAttempt(t, got["inbound_port_connect_out"], out)
			if got["connect_local_listener"].PID != pid {
				t.Errorf("escape pid %d, line says %d", pid, got["connect_local_listener"].PID)
			}

			if !open {
				l.assertSealed(t)
				return
			}
			// The server's replies (SYN-ACKs, ACKs, FINs) are all that may have left.
			l.sentry.Sync(t)
			replies := 0
			for _, f := range l.capture.Frames() {
				if tcpSourcePort(f) != labInboundPort {
					t.Errorf("a packet other than the inbound server's left: %s", f.Summary)
				}
				replies++
			}
			if replies == 0 {
				t.Error("the capture saw none of the server's replies: it is not capturing")
			}
		})
	}
}

// sourceFor is the address a dial to "to" comes from in the lab.
func sourceFor(l *lab, to netip.Addr) netip.Addr {
	switch {
	case to == l.Inside4:
		return l.Outside4
	case to == l.Inside6:
		return l.Outside6
	}
	return to
}

// tcpSourcePort is a captured TCP segment's source port, 0 for anything else.
func tcpSourcePort(f testutil.Frame) uint16 {
	p := f.Payload
	switch {
	case f.EtherType == unix.ETH_P_IP && len(p) >= 24 && p[0] == 0x45 && p[9] == unix.IPPROTO_TCP:
		return binary.BigEndian.Uint16(p[20:])
	case f.EtherType == unix.ETH_P_IPV6 && len(p) >= 44 && p[6] == unix.IPPROTO_TCP:
		return binary.BigEndian.Uint16(p[40:])
	}
	return 0
}
