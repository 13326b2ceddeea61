//go:build linux

package testutil

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// NetNS is a named network namespace (ip netns add) made for one test and deleted afterwards, with
// its loopback up. Nothing in it can reach the host's network unless the test links it there.
type NetNS struct {
	Name string
	Path string // /run/netns/<Name>
}

// NewNetNS creates a fresh network namespace named firma-<rand>.
func NewNetNS(tb testing.TB) *NetNS {
	tb.Helper()
	RequireRoot(tb)
	RequireTool(tb, "ip")
	ns := &NetNS{Name: "firma-" + randHex(tb, 4)}
	ns.Path = filepath.Join("/run/netns", ns.Name)
	run(tb, "ip", "netns", "add", ns.Name)
	tb.Cleanup(func() {
		os.RemoveAll(filepath.Join("/etc/netns", ns.Name))
		if out, err := exec.Command("ip", "netns", "del", ns.Name).CombinedOutput(); err != nil {
			tb.Errorf("ip netns del %s: %v: %s", ns.Name, err, out)
		}
	})
	ns.IP(tb, "link", "set", "lo", "up")
	return ns
}

// IP runs `ip -n <ns> args…`, failing the test on error.
func (ns *NetNS) IP(tb testing.TB, args ...string) {
	tb.Helper()
	run(tb, "ip", append([]string{"-n", ns.Name}, args...)...)
}

// Sysctl sets a per-namespace sysctl (key in dotted form, net.ipv4.ping_group_range).
func (ns *NetNS) Sysctl(tb testing.TB, key, value string) {
	tb.Helper()
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	if err := ns.Do(func() error { return os.WriteFile(path, []byte(value), 0) }); err != nil {
		tb.Fatalf("sysctl %s=%s in %s: %v", key, value, ns.Name, err)
	}
}

// SetEtc makes name (resolv.conf, hosts, nsswitch.conf) read content for processes that Command
// starts: `ip netns exec` binds /etc/netns/<ns>/<name> over /etc/<name>.
func (ns *NetNS) SetEtc(tb testing.TB, name, content string) {
	tb.Helper()
	dir := filepath.Join("/etc/netns", ns.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		tb.Fatal(err)
	}
}

// Do runs fn on an OS thread switched into the namespace. Sockets fn creates stay in the namespace
// whichever thread uses them later.
func (ns *NetNS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: if switching back failed it must not run other goroutines,
		// and a goroutine that exits locked takes its thread with it.
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open(ns.Path)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("entering %s: %w", ns.Name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leaving %s: %w", ns.Name, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Command prepares name to run inside the namespace (with SetEtc's files as /etc) and, when cg is
// not nil, inside cg from before its first instruction: `ip netns exec` enters the namespace (and
// a mount namespace of its own, with a fresh /sys), a shell mounts cgroup2 there, moves itself
// into the cgroup and execs name, so cmd.Process.Pid is name's pid. The environment carries no
// proxy variables.
func (ns *NetNS) Command(ctx context.Context, tb testing.TB, cg *Cgroup, name string, args ...string) *exec.Cmd {
	tb.Helper()
	argv := []string{"netns", "exec", ns.Name}
	if cg != nil {
		argv = append(argv, "sh", "-c",
			`mount -t cgroup2 cgroup2 /sys/fs/cgroup && echo $$ > "/sys/fs/cgroup$0/cgroup.procs" && exec "$@"`, cg.Rel)
	}
	cmd := exec.CommandContext(ctx, "ip", append(append(argv, name), args...)...)
	cmd.Env = CleanEnv()
	return cmd
}

// NetLab is two network namespaces linked by one veth pair: Inside, where the enforced agent and
// the stand-in sidecar run (lo, and the veth with a default route over it), and Outside, which
// plays the rest of the world (listeners and a capture on its end of the veth). Packets that
// escape Inside can only reach Outside.
type NetLab struct {
	Inside, Outside     *NetNS
	InsideIf, OutsideIf string // the veth ends, in their namespaces
	InsideIfindex       int
	Inside4, Outside4   netip.Addr // 10.231.0.2, 10.231.0.1
	Inside6, Outside6   netip.Addr // fd00:231::2, fd00:231::1
}

// NewNetLab builds the two namespaces and the link between them.
func NewNetLab(tb testing.TB) *NetLab {
	tb.Helper()
	lab := &NetLab{
		Inside: NewNetNS(tb), Outside: NewNetNS(tb),
		InsideIf: "veth-in", OutsideIf: "veth-out",
		Inside4: netip.MustParseAddr("10.231.0.2"), Outside4: netip.MustParseAddr("10.231.0.1"),
		Inside6: netip.MustParseAddr("fd00:231::2"), Outside6: netip.MustParseAddr("fd00:231::1"),
	}
	lab.Inside.IP(tb, "link", "add", lab.InsideIf, "type", "veth", "peer", "name", lab.OutsideIf, "netns", lab.Outside.Name)
	for _, side := range []struct {
		ns           *NetNS
		ifname       string
		addr4, addr6 netip.Addr
	}{{lab.Inside, lab.InsideIf, lab.Inside4, lab.Inside6}, {lab.Outside, lab.OutsideIf, lab.Outside4, lab.Outside6}} {
		side.ns.IP(tb, "addr", "add", side.addr4.String()+"/24", "dev", side.ifname)
		side.ns.IP(tb, "addr", "add", side.addr6.String()+"/64", "dev", side.ifname, "nodad")
		side.ns.IP(tb, "link", "set", side.ifname, "up")
	}
	lab.Inside.IP(tb, "route", "add", "default", "via", lab.Outside4.String())
	lab.Inside.IP(tb, "-6", "route", "add", "default", "via", lab.Outside6.String())
	if err := lab.Inside.Do(func() error {
		ifc, err := net.InterfaceByName(lab.InsideIf)
		if err == nil {
			lab.InsideIfindex = ifc.Index
		}
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	return lab
}

// Sentry watches the outside of a NetLab: TCP and UDP listeners on both outside addresses and a
// capture on the outside end of the link. Whatever an enforced process gets out of Inside ends up
// here, and AssertSealed says so.
type Sentry struct {
	lab     *NetLab
	TCP     []*TCPCounter
	UDP     []*UDPCounter
	Capture *Capture
	// Marker is where Sync's marker datagrams go (Outside4, a port nothing listens on).
	Marker netip.AddrPort
}

// Watch starts a Sentry: TCP listeners on tcpPorts and UDP listeners on udpPorts of Outside4 and
// Outside6, and a capture on OutsideIf. markerPort must be a port that nothing else uses.
func (l *NetLab) Watch(tb testing.TB, tcpPorts, udpPorts []uint16, markerPort uint16) *Sentry {
	tb.Helper()
	s := &Sentry{lab: l, Marker: netip.AddrPortFrom(l.Outside4, markerPort)}
	if err := l.Outside.Do(func() error {
		for _, a := range []netip.Addr{l.Outside4, l.Outside6} {
			for _, p := range tcpPorts {
				s.TCP = append(s.TCP, NewTCPCounter(tb, netip.AddrPortFrom(a, p)))
			}
			for _, p := range udpPorts {
				s.UDP = append(s.UDP, NewUDPCounter(tb, netip.AddrPortFrom(a, p)))
			}
		}
		return nil
	}); err != nil {
		tb.Fatal(err)
	}
	s.Capture = l.Outside.Capture(tb, l.OutsideIf)
	return s
}

// Sync waits until the capture has read every frame that arrived before now (see Capture.Sync).
func (s *Sentry) Sync(tb testing.TB) {
	tb.Helper()
	s.Capture.Sync(tb, s.lab.Inside, s.Marker)
}

// AssertSealed fails the test if anything left the inside namespace: a frame on the outside end of
// the link, a connection or a datagram at an outside listener.
func (s *Sentry) AssertSealed(tb testing.TB) {
	tb.Helper()
	s.Sync(tb)
	for _, f := range s.Capture.Frames() {
		tb.Errorf("a packet left the inside namespace: %s", f.Summary)
	}
	for _, c := range s.TCP {
		if n := c.Conns(); n > 0 {
			tb.Errorf("outside listener %s accepted %d connections", c.Addr, n)
		}
	}
	for _, u := range s.UDP {
		if n := u.Datagrams(); n > 0 {
			tb.Errorf("outside UDP listener %s received %d datagrams", u.Addr, n)
		}
	}
}

// Frame is one frame a Capture saw arrive.
type Frame struct {
	EtherType uint16
	Summary   string // "ipv4 10.231.0.2 → 10.231.0.1 proto 17 (42 bytes)"
	Payload   []byte // everything after the Ethernet header
}

// Capture records every frame that arrives on one interface (an AF_PACKET socket, the view
// tcpdump has), leaving out neighbour discovery (ARP, IPv6 ND and MLD), which the kernel sends on
// its own.
type Capture struct {
	fd     int
	stop   atomic.Bool
	mu     sync.Mutex
	frames []Frame
	marker atomic.Pointer[string]
	seen   chan struct{}
}

// Capture starts capturing on ifname in the namespace until the test ends.
func (ns *NetNS) Capture(tb testing.TB, ifname string) *Capture {
	tb.Helper()
	c := &Capture{fd: -1, seen: make(chan struct{}, 1)}
	err := ns.Do(func() error {
		ifc, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		c.fd = fd
		// Wake up now and then to notice the end of the test.
		tv := unix.Timeval{Usec: 100_000}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifc.Index})
	})
	if err != nil {
		if c.fd >= 0 {
			unix.Close(c.fd)
		}
		tb.Fatalf("capture on %s in %s: %v", ifname, ns.Name, err)
	}
	done := make(chan struct{})
	go c.read(done)
	tb.Cleanup(func() {
		c.stop.Store(true)
		<-done
		unix.Close(c.fd)
	})
	return c
}

func (c *Capture) read(done chan struct{}) {
	defer close(done)
	buf := make([]byte, 65536)
	for !c.stop.Load() {
		n, from, err := unix.Recvfrom(c.fd, buf, 0)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			return
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if n < 14 {
			continue
		}
		f := Frame{EtherType: uint16(buf[12])<<8 | uint16(buf[13]), Payload: append([]byte(nil), buf[14:n]...)}
		if noise(f) {
			continue
		}
		if m := c.marker.Load(); m != nil && strings.Contains(string(f.Payload), *m) {
			select {
			case c.seen <- struct{}{}:
			default:
			}
			continue
		}
		f.Summary = summarize(f)
		c.mu.Lock()
		c.frames = append(c.frames, f)
		c.mu.Unlock()
	}
}

// Frames returns what arrived so far. Call Sync first to be sure everything sent before has been
// read.
func (c *Capture) Frames() []Frame {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Frame(nil), c.frames...)
}

// Sync sends a marker datagram from the far end of the link (from, a namespace whose packets
// arrive on the captured interface) to to, and waits until the capture has read it: every frame
// that arrived before it has been read too.
func (c *Capture) Sync(tb testing.TB, from *NetNS, to netip.AddrPort) {
	tb.Helper()
	marker := "firma-capture-marker-" + randHex(tb, 8)
	c.marker.Store(&marker)
	if err := from.Do(func() error {
		conn, err := net.Dial("udp", to.String())
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = conn.Write([]byte(marker))
		return err
	}); err != nil {
		tb.Fatalf("capture marker: %v", err)
	}
	select {
	case <-c.seen:
	case <-time.After(30 * time.Second):
		tb.Fatalf("the capture never saw its marker to %s", to)
	}
}

func noise(f Frame) bool {
	switch f.EtherType {
	case unix.ETH_P_ARP:
		return true
	case unix.ETH_P_IPV6:
		// ICMPv6 right after the header: MLD (130–132, 143), router/neighbour discovery (133–137).
		if len(f.Payload) > 40 && f.Payload[6] == 58 {
			t := f.Payload[40]
			return (t >= 130 && t <= 137) || t == 143
		}
		// MLD reports carry a hop-by-hop router alert first.
		return len(f.Payload) > 48 && f.Payload[6] == 0 && f.Payload[40] == 58 && (f.Payload[48] == 143 || f.Payload[48] == 131)
	}
	return false
}

func summarize(f Frame) string {
	p := f.Payload
	switch {
	case f.EtherType == unix.ETH_P_IP && len(p) >= 20:
		return fmt.Sprintf("ipv4 %s → %s proto %d (%d bytes)", netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20])), p[9], len(p))
	case f.EtherType == unix.ETH_P_IPV6 && len(p) >= 40:
		return fmt.Sprintf("ipv6 %s → %s next header %d (%d bytes)", netip.AddrFrom16([16]byte(p[8:24])), netip.AddrFrom16([16]byte(p[24:40])), p[6], len(p))
	}
	return fmt.Sprintf("ethertype %#04x (%d bytes)", f.EtherType, len(p))
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func run(tb testing.TB, name string, args ...string) {
	tb.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		tb.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}
