package authority

import (
	"net/netip"
	"strings"
	"testing"
)

func TestFindSocketOwner(t *testing.T) {
	table := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:C350 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:9C40 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 2 1 0000000000000000 20 4 30 10 -1
`
	local, remote := netip.MustParseAddrPort("127.0.0.1:40000"), netip.MustParseAddrPort("127.0.0.1:50000")
	uid, found, err := findSocketOwner(strings.NewReader(table), local, remote)
	if err != nil || !found || uid != 1000 {
		t.Fatalf("uid %d found %v err %v, want 1000", uid, found, err)
	}
	if _, found, _ := findSocketOwner(strings.NewReader(table), remote, local); found {
		t.Error("matched the reversed 4-tuple")
	}
	v6 := `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:9C40 00000000000000000000000001000000:C383 01 00000000:00000000 00:00000000 00000000    33        0 3 1
`
	uid, found, err = findSocketOwner(strings.NewReader(v6), netip.MustParseAddrPort("[::1]:40000"), netip.MustParseAddrPort("[::1]:50051"))
	if err != nil || !found || uid != 33 {
		t.Fatalf("v6: uid %d found %v err %v, want 33", uid, found, err)
	}
}
