package authority

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// socketOwner returns the uid owning the TCP socket whose local end is local and remote end is
// remote, from /proc/net/tcp6 and /proc/net/tcp of the caller's network namespace.
func socketOwner(local, remote netip.AddrPort) (uint32, error) {
	for _, name := range []string{"/proc/net/tcp6", "/proc/net/tcp"} {
		f, err := os.Open(name)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, err
		}
		uid, found, err := findSocketOwner(f, local, remote)
		f.Close()
		if err != nil {
			return 0, fmt.Errorf("%s: %w", name, err)
		}
		if found {
			return uid, nil
		}
	}
	return 0, errors.New("no such socket")
}

// findSocketOwner scans one /proc/net/tcp{,6} table:
//
//	sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
//	0: 0100007F:9C40 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 123
func findSocketOwner(r io.Reader, local, remote netip.AddrPort) (uint32, bool, error) {
	sc := bufio.NewScanner(r)
	first := true
	for sc.Scan() {
		if first {
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 8 {
			continue
		}
		l, err := parseProcAddr(f[1])
		if err != nil {
			return 0, false, err
		}
		if l != local {
			continue
		}
		rem, err := parseProcAddr(f[2])
		if err != nil {
			return 0, false, err
		}
		if rem != remote {
			continue
		}
		uid, err := strconv.ParseUint(f[7], 10, 32)
		if err != nil {
			return 0, false, fmt.Errorf("uid %q: %w", f[7], err)
		}
		return uint32(uid), true, nil
	}
	return 0, false, sc.Err()
}

// parseProcAddr decodes "0100007F:1F90" or the 32-hex-digit IPv6 form. The address is printed as
// 32-bit words in host byte order; the port is plain hex. IPv4-mapped addresses are unmapped.
func parseProcAddr(s string) (netip.AddrPort, error) {
	hexAddr, hexPort, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("address %q", s)
	}
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address %q: %w", s, err)
	}
	raw, err := hex.DecodeString(hexAddr)
	if err != nil || len(raw) != 4 && len(raw) != 16 {
		return netip.AddrPort{}, fmt.Errorf("address %q", s)
	}
	b := make([]byte, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(b[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(b)
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), nil
}
