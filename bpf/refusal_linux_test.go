//go:build linux

package bpf

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
)

// The Go kinds are the kernel's: every generated enum value has the same Go constant and a name.
func TestRefusalKindsMatchKernel(t *testing.T) {
	kernel := map[redirectRefusalKind]RefusalKind{
		redirectRefusalKindREFUSAL_UNCONFIGURED: RefusalUnconfigured,
		redirectRefusalKindREFUSAL_SELF:         RefusalSelf,
		redirectRefusalKindREFUSAL_UDP:          RefusalUDP,
		redirectRefusalKindREFUSAL_IPV6:         RefusalIPv6,
		redirectRefusalKindREFUSAL_PROTO:        RefusalProto,
		redirectRefusalKindREFUSAL_STORAGE:      RefusalStorage,
		redirectRefusalKindREFUSAL_FAMILY:       RefusalFamily,
		redirectRefusalKindREFUSAL_SOCKOPT:      RefusalSockopt,
		redirectRefusalKindREFUSAL_BIND:         RefusalBind,
		redirectRefusalKindREFUSAL_EGRESS:       RefusalEgress,
		redirectRefusalKindREFUSAL_INGRESS:      RefusalIngress,
		redirectRefusalKindREFUSAL_BPF:          RefusalBPF,
		redirectRefusalKindREFUSAL_TUN:          RefusalTun,
	}
	for k, g := range kernel {
		if uint32(k) != uint32(g) {
			t.Errorf("kernel kind %d is Go kind %d (%s)", k, g, g)
		}
		if _, named := refusalKindNames[g]; !named {
			t.Errorf("kind %d has no name", g)
		}
	}
	if len(refusalKindNames) != len(kernel) {
		t.Errorf("%d Go kinds, %d kernel kinds", len(refusalKindNames), len(kernel))
	}
	for c := redirectCounter(0); c < redirectCounterCNT_MAX; c++ {
		if _, ok := counterNames[c]; !ok {
			t.Errorf("counter %d has no name", c)
		}
	}
}

func TestDecodeRefusal(t *testing.T) {
	e := redirectRefusal{
		CgroupId: 7, Cookie: 99, Suppressed: 3,
		Kind: uint32(RefusalEgress), Family: 2, Type: 1, Protocol: 6, Ifindex: 2,
		Port: 15001, LocalPort: 40000, Proto: 6,
	}
	e.Who.Pid, e.Who.Tid, e.Who.Uid, e.Who.Gid = 42, 43, 65534, 65534
	e.Addr = netip.MustParseAddr("::ffff:127.0.0.1").As16()
	copy(e.Who.Comm[:], []int8{'c', 'u', 'r', 'l'})
	var b bytes.Buffer
	if err := binary.Write(&b, binary.NativeEndian, &e); err != nil {
		t.Fatal(err)
	}
	r, err := decodeRefusal(b.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	want := Refusal{
		Kind: RefusalEgress, PID: 42, TID: 43, UID: 65534, GID: 65534, Comm: "curl", CgroupID: 7, Cookie: 99,
		Family: 2, Type: 1, Protocol: 6, Ifindex: 2, Addr: netip.MustParseAddrPort("127.0.0.1:15001"),
		LocalPort: 40000, IPProto: 6, Suppressed: 3,
	}
	if r != want {
		t.Errorf("decoded\n%+v\nwant\n%+v", r, want)
	}
	if _, err := decodeRefusal(b.Bytes()[:10]); err == nil {
		t.Error("a short record decoded")
	}
}

// FuzzDecodeRefusal: whatever the ring buffer holds, decoding never panics and a decoded refusal
// prints.
func FuzzDecodeRefusal(f *testing.F) {
	f.Add(make([]byte, binary.Size(redirectRefusal{})))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, raw []byte) {
		r, err := decodeRefusal(raw)
		if err == nil {
			_ = r.String()
		}
	})
}
