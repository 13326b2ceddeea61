//go:build linux

package main

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// io_uring, by hand (golang.org/x/sys has no binding): a ring of one submission at a time, enough to
// ask the kernel for a socket operation without the syscall a cgroup hook is tied to.

// uringParams is struct io_uring_params.
type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFD uint32
	resv                                                                   [3]uint32
	sqOff                                                                  struct {
		head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
		userAddr                                                        uint64
	}
	cqOff struct {
		head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
		userAddr                                                        uint64
	}
}

// Opcodes and offsets of the io_uring ABI.
const (
	uringOpSendmsg  = 9
	uringOpConnect  = 16
	uringOpURingCmd = 46
	uringOpBind     = 56

	socketURingOpSetsockopt = 3

	uringOffSQRing = 0
	uringOffCQRing = 0x8000000
	uringOffSQEs   = 0x10000000
	uringEnterWait = 1 // IORING_ENTER_GETEVENTS
	sqeSize        = 64
	cqeSize        = 16
)

type uring struct {
	fd           int
	p            *uringParams
	sq, cq, sqes []byte
}

// newURing sets up a ring; compat sets it up through the 32-bit system call, which makes every
// socket command on it a compat one.
func newURing(compat bool) (*uring, error) {
	r := &uring{p: &uringParams{}}
	var err error
	if compat {
		r.fd, err = compatURingSetup(4, r.p)
	} else {
		fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, 4, uintptr(unsafe.Pointer(r.p)), 0)
		r.fd = int(fd)
		if errno != 0 {
			err = errno
		}
	}
	if err != nil {
		return nil, err
	}
	p := r.p
	sqLen := int(p.sqOff.array + p.sqEntries*4)
	cqLen := int(p.cqOff.cqes + p.cqEntries*cqeSize)
	if r.sq, err = unix.Mmap(r.fd, uringOffSQRing, sqLen, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		r.close()
		return nil, fmt.Errorf("mmap sq ring: %w", err)
	}
	if r.cq, err = unix.Mmap(r.fd, uringOffCQRing, cqLen, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		r.close()
		return nil, fmt.Errorf("mmap cq ring: %w", err)
	}
	if r.sqes, err = unix.Mmap(r.fd, uringOffSQEs, int(p.sqEntries)*sqeSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		r.close()
		return nil, fmt.Errorf("mmap sqes: %w", err)
	}
	return r, nil
}

func (r *uring) close() {
	for _, m := range [][]byte{r.sqes, r.cq, r.sq} {
		if m != nil {
			unix.Munmap(m)
		}
	}
	unix.Close(r.fd)
}

func (r *uring) u32(ring []byte, off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&ring[off])) }

// do submits one entry and waits for its completion; the result is the operation's return value
// (a negative errno on failure). keep holds what the entry points at until the kernel is done.
func (r *uring) do(sqe [sqeSize]byte, keep ...any) error {
	tail := atomic.LoadUint32(r.u32(r.sq, r.p.sqOff.tail))
	idx := tail & *r.u32(r.sq, r.p.sqOff.ringMask)
	copy(r.sqes[idx*sqeSize:], sqe[:])
	*r.u32(r.sq, r.p.sqOff.array+idx*4) = idx
	atomic.StoreUint32(r.u32(r.sq, r.p.sqOff.tail), tail+1)
	if _, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), 1, 1, uringEnterWait, 0, 0); errno != 0 {
		return fmt.Errorf("io_uring_enter: %w", errno)
	}
	runtime.KeepAlive(keep)
	head := atomic.LoadUint32(r.u32(r.cq, r.p.cqOff.head))
	if head == atomic.LoadUint32(r.u32(r.cq, r.p.cqOff.tail)) {
		return fmt.Errorf("io_uring: no completion")
	}
	off := r.p.cqOff.cqes + (head&*r.u32(r.cq, r.p.cqOff.ringMask))*cqeSize
	res := int32(binary.NativeEndian.Uint32(r.cq[off+8:]))
	atomic.StoreUint32(r.u32(r.cq, r.p.cqOff.head), head+1)
	if res < 0 {
		return syscall.Errno(-res)
	}
	return nil
}

// sqe builds a submission entry for opcode on fd.
func sqe(opcode byte, fd int) [sqeSize]byte {
	var e [sqeSize]byte
	e[0] = opcode
	binary.NativeEndian.PutUint32(e[4:], uint32(int32(fd)))
	return e
}

// setsockopt is SOCKET_URING_OP_SETSOCKOPT: the io_uring path to setsockopt(2).
func (r *uring) setsockopt(fd, level, opt int, value []byte) error {
	e := sqe(uringOpURingCmd, fd)
	binary.NativeEndian.PutUint32(e[8:], socketURingOpSetsockopt)
	binary.NativeEndian.PutUint32(e[16:], uint32(level))
	binary.NativeEndian.PutUint32(e[20:], uint32(opt))
	binary.NativeEndian.PutUint32(e[44:], uint32(len(value)))
	binary.NativeEndian.PutUint64(e[48:], uint64(uintptr(unsafe.Pointer(&value[0]))))
	return r.do(e, value)
}

// connect4 is IORING_OP_CONNECT to an IPv4 address.
func (r *uring) connect4(fd int, to *unix.RawSockaddrInet4) error {
	e := sqe(uringOpConnect, fd)
	binary.NativeEndian.PutUint64(e[8:], uint64(unix.SizeofSockaddrInet4))
	binary.NativeEndian.PutUint64(e[16:], uint64(uintptr(unsafe.Pointer(to))))
	return r.do(e, to)
}

// bind4 is IORING_OP_BIND (kernels 6.11 and later).
func (r *uring) bind4(fd int, to *unix.RawSockaddrInet4) error {
	e := sqe(uringOpBind, fd)
	binary.NativeEndian.PutUint64(e[8:], uint64(unix.SizeofSockaddrInet4))
	binary.NativeEndian.PutUint64(e[16:], uint64(uintptr(unsafe.Pointer(to))))
	return r.do(e, to)
}

// sendmsg4 is IORING_OP_SENDMSG of one datagram to an IPv4 address.
func (r *uring) sendmsg4(fd int, to *unix.RawSockaddrInet4, payload []byte) error {
	iov := unix.Iovec{Base: &payload[0]}
	iov.SetLen(len(payload))
	msg := unix.Msghdr{Name: (*byte)(unsafe.Pointer(to)), Namelen: unix.SizeofSockaddrInet4, Iov: &iov, Iovlen: 1}
	e := sqe(uringOpSendmsg, fd)
	binary.NativeEndian.PutUint64(e[16:], uint64(uintptr(unsafe.Pointer(&msg))))
	binary.NativeEndian.PutUint32(e[24:], 1)
	return r.do(e, &msg, &iov, to, payload)
}

// raw4 is an IPv4 socket address as the kernel takes it.
func raw4(sa *unix.SockaddrInet4) *unix.RawSockaddrInet4 {
	r := &unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: sa.Addr}
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&r.Port))[:], uint16(sa.Port))
	return r
}
