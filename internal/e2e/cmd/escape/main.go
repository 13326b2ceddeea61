//go:build linux

// Command escape is the attacker that firma's kernel tests run inside an enforced cgroup and a
// network namespace of the test's own: it tries, one after the other, every way out of the cgroup
// that the tests know of (socket options that reroute, per-message cmsgs, source routes, compat
// syscalls, other socket families, binding the sidecar's ports…) and prints one JSON line per
// technique saying which syscalls succeeded and which one failed with what errno. It judges
// nothing: the test compares the lines, what reached its listeners and capture, and the kernel's
// refusal reports.
//
// It must only ever be pointed at addresses of the test's own namespaces.
//
//	escape -target4 A -target6 A -port N -ifname IF -src4 A -src6 A -sidecar-port N -dns-port N
//	       [-uid N] [-only a,b] [-skip a,b] [-raw-frames]
//	       [-more -proxy-port N -sidecar-pid N -control PATH]   (also the techniques aimed at a real sidecar)
//	       [-hold]   (print {"hold":PID}, wait for a line on stdin, then go)
//	escape -impostor PATH [-uid N]   pose as the sidecar on a control socket path (more_linux.go)
//	escape -listen N      listen on [::]:N, print {"ready":true,"pid":PID}; when stdin closes, print
//	                      how many connections were accepted
//	escape -list          print the technique names
package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// attempt is the JSON line printed for one technique.
type attempt struct {
	Technique string   `json:"technique"`
	PID       int      `json:"pid"`
	UID       int      `json:"uid"`
	Ops       []string `json:"ops"`              // the syscalls that succeeded, in order
	Failed    string   `json:"failed,omitempty"` // the syscall that failed
	Errno     string   `json:"errno,omitempty"`  // its errno (EPERM, …, or TIMEOUT)
	Cookies   []uint64 `json:"cookies,omitempty"`
	Accepted  int      `json:"accepted,omitempty"` // listen: connections accepted
	Peer      string   `json:"peer,omitempty"`     // getpeername of a connected socket
	Note      string   `json:"note,omitempty"`
}

// step records one syscall's outcome and reports whether to go on.
func (a *attempt) step(op string, err error) bool {
	if err != nil {
		a.Failed, a.Errno = op, errnoName(err)
		return false
	}
	a.Ops = append(a.Ops, op)
	return true
}

var errTimeout = errors.New("TIMEOUT")

func errnoName(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		if n := unix.ErrnoName(errno); n != "" {
			return n
		}
	}
	return err.Error()
}

// socket opens a socket and records its cookie.
func (a *attempt) socket(domain, typ, proto int) (int, bool) {
	fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, proto)
	if !a.step("socket", err) {
		return -1, false
	}
	if c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE); err == nil {
		a.Cookies = append(a.Cookies, c)
	}
	return fd, true
}

type config struct {
	target4, target6, src4, src6 netip.Addr
	port, sidecarPort, dnsPort   int
	ifname                       string
	ifindex                      int
	rawFrames                    bool
	inboundPort                  int
	// The real sidecar's, for the techniques of -more (more_linux.go).
	proxyPort, sidecarPID int
	control               string
}

type technique struct {
	name string
	run  func(c *config, a *attempt)
}

func main() {
	var (
		c                            config
		target4, target6, src4, src6 string
		uid                          = flag.Int("uid", -1, "drop to this uid (and gid) first")
		only                         = flag.String("only", "", "comma-separated techniques to run (default all)")
		listen                       = flag.Int("listen", 0, "listen on [::]:N until stdin closes")
		list                         = flag.Bool("list", false, "print the technique names")
		more                         = flag.Bool("more", false, "also run the techniques aimed at a real sidecar (more_linux.go)")
		skip                         = flag.String("skip", "", "comma-separated techniques not to run")
		hold                         = flag.Bool("hold", false, `print {"hold":PID} and wait for a line on stdin before trying anything`)
		impostor                     = flag.String("impostor", "", "pose as the sidecar on this control socket path")
	)
	flag.StringVar(&target4, "target4", "", "an outside IPv4 address")
	flag.StringVar(&target6, "target6", "", "an outside IPv6 address")
	flag.StringVar(&src4, "src4", "", "this namespace's IPv4 address on the outside link")
	flag.StringVar(&src6, "src6", "", "this namespace's IPv6 address on the outside link")
	flag.IntVar(&c.port, "port", 0, "outside port for TCP and UDP")
	flag.IntVar(&c.sidecarPort, "sidecar-port", 0, "the sidecar's transparent port")
	flag.IntVar(&c.dnsPort, "dns-port", 0, "the sidecar's resolver port")
	flag.StringVar(&c.ifname, "ifname", "", "the interface that leads outside")
	flag.BoolVar(&c.rawFrames, "raw-frames", false, "send a frame if an AF_PACKET socket is allowed")
	flag.IntVar(&c.inboundPort, "inbound-port", 0, "a port the programs let enforced processes accept on")
	flag.IntVar(&c.proxyPort, "proxy-port", 0, "the sidecar's explicit proxy port on 127.0.0.1")
	flag.IntVar(&c.sidecarPID, "sidecar-pid", 0, "the sidecar's pid")
	flag.StringVar(&c.control, "control", "", "the sidecar's control socket")
	flag.Parse()

	if *list {
		for _, t := range slices.Concat(techniques, optIn, moreTechniques) {
			fmt.Println(t.name)
		}
		return
	}
	if *uid >= 0 {
		if err := dropTo(*uid); err != nil {
			fail(err)
		}
	}
	if *listen > 0 {
		emit(listenUntilEOF(*listen))
		return
	}
	if *impostor != "" {
		poseAsSidecar(*impostor)
		return
	}
	if *hold {
		// In a PID namespace (firma run) the pid this process sees is not the one the kernel
		// reports: the test finds that one while this waits.
		fmt.Printf("{\"hold\":%d}\n", os.Getpid())
		if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
			fail(fmt.Errorf("waiting on stdin: %w", err))
		}
	}
	var err error
	for _, p := range []struct {
		s string
		a *netip.Addr
	}{{target4, &c.target4}, {target6, &c.target6}, {src4, &c.src4}, {src6, &c.src6}} {
		if *p.a, err = netip.ParseAddr(p.s); err != nil {
			fail(fmt.Errorf("bad address %q: %w", p.s, err))
		}
	}
	if ifc, err := netIndex(c.ifname); err == nil {
		c.ifindex = ifc
	} else {
		fail(err)
	}
	want, skipped := strings.Split(*only, ","), strings.Split(*skip, ",")
	all := techniques
	if *more {
		all = slices.Concat(all, moreTechniques)
	}
	if *only != "" {
		all = slices.Concat(techniques, optIn, moreTechniques)
	}
	for _, t := range all {
		if *only != "" && !slices.Contains(want, t.name) || slices.Contains(skipped, t.name) {
			continue
		}
		a := &attempt{Technique: t.name, PID: os.Getpid(), UID: os.Getuid(), Ops: []string{}}
		t.run(&c, a)
		emit(a)
	}
}

func dropTo(uid int) error {
	if err := syscall.Setgroups(nil); err != nil {
		return err
	}
	if err := syscall.Setresgid(uid, uid, uid); err != nil {
		return err
	}
	return syscall.Setresuid(uid, uid, uid)
}

func netIndex(name string) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, fmt.Errorf("index of %s: %w", name, err)
	}
	return int(ifr.Uint32()), nil
}

func emit(a *attempt) {
	b, _ := json.Marshal(a)
	fmt.Println(string(b))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "escape:", err)
	os.Exit(2)
}

func sa4(a netip.Addr, port int) *unix.SockaddrInet4 {
	return &unix.SockaddrInet4{Port: port, Addr: a.As4()}
}
func sa6(a netip.Addr, port int) *unix.SockaddrInet6 {
	return &unix.SockaddrInet6{Port: port, Addr: a.As16()}
}

func mapped(a netip.Addr) netip.Addr { return netip.AddrFrom16(a.As16()) }

// connectWait connects a non-blocking socket and waits a moment for the handshake: a SYN that the
// kernel drops is retransmitted for minutes, and TIMEOUT is then the answer.
func connectWait(a *attempt, fd int, to unix.Sockaddr) bool {
	err := unix.Connect(fd, to)
	if err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return a.step("connect", err)
	}
	if err == nil {
		return a.step("connect", nil)
	}
	return a.step("connect", waitWritable(fd))
}

func waitWritable(fd int) error {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	n, err := unix.Poll(pfd, 1500)
	if err != nil {
		return err
	}
	if n == 0 {
		return errTimeout
	}
	soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return err
	}
	if soErr != 0 {
		return syscall.Errno(soErr)
	}
	return nil
}

// hello writes the technique's name on a connected socket and reads the answer, so the stand-in
// sidecar can tell which technique reached it.
func hello(a *attempt, fd int) {
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 2})
	if !a.step("write", writeAll(fd, []byte("hello "+a.Technique+"\n"))) {
		return
	}
	buf := make([]byte, 64)
	n, err := unix.Read(fd, buf)
	if a.step("read", err) {
		a.Note = strings.TrimSpace(string(buf[:max(n, 0)]))
	}
}

func writeAll(fd int, b []byte) error {
	_, err := unix.Write(fd, b)
	return err
}

// tcpThen opens a TCP socket of the family, applies set, and — only if set succeeded, that is if
// the option was not refused — connects (non-blocking) to the outside, so that the packet backstop
// is what stops it.
func tcpThen(c *config, a *attempt, v6 bool, set func(fd int) error, op string) {
	domain, to := unix.AF_INET, unix.Sockaddr(sa4(c.target4, c.port))
	if v6 {
		domain, to = unix.AF_INET6, sa6(c.target6, c.port)
	}
	fd, ok := a.socket(domain, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
	if !ok {
		return
	}
	defer unix.Close(fd)
	if a.step(op, set(fd)) {
		connectWait(a, fd, to)
	}
}

// udpDNSThen opens a UDP socket, applies set, and — if it was not refused — sends a DNS-looking
// datagram to the outside's port 53 (which the programs redirect to the resolver).
func udpDNSThen(c *config, a *attempt, v6 bool, set func(fd int) error, op string) {
	domain, to := unix.AF_INET, unix.Sockaddr(sa4(c.target4, 53))
	if v6 {
		domain, to = unix.AF_INET6, sa6(c.target6, 53)
	}
	fd, ok := a.socket(domain, unix.SOCK_DGRAM, 0)
	if !ok {
		return
	}
	defer unix.Close(fd)
	if a.step(op, set(fd)) {
		a.step("sendto", unix.Sendto(fd, dnsQuery(), 0, to))
	}
}

func setInt(level, opt, v int) func(int) error {
	return func(fd int) error { return unix.SetsockoptInt(fd, level, opt, v) }
}

func setBytes(level, opt int, v []byte) func(int) error {
	return func(fd int) error { return unix.SetsockoptString(fd, level, opt, string(v)) }
}

// sendmsgCmsg sends a DNS-looking datagram to the outside's port 53 with one control message.
func sendmsgCmsg(c *config, a *attempt, domain int, to unix.Sockaddr, oob []byte) {
	fd, ok := a.socket(domain, unix.SOCK_DGRAM, 0)
	if !ok {
		return
	}
	defer unix.Close(fd)
	a.step("sendmsg", unix.Sendmsg(fd, dnsQuery(), oob, to, 0))
}

func cmsg(level, typ int, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = int32(level), int32(typ)
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

// sourceRoute is an IPv4 loose (0x83) or strict (0x89) source route option via hop.
func sourceRoute(kind byte, hop netip.Addr) []byte {
	h := hop.As4()
	return []byte{kind, 7, 4, h[0], h[1], h[2], h[3], 0 /* end of options */}
}

// srh is an IPv6 segment routing header (type 4) with one segment; type0 builds the deprecated
// type 0 routing header instead.
func srh(seg netip.Addr, type0 bool) []byte {
	s := seg.As16()
	h := []byte{0, 2, 4, 0, 0, 0, 0, 0}
	if type0 {
		h = []byte{0, 2, 0, 1, 0, 0, 0, 0}
	}
	return append(h, s[:]...)
}

func pktinfo6(addr netip.Addr, ifindex int) []byte {
	b := make([]byte, 20)
	a := addr.As16()
	copy(b, a[:])
	binary.NativeEndian.PutUint32(b[16:], uint32(ifindex))
	return b
}

func pktinfo4(c *config) []byte {
	return unix.PktInfo4(&unix.Inet4Pktinfo{Ifindex: int32(c.ifindex), Spec_dst: c.src4.As4()})
}

// dnsQuery is a query for example.test A.
func dnsQuery() []byte {
	q := []byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}
	for _, l := range []string{"example", "test"} {
		q = append(q, byte(len(l)))
		q = append(q, l...)
	}
	return append(q, 0, 0, 1, 0, 1)
}

func ifaceName(c *config) []byte { return append([]byte(c.ifname), 0) }

func ifindexBE(c *config) int {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(c.ifindex))
	return int(binary.NativeEndian.Uint32(b[:]))
}

var techniques = []technique{
	// What must keep working: redirected to the stand-in sidecar.
	{"connect4", func(c *config, a *attempt) { plainConnect(a, unix.AF_INET, sa4(c.target4, c.port)) }},
	{"connect6", func(c *config, a *attempt) { plainConnect(a, unix.AF_INET6, sa6(c.target6, c.port)) }},
	{"connect_mapped", func(c *config, a *attempt) {
		plainConnect(a, unix.AF_INET6, sa6(mapped(c.target4), c.port))
	}},
	{"tfo_to_sidecar", func(c *config, a *attempt) {
		fd, ok := a.socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		if !ok {
			return
		}
		defer unix.Close(fd)
		if a.step("sendto MSG_FASTOPEN", unix.Sendto(fd, []byte("hello "+a.Technique+"\n"), unix.MSG_FASTOPEN, sa4(c.target4, c.port))) {
			buf := make([]byte, 64)
			unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 2})
			n, err := unix.Read(fd, buf)
			if a.step("read", err) {
				a.Note = strings.TrimSpace(string(buf[:max(n, 0)]))
			}
		}
	}},
	{"dns_udp", func(c *config, a *attempt) {
		fd, ok := a.socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if !ok {
			return
		}
		defer unix.Close(fd)
		if !a.step("sendto", unix.Sendto(fd, dnsQuery(), 0, sa4(c.target4, 53))) {
			return
		}
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 2})
		buf := make([]byte, 512)
		_, from, err := unix.Recvfrom(fd, buf, 0)
		if a.step("recvfrom", err) {
			a.Note = sockaddrString(from)
		}
	}},

	// Refused at the syscall.
	{"sidecar_direct", func(c *config, a *attempt) {
		fd, ok := a.socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		if ok {
			defer unix.Close(fd)
			a.step("connect", unix.Connect(fd, sa4(netip.MustParseAddr("127.0.0.1"), c.sidecarPort)))
		}
	}},
	{"udp_other_port", func(c *config, a *attempt) {
		fd, ok := a.socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if ok {
			defer unix.Close(fd)
			a.step("sendto", unix.Sendto(fd, []byte("x"), 0, sa4(c.target4, c.port)))
		}
	}},
	{"udp_connect_other_port", func(c *config, a *attempt) {
		fd, ok := a.socket(unix.AF_INET6, unix.SOCK_DGRAM, 0)
		if ok {
			defer unix.Close(fd)
			a.step("connect", unix.Connect(fd, sa6(c.target6, c.port)))
		}
	}},
	{"raw_ip", func(c *config, a *attempt) { closeIf(a.socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_UDP)) }},
	{"ping_socket", func(c *config, a *attempt) { closeIf(a.socket(unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_ICMP)) }},
	{"mptcp", func(c *config, a *attempt) { closeIf(a.socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_MPTCP)) }},

	// Route-changing socket options: refused; if one were not, the connect or datagram after it
	// meets the packet backstop.
	{"so_bindtodevice_connect", func(c *config, a *attempt) {
		tcpThen(c, a, false, setBytes(unix.SOL_SOCKET, unix.SO_BINDTODEVICE, ifaceName(c)), "setsockopt SO_BINDTODEVICE")
	}},
	{"so_bindtodevice_tfo", func(c *config, a *attempt) {
		fd, ok := a.socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		if !ok {
			return
		}
		defer unix.Close(fd)
		if a.step("setsockopt SO_BINDTODEVICE", setBytes(unix.SOL_SOCKET, unix.SO_BINDTODEVICE, ifaceName(c))(fd)) {
			tfoOut(c, a, fd)
		}
	}},
	{"so_bindtoifindex_connect", func(c *config, a *attempt) {
		tcpThen(c, a, false, setInt(unix.SOL_SOCKET, unix.SO_BINDTOIFINDEX, c.ifindex), "setsockopt SO_BINDTOIFINDEX")
	}},
	{"ip_unicast_if_connect", func(c *config, a *attempt) {
		tcpThen(c, a, false, setInt(unix.SOL_IP, unix.IP_UNICAST_IF, ifindexBE(c)), "setsockopt IP_UNICAST_IF")
	}},
	{"ip_unicast_if_dns", func(c *config, a *attempt) {
		udpDNSThen(c, a, false, setInt(unix.SOL_IP, unix.IP_UNICAST_IF, ifindexBE(c)), "setsockopt IP_UNICAST_IF")
	}},
	{"ipv6_unicast_if_connect", func(c *config, a *attempt) {
		tcpThen(c, a, true, setInt(unix.SOL_IPV6, unix.IPV6_UNICAST_IF, c.ifindex), "setsockopt IPV6_UNICAST_IF")
	}},
	{"ipv6_rthdr_type0", func(c *config, a *attempt) {
		udpDNSThen(c, a, true, setBytes(unix.SOL_IPV6, unix.IPV6_RTHDR, srh(c.target6, true)), "setsockopt IPV6_RTHDR")
	}},
	{"ipv6_rthdr_srh", func(c *config, a *attempt) {
		udpDNSThen(c, a, true, setBytes(unix.SOL_IPV6, unix.IPV6_RTHDR, srh(c.target6, false)), "setsockopt IPV6_RTHDR")
	}},
	{"ipv6_dstopts", func(c *config, a *attempt) {
		udpDNSThen(c, a, true, setBytes(unix.SOL_IPV6, unix.IPV6_DSTOPTS, []byte{0, 0, 1, 4, 0, 0, 0, 0}), "setsockopt IPV6_DSTOPTS")
	}},
	{"ip_options_lsrr", func(c *config, a *attempt) {
		tcpThen(c, a, false, setBytes(unix.SOL_IP, unix.IP_OPTIONS, sourceRoute(0x83, c.target4)), "setsockopt IP_OPTIONS")
	}},
	{"ip_options_ssrr", func(c *config, a *attempt) {
		udpDNSThen(c, a, false, setBytes(unix.SOL_IP, unix.IP_OPTIONS, sourceRoute(0x89, c.target4)), "setsockopt IP_OPTIONS")
	}},
	{"so_mark", func(c *config, a *attempt) {
		tcpThen(c, a, false, setInt(unix.SOL_SOCKET, unix.SO_MARK, 7), "setsockopt SO_MARK")
	}},
	{"so_dontroute", func(c *config, a *attempt) {
		tcpThen(c, a, false, setInt(unix.SOL_SOCKET, unix.SO_DONTROUTE, 1), "setsockopt SO_DONTROUTE")
	}},
	{"ip_transparent", func(c *config, a *attempt) {
		tcpThen(c, a, false, setInt(unix.SOL_IP, unix.IP_TRANSPARENT, 1), "setsockopt IP_TRANSPARENT")
	}},
	{"ip_freebind", func(c *config, a *attempt) {
		tcpThen(c, a, false, setInt(unix.SOL_IP, unix.IP_FREEBIND, 1), "setsockopt IP_FREEBIND")
	}},
	{"ipv6_pktinfo_sticky", func(c *config, a *attempt) {
		udpDNSThen(c, a, true, setBytes(unix.SOL_IPV6, unix.IPV6_PKTINFO, pktinfo6(c.src6, c.ifindex)), "setsockopt IPV6_PKTINFO")
	}},
	{"ipv6_pktinfo_sticky_zero", func(c *config, a *attempt) {
		// An all-zero value routes nothing: allowed, and the query then goes to the resolver.
		udpDNSThen(c, a, true, setBytes(unix.SOL_IPV6, unix.IPV6_PKTINFO, make([]byte, 20)), "setsockopt IPV6_PKTINFO")
	}},
	{"ipv6_2292pktoptions", func(c *config, a *attempt) {
		udpDNSThen(c, a, true, setBytes(unix.SOL_IPV6, unix.IPV6_2292PKTOPTIONS, cmsg(unix.SOL_IPV6, unix.IPV6_2292RTHDR, srh(c.target6, false))), "setsockopt IPV6_2292PKTOPTIONS")
	}},
	{"ip_xfrm_policy", func(c *config, a *attempt) {
		tcpThen(c, a, false, setBytes(unix.SOL_IP, unix.IP_XFRM_POLICY, make([]byte, 64)), "setsockopt IP_XFRM_POLICY")
	}},
	{"udp_encap", func(c *config, a *attempt) {
		udpDNSThen(c, a, false, setInt(unix.SOL_UDP, unix.UDP_ENCAP, unix.UDP_ENCAP_ESPINUDP), "setsockopt UDP_ENCAP")
	}},
	{"tcp_repair", func(c *config, a *attempt) {
		tcpThen(c, a, false, setInt(unix.SOL_TCP, unix.TCP_REPAIR, 1), "setsockopt TCP_REPAIR")
	}},

	// The sidecar's ports, to steal its traffic while it restarts.
	{"bind_sidecar_any", func(c *config, a *attempt) {
		bindTo(a, unix.AF_INET, unix.SOCK_STREAM, sa4(netip.IPv4Unspecified(), c.sidecarPort), false)
	}},
	{"bind_sidecar_link_reuseport", func(c *config, a *attempt) {
		bindTo(a, unix.AF_INET, unix.SOCK_STREAM, sa4(c.src4, c.sidecarPort), true)
	}},
	{"bind_sidecar6", func(c *config, a *attempt) {
		bindTo(a, unix.AF_INET6, unix.SOCK_STREAM, sa6(netip.IPv6Unspecified(), c.sidecarPort), false)
	}},
	{"bind_dns_reuseport", func(c *config, a *attempt) {
		bindTo(a, unix.AF_INET, unix.SOCK_DGRAM, sa4(netip.MustParseAddr("127.0.0.1"), c.dnsPort), true)
	}},
	{"bind_ephemeral_is_sidecar", func(c *config, a *attempt) {
		// A per-socket ephemeral range of exactly the sidecar's port: bind(…, 0) gets it.
		fd, ok := a.socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		if !ok {
			return
		}
		defer unix.Close(fd)
		if a.step("setsockopt IP_LOCAL_PORT_RANGE", unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_LOCAL_PORT_RANGE, c.sidecarPort|c.sidecarPort<<16)) &&
			a.step("bind", unix.Bind(fd, sa4(c.src4, 0))) {
			if sa, err := unix.Getsockname(fd); err == nil {
				a.Note = fmt.Sprintf("bound port %d", sa.(*unix.SockaddrInet4).Port)
			}
		}
	}},

	// Per-message control messages cannot be refused at setsockopt: the packet backstop drops them.
	{"ip_pktinfo_cmsg", func(c *config, a *attempt) {
		sendmsgCmsg(c, a, unix.AF_INET, sa4(c.target4, 53), pktinfo4(c))
	}},
	{"ipv6_pktinfo_cmsg", func(c *config, a *attempt) {
		sendmsgCmsg(c, a, unix.AF_INET6, sa6(c.target6, 53), cmsg(unix.SOL_IPV6, unix.IPV6_PKTINFO, pktinfo6(c.src6, c.ifindex)))
	}},
	{"mapped_pktinfo_cmsg", func(c *config, a *attempt) {
		sendmsgCmsg(c, a, unix.AF_INET6, sa6(mapped(c.target4), 53), cmsg(unix.SOL_IPV6, unix.IPV6_PKTINFO, pktinfo6(mapped(c.src4), c.ifindex)))
	}},
	{"ip_retopts_cmsg", func(c *config, a *attempt) {
		sendmsgCmsg(c, a, unix.AF_INET, sa4(c.target4, 53), cmsg(unix.SOL_IP, unix.IP_RETOPTS, sourceRoute(0x83, c.target4)))
	}},
	{"ip_options_rr_cmsg", func(c *config, a *attempt) {
		// Record route reroutes nothing, and the datagram goes over loopback: dropped for
		// carrying IPv4 options at all.
		sendmsgCmsg(c, a, unix.AF_INET, sa4(c.target4, 53), cmsg(unix.SOL_IP, unix.IP_RETOPTS, []byte{7, 7, 4, 0, 0, 0, 0, 0}))
	}},
	{"ipv6_rthdr_cmsg", func(c *config, a *attempt) {
		// Per-message routing headers: the kernel takes only type 2 (Mobile IPv6), if built in.
		sendmsgCmsg(c, a, unix.AF_INET6, sa6(c.target6, 53), cmsg(unix.SOL_IPV6, unix.IPV6_RTHDR, []byte{0, 2, 2, 1, 0, 0, 0, 0, 0xfd, 0, 2, 0x31, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}))
	}},
	{"ipv6_dstopts_cmsg", func(c *config, a *attempt) {
		// Destination options over loopback: dropped for carrying an extension header at all.
		sendmsgCmsg(c, a, unix.AF_INET6, sa6(c.target6, 53), cmsg(unix.SOL_IPV6, unix.IPV6_DSTOPTS, []byte{0, 0, 1, 4, 0, 0, 0, 0}))
	}},
	{"msg_dontroute_dns", func(c *config, a *attempt) {
		fd, ok := a.socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if ok {
			defer unix.Close(fd)
			a.step("sendto MSG_DONTROUTE", unix.Sendto(fd, dnsQuery(), unix.MSG_DONTROUTE, sa4(c.target4, 53)))
		}
	}},

	// compat (int 0x80) setsockopt skips the cgroup setsockopt hook altogether.
	{"compat_ip_unicast_if_connect", func(c *config, a *attempt) {
		tcpThen(c, a, false, compatSetsockoptInt(unix.SOL_IP, unix.IP_UNICAST_IF, ifindexBE(c)), "compat setsockopt IP_UNICAST_IF")
	}},
	{"compat_ip_unicast_if_dns", func(c *config, a *attempt) {
		udpDNSThen(c, a, false, compatSetsockoptInt(unix.SOL_IP, unix.IP_UNICAST_IF, ifindexBE(c)), "compat setsockopt IP_UNICAST_IF")
	}},
	{"compat_ipv6_rthdr_srh", func(c *config, a *attempt) {
		udpDNSThen(c, a, true, func(fd int) error {
			return compatSetsockopt(fd, unix.SOL_IPV6, unix.IPV6_RTHDR, srh(c.target6, false))
		}, "compat setsockopt IPV6_RTHDR")
	}},
	{"compat_ip_options_lsrr", func(c *config, a *attempt) {
		tcpThen(c, a, false, func(fd int) error {
			return compatSetsockopt(fd, unix.SOL_IP, unix.IP_OPTIONS, sourceRoute(0x83, c.target4))
		}, "compat setsockopt IP_OPTIONS")
	}},
	{"compat_so_bindtodevice_tfo", func(c *config, a *attempt) {
		fd, ok := a.socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		if !ok {
			return
		}
		defer unix.Close(fd)
		if a.step("compat setsockopt SO_BINDTODEVICE", compatSetsockopt(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, ifaceName(c))) {
			tfoOut(c, a, fd)
		}
	}},

	// Other socket families (BPF LSM). None is ever connected anywhere.
	{"af_packet", func(c *config, a *attempt) {
		fd, ok := a.socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
		if !ok {
			return
		}
		defer unix.Close(fd)
		if !c.rawFrames {
			a.Note = "socket allowed; no frame sent"
			return
		}
		a.step("sendto frame", unix.Sendto(fd, rawFrame(c), 0, &unix.SockaddrLinklayer{Ifindex: c.ifindex, Halen: 6, Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}))
	}},
	{"af_netlink", func(c *config, a *attempt) { closeIf(a.socket(unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_ROUTE)) }},
	{"af_vsock", func(c *config, a *attempt) { closeIf(a.socket(unix.AF_VSOCK, unix.SOCK_STREAM, 0)) }},
	{"af_xdp", func(c *config, a *attempt) { closeIf(a.socket(unix.AF_XDP, unix.SOCK_RAW, 0)) }},
	{"af_alg", func(c *config, a *attempt) { closeIf(a.socket(unix.AF_ALG, unix.SOCK_SEQPACKET, 0)) }},

	// Reaching firma itself.
	{"bpf_syscall", func(c *config, a *attempt) {
		var attr [12]byte // union bpf_attr: start_id, next_id, open_flags
		_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_GET_NEXT_ID, uintptr(unsafe.Pointer(&attr[0])), uintptr(len(attr)))
		var err error
		if errno != 0 && errno != unix.ENOENT {
			err = errno
		}
		a.step("bpf BPF_PROG_GET_NEXT_ID", err)
	}},
	{"tun", func(c *config, a *attempt) {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if !a.step("open /dev/net/tun", err) {
			return
		}
		defer unix.Close(fd)
		ifr, err := unix.NewIfreq("firmatun%d")
		if err != nil {
			a.step("ifreq", err)
			return
		}
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		a.step("ioctl TUNSETIFF", unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr))
	}},
}

// optIn techniques run only when -only names them.
var optIn = []technique{
	// With an inbound port: a socket bound to it must still not send anywhere but the sidecar.
	{"inbound_port_connect_out", func(c *config, a *attempt) {
		fd, ok := a.socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
		if !ok {
			return
		}
		defer unix.Close(fd)
		if a.step("setsockopt SO_REUSEADDR", unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)) &&
			a.step("bind", unix.Bind(fd, sa4(c.src4, c.inboundPort))) &&
			a.step("compat setsockopt SO_BINDTODEVICE", compatSetsockopt(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, ifaceName(c))) {
			connectWait(a, fd, sa4(c.target4, c.port))
		}
	}},
	// A client of a server that another process of the subtree runs on loopback.
	{"connect_local_listener", func(c *config, a *attempt) {
		plainConnect(a, unix.AF_INET, sa4(netip.MustParseAddr("127.0.0.1"), c.inboundPort))
	}},
}

func sockaddrString(sa unix.Sockaddr) string {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)).String()
	}
	return fmt.Sprint(sa)
}

func closeIf(fd int, ok bool) {
	if ok {
		unix.Close(fd)
	}
}

func plainConnect(a *attempt, domain int, to unix.Sockaddr) {
	fd, ok := a.socket(domain, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
	if !ok {
		return
	}
	defer unix.Close(fd)
	if connectWait(a, fd, to) {
		if sa, err := unix.Getpeername(fd); err == nil {
			a.Peer = sockaddrString(sa)
		}
		unix.SetNonblock(fd, false)
		hello(a, fd)
	}
}

// tfoOut sends a TCP Fast Open SYN with data to the outside.
func tfoOut(c *config, a *attempt, fd int) {
	unix.SetNonblock(fd, true)
	err := unix.Sendto(fd, []byte("escape via TFO\n"), unix.MSG_FASTOPEN, sa4(c.target4, c.port))
	if errors.Is(err, unix.EINPROGRESS) {
		err = waitWritable(fd)
	}
	a.step("sendto MSG_FASTOPEN", err)
}

func bindTo(a *attempt, domain, typ int, to unix.Sockaddr, reuse bool) {
	fd, ok := a.socket(domain, typ, 0)
	if !ok {
		return
	}
	defer unix.Close(fd)
	if reuse {
		if !a.step("setsockopt SO_REUSEADDR", unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)) ||
			!a.step("setsockopt SO_REUSEPORT", unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)) {
			return
		}
	}
	if a.step("bind", unix.Bind(fd, to)) && typ == unix.SOCK_STREAM {
		a.step("listen", unix.Listen(fd, 1))
	}
}

// rawFrame is an Ethernet broadcast frame carrying IPv4/UDP to the outside.
func rawFrame(c *config) []byte {
	payload := []byte("escape via AF_PACKET")
	udp := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], uint16(c.port))
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], payload)
	ip := make([]byte, 20)
	ip[0], ip[8], ip[9] = 0x45, 64, unix.IPPROTO_UDP
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
	s, d := c.src4.As4(), c.target4.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	frame := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0x08, 0x00}
	return append(append(frame, ip...), udp...)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// listenUntilEOF listens on [::]:port (IPv4 too) until stdin closes, accepting whatever arrives.
func listenUntilEOF(port int) *attempt {
	a := &attempt{Technique: "listen", PID: os.Getpid(), UID: os.Getuid(), Ops: []string{}}
	fd, ok := a.socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
	if !ok {
		return a
	}
	defer unix.Close(fd)
	// SO_REUSEADDR: what this server leaves in TIME_WAIT must not keep the port from the next test.
	if !a.step("setsockopt SO_REUSEADDR", unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)) ||
		!a.step("setsockopt IPV6_V6ONLY", unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_V6ONLY, 0)) ||
		!a.step("bind", unix.Bind(fd, sa6(netip.IPv6Unspecified(), port))) ||
		!a.step("listen", unix.Listen(fd, 16)) {
		return a
	}
	fmt.Printf("{\"ready\":true,\"pid\":%d}\n", os.Getpid())
	eof := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(eof)
	}()
	drain := func() {
		for {
			nfd, _, err := unix.Accept(fd)
			if err != nil {
				return
			}
			a.Accepted++
			unix.Close(nfd)
		}
	}
	for {
		drain()
		select {
		case <-eof:
			drain() // what arrived before stdin closed
			return a
		case <-time.After(20 * time.Millisecond):
		}
	}
}
