package runner

import (
	"errors"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/openfirma/firma/daemon/control"
)

// The seccomp notification supervisor: the agent's filter hands every call it refuses to firma
// run, which reports it to the sidecar (so that it is recorded, while the process waits in the
// call) and then answers with the errno the filter would have returned itself. Should firma run
// be gone, the kernel answers ENOSYS: the call is refused either way.

// seccompNotif and seccompNotifResp are struct seccomp_notif and struct seccomp_notif_resp.
type seccompNotif struct {
	ID    uint64
	PID   uint32
	Flags uint32
	Data  struct {
		NR   int32
		Arch uint32
		IP   uint64
		Args [6]uint64
	}
}

type seccompNotifResp struct {
	ID    uint64
	Val   int64
	Error int32
	Flags uint32
}

// receiveListener reads what the exec step sent on the notify socket: the listener, or why there
// is none. It is there before the agent is exec'd, so it never waits.
func receiveListener(sock *os.File) (fd int, why string, err error) {
	buf, oob := make([]byte, 256), make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(int(sock.Fd()), buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
	if errors.Is(err, unix.EAGAIN) {
		return -1, "the exec step sent no seccomp listener", nil
	}
	if err != nil {
		return -1, "", err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return -1, "", err
	}
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			return -1, "", err
		}
		for i, f := range fds {
			if i == 0 {
				fd = f
				continue
			}
			unix.Close(f)
		}
		if len(fds) > 0 {
			return fd, "", nil
		}
	}
	return -1, string(buf[:n]), nil
}

// superviseSeccomp answers the agent's refused calls on listener until no process uses the filter
// any more or done is closed; report is called for each before the answer. It closes listener.
func superviseSeccomp(listener int, arch seccompArch, report func(control.Refusal), done <-chan struct{}) {
	defer unix.Close(listener)
	fds := []unix.PollFd{{Fd: int32(listener), Events: unix.POLLIN}}
	for {
		select {
		case <-done:
			return
		default:
		}
		fds[0].Revents = 0
		n, err := unix.Poll(fds, 200)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return
		}
		if n <= 0 {
			continue
		}
		if fds[0].Revents&unix.POLLIN == 0 && fds[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0 {
			return // every process that had the filter is gone
		}
		var req seccompNotif
		if err := ioctlPtr(listener, unix.SECCOMP_IOCTL_NOTIF_RECV, unsafe.Pointer(&req)); err != nil {
			if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EINTR) {
				continue // the caller died before we read it, or a signal
			}
			return
		}
		errno, ref := seccompAnswer(arch, req.Data.Arch, uint32(req.Data.NR), req.Data.Args)
		if ref != nil && report != nil {
			ref.PID = int(req.PID)
			report(*ref)
		}
		resp := seccompNotifResp{ID: req.ID, Error: -int32(errno)}
		ioctlPtr(listener, unix.SECCOMP_IOCTL_NOTIF_SEND, unsafe.Pointer(&resp)) // ENOENT: the caller is gone
	}
}

func ioctlPtr(fd int, req uint, arg unsafe.Pointer) error {
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(arg))
		switch errno {
		case 0:
			return nil
		case unix.EINTR:
			continue
		}
		return errno
	}
}
