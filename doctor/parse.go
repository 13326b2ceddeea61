package doctor

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// socketEntry is one line of /proc/net/{tcp,tcp6,udp,udp6}.
type socketEntry struct {
	Local   netip.AddrPort
	State   uint8 // 0x0A is TCP LISTEN; 0x07 is an unconnected UDP socket
	TxQueue uint64
	RxQueue uint64 // for a listener: connections waiting to be accepted
	Inode   uint64
}

const (
	tcpListen = 0x0A
	udpClose  = 0x07
)

// parseProcNet reads the socket table format of /proc/net/tcp and friends: a header line, then
// "sl local_address rem_address st tx_queue:rx_queue … uid timeout inode …", addresses as hex
// 32-bit words in host (little-endian) order.
func parseProcNet(r io.Reader) ([]socketEntry, error) {
	sc := bufio.NewScanner(r)
	var out []socketEntry
	for line := 0; sc.Scan(); line++ {
		if line == 0 {
			continue // header
		}
		f := strings.Fields(sc.Text())
		if len(f) < 10 {
			return nil, fmt.Errorf("line %d: %d fields, want at least 10", line+1, len(f))
		}
		local, err := parseHexAddrPort(f[1])
		if err != nil {
			return nil, fmt.Errorf("line %d: local address: %w", line+1, err)
		}
		st, err := strconv.ParseUint(f[3], 16, 8)
		if err != nil {
			return nil, fmt.Errorf("line %d: state %q", line+1, f[3])
		}
		tx, rx, found := strings.Cut(f[4], ":")
		if !found {
			return nil, fmt.Errorf("line %d: queues %q", line+1, f[4])
		}
		txq, err1 := strconv.ParseUint(tx, 16, 64)
		rxq, err2 := strconv.ParseUint(rx, 16, 64)
		inode, err3 := strconv.ParseUint(f[9], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			return nil, fmt.Errorf("line %d: queues %q or inode %q", line+1, f[4], f[9])
		}
		out = append(out, socketEntry{Local: local, State: uint8(st), TxQueue: txq, RxQueue: rxq, Inode: inode})
	}
	return out, sc.Err()
}

// parseHexAddrPort reads "0100007F:3A99" (IPv4) or 32 hex digits ":PORT" (IPv6).
func parseHexAddrPort(s string) (netip.AddrPort, error) {
	a, p, found := strings.Cut(s, ":")
	if !found {
		return netip.AddrPort{}, fmt.Errorf("%q has no port", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port %q", p)
	}
	raw, err := hex.DecodeString(a)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, fmt.Errorf("address %q", a)
	}
	// Each 32-bit word is in host order (little-endian on every architecture firma supports).
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(raw[i:], binary.LittleEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), nil
}

// parseKernelVersion reads major.minor from a release string such as "6.18.0-1-amd64".
func parseKernelVersion(release string) ([2]int, error) {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return [2]int{}, fmt.Errorf("release %q is not major.minor…", release)
	}
	digits := parts[1]
	if i := strings.IndexFunc(digits, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		digits = digits[:i]
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(digits)
	if err1 != nil || err2 != nil {
		return [2]int{}, fmt.Errorf("release %q is not major.minor…", release)
	}
	return [2]int{major, minor}, nil
}
