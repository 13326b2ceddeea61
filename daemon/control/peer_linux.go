package control

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// peerOf reads SO_PEERCRED: the credentials the kernel recorded when the peer connected.
func peerOf(conn *net.UnixConn) (peer, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return peer{PID: -1, UID: ^uint32(0)}, err
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return peer{PID: -1, UID: ^uint32(0)}, err
	}
	if serr != nil {
		return peer{PID: -1, UID: ^uint32(0)}, fmt.Errorf("SO_PEERCRED: %w", serr)
	}
	return peer{PID: cred.Pid, UID: cred.Uid}, nil
}
