package connector

import (
	"net/netip"
	"testing"
)

// TestClassifyAddr is the table of what an agent may not reach through the sidecar by default.
func TestClassifyAddr(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want Class
	}{
		// public
		{"93.184.216.34", Allowed},
		{"2606:2800:220:1:248:1893:25c8:1946", Allowed},
		{"8.8.8.8", Allowed},
		// loopback
		{"127.0.0.1", Loopback},
		{"127.255.255.254", Loopback},
		{"::1", Loopback},
		{"::ffff:127.0.0.1", Loopback},
		// private
		{"10.1.2.3", Private},
		{"172.16.0.1", Private},
		{"172.31.255.255", Private},
		{"192.168.1.1", Private},
		{"fd12:3456::1", Private},
		{"fec0::1", Private},
		{"::ffff:10.0.0.1", Private},
		// link-local
		{"169.254.1.1", LinkLocal},
		{"fe80::1", LinkLocal},
		// metadata, by name
		{"169.254.169.254", Metadata},
		{"169.254.170.2", Metadata},
		{"100.100.100.200", Metadata},
		{"168.63.129.16", Metadata},
		{"fd00:ec2::254", Metadata},
		{"::ffff:169.254.169.254", Metadata},
		// CGNAT
		{"100.64.0.1", SharedSpace},
		{"100.127.255.255", SharedSpace},
		// other special ranges
		{"0.0.0.0", Unspecified},
		{"::", Unspecified},
		{"224.0.0.1", Multicast},
		{"ff02::1", Multicast},
		{"255.255.255.255", Reserved},
		{"240.0.0.1", Reserved},
		{"198.18.0.1", Reserved},
		// IPv4 embedded in IPv6
		{"64:ff9b::7f00:1", Loopback},                     // NAT64 of 127.0.0.1
		{"64:ff9b::a9fe:a9fe", Metadata},                  // NAT64 of 169.254.169.254
		{"64:ff9b::808:808", Allowed},                     // NAT64 of 8.8.8.8
		{"64:ff9b:1::a00:1", Private},                     // local-use NAT64 (/96 layout) of 10.0.0.1
		{"64:ff9b:1:7f00:1:0:0:0", Loopback},              // local-use NAT64 (/48 layout) of 127.0.0.1
		{"2002:7f00:1::1", Loopback},                      // 6to4 of 127.0.0.1
		{"2002:a9fe:a9fe::1", Metadata},                   // 6to4 of 169.254.169.254
		{"2002:808:808::1", Allowed},                      // 6to4 of 8.8.8.8
		{"2001:0:4136:e378:8000:63bf:f5ff:fffe", Private}, // Teredo, client 10.0.0.1 inverted
		{"2001:0:7f00:1::1", Loopback},                    // Teredo, server 127.0.0.1
		{"::7f00:1", Loopback},                            // IPv4-compatible
		{"::ffff:0:a00:1", Private},                       // IPv4-translated (SIIT) of 10.0.0.1
		{"2001:4860::5efe:a00:1", Private},                // ISATAP interface id carrying 10.0.0.1
	} {
		a := netip.MustParseAddr(tc.addr)
		if got := ClassifyAddr(a); got != tc.want {
			t.Errorf("ClassifyAddr(%s) = %q, want %q", tc.addr, got, tc.want)
		}
	}
}
