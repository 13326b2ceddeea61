//go:build linux

package main

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// moreTechniques run with -more: they need the real sidecar (its explicit proxy, its resolver's
// judgement, its control socket, its pid) or try doors that the kernel tests leave to it — the
// io_uring paths to the hooked system calls, several datagrams in one call, what the sidecar
// itself must refuse (HTTP, TLS and DNS to the outside), and the ways to the sidecar's own
// process that plain placement leaves to the operator (see the daemon's e2e_seal_test.go).
var moreTechniques = []technique{
	// io_uring reaches the socket operations without their system calls.
	{"io_uring_setsockopt_bindtodevice", func(c *config, a *attempt) {
		withRing(a, false, func(ring *uring) {
			tcpThen(c, a, false, func(fd int) error {
				return ring.setsockopt(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, ifaceName(c))
			}, "io_uring setsockopt SO_BINDTODEVICE")
		})
	}},
	{"io_uring_compat_setsockopt_unicast_if_dns", func(c *config, a *attempt) {
		withRing(a, true, func(ring *uring) {
			v := make([]byte, 4)
			binary.NativeEndian.PutUint32(v, uint32(ifindexBE(c)))
			udpDNSThen(c, a, false, func(fd int) error {
				return ring.setsockopt(fd, unix.SOL_IP, unix.IP_UNICAST_IF, v)
			}, "io_uring compat setsockopt IP_UNICAST_IF")
		})
	}},
	{"io_uring_connect", func(c *config, a *attempt) {
		withRing(a, false, func(ring *uring) {
			fd, ok := a.socket(unix.AF_INET, unix.SOCK_STREAM, 0)
			if !ok {
				return
			}
			defer unix.Close(fd)
			if a.step("io_uring connect", ring.connect4(fd, raw4(sa4(c.target4, c.port)))) {
				hello(a, fd)
			}
		})
	}},
	{"io_uring_sendmsg_udp", func(c *config, a *attempt) {
		withRing(a, false, func(ring *uring) {
			fd, ok := a.socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
			if ok {
				defer unix.Close(fd)
				a.step("io_uring sendmsg", ring.sendmsg4(fd, raw4(sa4(c.target4, c.port)), []byte("escape via io_uring")))
			}
		})
	}},
	{"io_uring_bind_sidecar", func(c *config, a *attempt) {
		withRing(a, false, func(ring *uring) {
			fd, ok := a.socket(unix.AF_INET, unix.SOCK_STREAM, 0)
			if ok {
				defer unix.Close(fd)
				a.step("io_uring bind", ring.bind4(fd, raw4(sa4(netip.IPv4Unspecified(), c.sidecarPort))))
			}
		})
	}},

	// Several datagrams in one call, and sockets that mix allowed and refused destinations.
	{"sendmmsg_dns_then_other", func(c *config, a *attempt) {
		fd, ok := a.socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if !ok {
			return
		}
		defer unix.Close(fd)
		n, err := sendmmsg4(fd, []*unix.SockaddrInet4{sa4(c.target4, 53), sa4(c.target4, c.port)},
			[][]byte{dnsQuery(), []byte("escape via sendmmsg")})
		if a.step("sendmmsg", err) {
			a.Note = fmt.Sprintf("sent %d of 2", n)
		}
	}},
	{"udp_connected_dns_sendto_other", func(c *config, a *attempt) {
		fd, ok := a.socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if ok {
			defer unix.Close(fd)
			if a.step("connect", unix.Connect(fd, sa4(c.target4, 53))) {
				a.step("sendto", unix.Sendto(fd, []byte("escape"), 0, sa4(c.target4, c.port)))
			}
		}
	}},
	{"udp_broadcast_other", func(c *config, a *attempt) {
		fd, ok := a.socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if ok {
			defer unix.Close(fd)
			if a.step("setsockopt SO_BROADCAST", unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BROADCAST, 1)) {
				a.step("sendto", unix.Sendto(fd, []byte("escape"), 0, sa4(netip.AddrFrom4([4]byte{255, 255, 255, 255}), c.port)))
			}
		}
	}},
	{"udp_mapped_other_port", func(c *config, a *attempt) {
		fd, ok := a.socket(unix.AF_INET6, unix.SOCK_DGRAM, 0)
		if ok {
			defer unix.Close(fd)
			a.step("sendto", unix.Sendto(fd, []byte("escape"), 0, sa6(mapped(c.target4), c.port)))
		}
	}},
	{"udplite", func(c *config, a *attempt) { closeIf(a.socket(unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_UDPLITE)) }},
	{"sctp", func(c *config, a *attempt) { closeIf(a.socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP)) }},
	{"connect6_linklocal", func(c *config, a *attempt) {
		fd, ok := a.socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
		if ok {
			defer unix.Close(fd)
			to := &unix.SockaddrInet6{Port: c.port, Addr: netip.MustParseAddr("fe80::1").As16(), ZoneId: uint32(c.ifindex)}
			connectWait(a, fd, to)
		}
	}},

	// What the sidecar itself must judge and refuse: DNS it cannot parse, and HTTP, TLS and the
	// explicit proxy aimed at the outside.
	{"dns_tcp_query", func(c *config, a *attempt) {
		fd, ok := a.socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		if !ok {
			return
		}
		defer unix.Close(fd)
		q := dnsQuery()
		if a.step("connect", unix.Connect(fd, sa4(c.target4, 53))) &&
			a.step("write", writeAll(fd, append([]byte{0, byte(len(q))}, q...))) {
			readNote(a, fd)
		}
	}},
	{"dns_udp_garbage", func(c *config, a *attempt) {
		fd, ok := a.socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if ok {
			defer unix.Close(fd)
			if a.step("connect", unix.Connect(fd, sa4(c.target4, 53))) {
				a.step("write", writeAll(fd, []byte("escape: not a DNS message")))
			}
		}
	}},
	{"dns_tcp_garbage", func(c *config, a *attempt) {
		fd, ok := a.socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		if !ok {
			return
		}
		defer unix.Close(fd)
		junk := []byte("escape: not a DNS message")
		if a.step("connect", unix.Connect(fd, sa4(c.target4, 53))) &&
			a.step("write", writeAll(fd, append([]byte{0, byte(len(junk))}, junk...))) {
			readNote(a, fd)
		}
	}},
	{"http_to_outside", func(c *config, a *attempt) {
		conn, ok := a.dial(sa4(c.target4, c.port))
		if !ok {
			return
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET /escape HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", netip.AddrPortFrom(c.target4, uint16(c.port)))
		a.statusLine(conn)
	}},
	{"tls_to_outside", func(c *config, a *attempt) {
		conn, ok := a.dial(sa4(c.target4, c.port))
		if !ok {
			return
		}
		defer conn.Close()
		tc := tls.Client(conn, &tls.Config{ServerName: "outside.test", InsecureSkipVerify: true})
		a.step("tls handshake", tc.Handshake())
	}},
	{"proxy_connect_outside", func(c *config, a *attempt) {
		conn, ok := a.dial(sa4(netip.MustParseAddr("127.0.0.1"), c.proxyPort))
		if !ok {
			return
		}
		defer conn.Close()
		target := netip.AddrPortFrom(c.target4, uint16(c.port))
		fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
		r := bufio.NewReader(conn)
		status, err := r.ReadString('\n')
		if !a.step("read", err) {
			return
		}
		a.Note = strings.TrimSpace(status)
		// The tunnel is judged by what flows in it.
		for line, err := r.ReadString('\n'); err == nil && strings.TrimSpace(line) != ""; line, err = r.ReadString('\n') {
		}
		if a.step("write", writeString(conn, "hello "+a.Technique+"\n")) {
			n, err := r.Read(make([]byte, 64))
			a.step(fmt.Sprintf("read tunnel (%d bytes)", n), err)
		}
	}},

	// A network namespace of its own: the redirect then points at a loopback where no sidecar
	// listens, and the namespace has no link anywhere. (On a thread of its own, which dies with it:
	// the rest of the program keeps its namespace.)
	{"netns_unshare_connect", func(c *config, a *attempt) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
			if !a.step("unshare CLONE_NEWNET", unix.Unshare(unix.CLONE_NEWNET)) {
				return
			}
			fd, ok := a.socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
			if ok {
				defer unix.Close(fd)
				connectWait(a, fd, sa4(c.target4, c.port))
			}
		}()
		<-done
	}},

	// The sidecar's own process and control socket. In plain placement a root agent can reach the
	// first (no PID namespace): the tests run those as an unprivileged user only.
	{"control_socket", func(c *config, a *attempt) {
		fd, ok := a.socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if !ok {
			return
		}
		defer unix.Close(fd)
		if a.step("connect", unix.Connect(fd, &unix.SockaddrUnix{Name: c.control})) &&
			a.step("write", writeAll(fd, []byte(`{"op":"info"}`+"\n"))) {
			readNote(a, fd)
		}
	}},
	{"signal_sidecar", func(c *config, a *attempt) {
		a.step("kill 0", unix.Kill(c.sidecarPID, 0))
	}},
	{"pidfd_getfd_sidecar", func(c *config, a *attempt) {
		pidfd, err := unix.PidfdOpen(c.sidecarPID, 0)
		if !a.step("pidfd_open", err) {
			return
		}
		defer unix.Close(pidfd)
		// The sidecar's sockets: take the first descriptor there is.
		for fd := 3; fd < 64; fd++ {
			got, err := unix.PidfdGetfd(pidfd, fd, 0)
			if err == unix.EBADF {
				continue
			}
			if a.step("pidfd_getfd", err) {
				unix.Close(got)
				a.Note = "took descriptor " + strconv.Itoa(fd)
			}
			return
		}
		a.step("pidfd_getfd", unix.EBADF)
	}},
	{"cgroup_leave", func(c *config, a *attempt) {
		// The cgroup2 root as this process sees it (NetNS.Command mounts one at /sys/fs/cgroup).
		if a.step("write cgroup.procs", os.WriteFile("/sys/fs/cgroup/cgroup.procs", []byte(strconv.Itoa(os.Getpid())), 0)) {
			plainConnect(a, unix.AF_INET, sa4(c.target4, c.port))
		}
	}},
}

// withRing runs fn with a fresh io_uring (compat: set up through the 32-bit call), closed after.
func withRing(a *attempt, compat bool, fn func(*uring)) {
	r, err := newURing(compat)
	op := "io_uring_setup"
	if compat {
		op = "compat io_uring_setup"
	}
	if a.step(op, err) {
		defer r.close()
		fn(r)
	}
}

// dial connects a TCP socket to the outside (redirected to the sidecar) and hands it over as a
// net.Conn for the protocols the sidecar judges.
func (a *attempt) dial(to *unix.SockaddrInet4) (net.Conn, bool) {
	fd, ok := a.socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if !ok {
		return nil, false
	}
	f := os.NewFile(uintptr(fd), "escape")
	defer f.Close()
	if !a.step("connect", unix.Connect(fd, to)) {
		return nil, false
	}
	conn, err := net.FileConn(f)
	if !a.step("fileconn", err) {
		return nil, false
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	return conn, true
}

// statusLine reads an HTTP response's status line into the note.
func (a *attempt) statusLine(conn net.Conn) {
	line, err := bufio.NewReader(conn).ReadString('\n')
	if a.step("read", err) {
		a.Note = strings.TrimSpace(line)
	}
}

func writeString(conn net.Conn, s string) error {
	_, err := conn.Write([]byte(s))
	return err
}

// readNote reads an answer (up to 512 bytes) into the note.
func readNote(a *attempt, fd int) {
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 3})
	buf := make([]byte, 512)
	n, err := unix.Read(fd, buf)
	if a.step("read", err) {
		a.Note = strings.TrimSpace(strings.ToValidUTF8(string(buf[:max(n, 0)]), "?"))
	}
}

// sendmmsg4 sends one datagram to each address in a single sendmmsg(2) and returns how many went.
func sendmmsg4(fd int, to []*unix.SockaddrInet4, payloads [][]byte) (int, error) {
	type mmsghdr struct {
		hdr unix.Msghdr
		len uint32
		_   [4]byte
	}
	msgs := make([]mmsghdr, len(to))
	iovs := make([]unix.Iovec, len(to))
	names := make([]*unix.RawSockaddrInet4, len(to))
	for i := range to {
		names[i] = raw4(to[i])
		iovs[i].Base = &payloads[i][0]
		iovs[i].SetLen(len(payloads[i]))
		msgs[i].hdr = unix.Msghdr{Name: (*byte)(unsafe.Pointer(names[i])), Namelen: unix.SizeofSockaddrInet4, Iov: &iovs[i], Iovlen: 1}
	}
	n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), 0, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// poseAsSidecar listens on a control socket path, says "listening", and answers every request
// with an Info whose enforced cgroup is the root — where `firma run` would place its agent if it
// believed it — saying "answered" each time.
func poseAsSidecar(path string) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		fail(err)
	}
	fmt.Println("listening")
	for {
		c, err := ln.Accept()
		if err != nil {
			fail(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if line, err := bufio.NewReader(c).ReadString('\n'); err == nil && line != "" {
			c.Write([]byte(`{"ok":true,"info":{"version":"impostor","cgroup":"/"}}` + "\n"))
			fmt.Println("answered")
		}
		c.Close()
	}
}
