//go:build linux

package bpf

import (
	"encoding/binary"
	"fmt"
	"net"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Offload is the loaded offload programs and their maps. They are never pinned: they live as long
// as this process holds them, and every tunnel they carry ends with it.
type Offload struct {
	objs offloadObjects
}

// OpenOffload loads the offload programs and attaches the sk_msg program to its map. It returns an
// error wrapping ErrUnsupported when the kernel lacks what they need (sockmap, sk_msg, BTF for
// CO-RE); tunnels then stay plain TCP.
func OpenOffload() (*Offload, error) {
	spec, err := loadOffload()
	if err != nil {
		return nil, err
	}
	o := &Offload{}
	if err := spec.LoadAndAssign(&o.objs, nil); err != nil {
		return nil, fmt.Errorf("%w: loading the offload programs: %w", ErrUnsupported, verifierDetail(err))
	}
	err = link.RawAttachProgram(link.RawAttachProgramOptions{
		Target: o.objs.OffloadSidecar.FD(), Program: o.objs.FirmaOffloadDown, Attach: ebpf.AttachSkMsgVerdict,
	})
	if err != nil {
		o.objs.Close()
		return nil, fmt.Errorf("%w: attaching the sk_msg program: %w", ErrUnsupported, err)
	}
	return o, nil
}

// Close frees the programs and maps. Tunnels still offloaded go back to plain TCP; an agent's socket
// loses what waited unread in its redirected queue, which only happens when the sidecar exits.
func (o *Offload) Close() error { return o.objs.Close() }

// Offloaded is the agent side of a tunnel handed to the kernel.
type Offloaded struct {
	o        *Offload
	fd       int    // the accepted socket's, valid while the caller holds it open
	cookie   uint64 // the accepted socket's key in offload_sidecar
	req      offloadOffloadReq
	pkt      []byte // req as the test packet of firma_offload_state
	switched bool
}

// Tunnel adopts the agent's socket at the other end of agent — a connection the sidecar accepted —
// so that what the sidecar sends on agent can later go straight into it (Switch). It must be called
// before the sidecar relays anything to the agent. An error wrapping ErrNotAdopted leaves the
// connection plain TCP, unchanged.
func (o *Offload) Tunnel(agent *net.TCPConn) (*Offloaded, error) {
	fd, err := connFD(agent)
	if err != nil {
		return nil, err
	}
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		return nil, fmt.Errorf("socket cookie: %w", err)
	}
	t := &Offloaded{o: o, fd: fd, cookie: cookie, req: offloadReq(agent, cookie)}
	t.pkt = testPacket(t.req)
	ret, err := o.objs.FirmaOffloadAdopt.Run(&ebpf.RunOptions{Data: t.pkt})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotAdopted, err)
	}
	if r := offloadAdoptResult(ret); r != offloadAdoptResultADOPT_OK {
		return nil, fmt.Errorf("%w: %s", ErrNotAdopted, adoptReasons[r])
	}
	return t, nil
}

// state is firma_offload_state's answer: queued bytes, or unread (TCP bytes wait in the agent's
// socket).
func (t *Offloaded) state() (queued int, unread bool, err error) {
	ret, err := t.o.objs.FirmaOffloadState.Run(&ebpf.RunOptions{Data: t.pkt})
	if err != nil {
		return 0, false, err
	}
	switch offloadAgentState(ret) {
	case offloadAgentStateAGENT_GONE:
		return 0, false, errAgentGone
	case offloadAgentStateAGENT_UNREAD:
		return 0, true, nil
	}
	return int(int32(ret)), false, nil
}

// Switch makes what the caller sends on the accepted socket from now on go straight into the
// agent's socket, once the agent has read everything sent to it over TCP (false: not yet; ask again
// after sending more). The caller must have relayed something to the agent since Tunnel, and must
// not be sending meanwhile. From then on the caller's sends never block on the agent's reading: it
// must bound what it sends beyond what Queued reports.
func (t *Offloaded) Switch() (bool, error) {
	if t.switched {
		return true, nil
	}
	_, unread, err := t.state()
	if err != nil || unread {
		return false, err
	}
	if outq, err := unix.IoctlGetInt(t.fd, unix.SIOCOUTQ); err != nil || outq != 0 {
		return false, err // in flight to the agent: not read yet
	}
	if err := t.o.objs.OffloadPeer.Update(uint32(t.fd), t.req.Key, ebpf.UpdateNoExist); err != nil {
		return false, fmt.Errorf("offload: %w", err)
	}
	if err := t.o.objs.OffloadSidecar.Update(t.cookie, uint64(t.fd), ebpf.UpdateNoExist); err != nil {
		t.o.objs.OffloadPeer.Delete(uint32(t.fd))
		return false, fmt.Errorf("offload: %w", err)
	}
	t.switched = true
	return true, nil
}

// Queued is how many bytes wait unread in the agent's socket; an error when it is gone.
func (t *Offloaded) Queued() (int, error) {
	q, unread, err := t.state()
	if unread {
		return offloadQueueUnknown, nil
	}
	return q, err
}

// offloadQueueUnknown stands for "more than any bound" while TCP bytes wait unread.
const offloadQueueUnknown = 1 << 30

// Demote takes the tunnel back to plain TCP: what the caller sends on the accepted socket from now
// on travels over TCP again, and reaches the agent after what waits in its socket's redirected
// queue (which the agent reads first). The caller must not be sending meanwhile.
func (t *Offloaded) Demote() error {
	if !t.switched {
		return nil
	}
	if err := t.o.objs.OffloadSidecar.Delete(t.cookie); err != nil {
		return fmt.Errorf("demoting an offloaded tunnel: %w", err)
	}
	t.o.objs.OffloadPeer.Delete(uint32(t.fd))
	t.switched = false
	return nil
}

// offloadReq names the agent's end of conn, keyed by conn's cookie with the top bit set (cookies
// count up from 1, so no other socket has that key).
func offloadReq(conn *net.TCPConn, cookie uint64) offloadOffloadReq {
	local, remote := conn.LocalAddr().(*net.TCPAddr).AddrPort(), conn.RemoteAddr().(*net.TCPAddr).AddrPort()
	req := offloadOffloadReq{Key: cookie | 1<<63}
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&req.AgentPort))[:], remote.Port())
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&req.SidecarPort))[:], local.Port())
	if la, ra := local.Addr().Unmap(), remote.Addr().Unmap(); la.Is4() && ra.Is4() {
		req.Family = unix.AF_INET
		a, s := ra.As4(), la.As4()
		copy(req.AgentAddr[:], a[:])
		copy(req.SidecarAddr[:], s[:])
	} else {
		req.Family = unix.AF_INET6
		req.AgentAddr, req.SidecarAddr = remote.Addr().As16(), local.Addr().As16()
	}
	return req
}

// testPacket is req after the Ethernet header that BPF_PROG_TEST_RUN wants for a tc program.
func testPacket(req offloadOffloadReq) []byte {
	pkt := make([]byte, 14+unsafe.Sizeof(req))
	copy(pkt[14:], unsafe.Slice((*byte)(unsafe.Pointer(&req)), unsafe.Sizeof(req)))
	return pkt
}

var adoptReasons = map[offloadAdoptResult]string{
	offloadAdoptResultADOPT_BAD_REQUEST: "bad request",
	offloadAdoptResultADOPT_NOT_FOUND:   "the agent's socket is gone",
	offloadAdoptResultADOPT_NOT_OPEN:    "the agent's socket is shut down",
	offloadAdoptResultADOPT_TAKEN:       "the agent's socket is taken or the offload map is full",
	offloadAdoptResultADOPT_BLOCKING:    "the agent reads its socket in blocking mode",
}

// connFD is the descriptor under conn. It stays valid as long as conn is open.
func connFD(conn *net.TCPConn) (int, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return -1, err
	}
	return fd, nil
}
