package authority

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
)

// ErrUntrustedCaller is returned for issuance requests from callers that are not trusted.
var ErrUntrustedCaller = errors.New("caller not trusted to request capabilities")

// A trusted local caller, for POST /v1/capabilities, is a TCP peer on a loopback address whose
// socket is owned by root or by the user the authority runs as. The owner is read from the kernel's
// socket table (/proc/net/tcp6, /proc/net/tcp) by the connection's exact 4-tuple, so another local
// user cannot pass: it can connect, but its socket carries its own uid. Everything else — remote
// peers, other users, a lookup that fails — is refused.
func trustedPeer(local, remote net.Addr) error {
	l, lok := addrPort(local)
	r, rok := addrPort(remote)
	if !lok || !rok {
		return fmt.Errorf("%w: not a TCP connection", ErrUntrustedCaller)
	}
	if !r.Addr().IsLoopback() {
		return fmt.Errorf("%w: %s is not a loopback address", ErrUntrustedCaller, r.Addr())
	}
	uid, err := socketOwner(r, l)
	if err != nil {
		return fmt.Errorf("%w: finding the socket owner of %s: %v", ErrUntrustedCaller, r, err)
	}
	if uid != 0 && uid != uint32(os.Geteuid()) {
		return fmt.Errorf("%w: uid %d is neither root nor the authority's own", ErrUntrustedCaller, uid)
	}
	return nil
}

func addrPort(a net.Addr) (netip.AddrPort, bool) {
	t, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, false
	}
	ap := t.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}
