package connector

import "net/netip"

// Class is why an address is refused, or Allowed.
type Class string

// Address classes. Every refused class is named in the completion record of a flow whose upstream
// resolved only to refused addresses.
const (
	Allowed     Class = ""
	Loopback    Class = "loopback"
	Private     Class = "private"
	LinkLocal   Class = "link-local"
	Metadata    Class = "metadata"
	SharedSpace Class = "shared address space" // CGNAT, 100.64.0.0/10
	Unspecified Class = "unspecified"
	Multicast   Class = "multicast"
	Reserved    Class = "reserved"
	Own         Class = "own address" // an address of this host's interfaces
	Self        Class = "the sidecar itself"
)

// refusedRanges are the ranges an agent may not reach through the sidecar unless configured.
// Metadata endpoints come first so that they are named as such inside wider ranges.
var refusedRanges = []struct {
	prefix netip.Prefix
	class  Class
}{
	{netip.MustParsePrefix("169.254.169.254/32"), Metadata}, // AWS, GCP, Azure, OCI, DigitalOcean…
	{netip.MustParsePrefix("169.254.170.2/32"), Metadata},   // AWS ECS task credentials
	{netip.MustParsePrefix("169.254.170.23/32"), Metadata},  // AWS EKS pod identity
	{netip.MustParsePrefix("100.100.100.200/32"), Metadata}, // Alibaba Cloud
	{netip.MustParsePrefix("168.63.129.16/32"), Metadata},   // Azure wire server (a public address)
	{netip.MustParsePrefix("fd00:ec2::/32"), Metadata},      // AWS IMDS and pod identity over IPv6

	{netip.MustParsePrefix("0.0.0.0/8"), Unspecified},
	{netip.MustParsePrefix("10.0.0.0/8"), Private},
	{netip.MustParsePrefix("100.64.0.0/10"), SharedSpace},
	{netip.MustParsePrefix("127.0.0.0/8"), Loopback},
	{netip.MustParsePrefix("169.254.0.0/16"), LinkLocal},
	{netip.MustParsePrefix("172.16.0.0/12"), Private},
	{netip.MustParsePrefix("192.0.0.0/24"), Reserved},
	{netip.MustParsePrefix("192.0.2.0/24"), Reserved},
	{netip.MustParsePrefix("192.88.99.0/24"), Reserved}, // 6to4 relay anycast
	{netip.MustParsePrefix("192.168.0.0/16"), Private},
	{netip.MustParsePrefix("198.18.0.0/15"), Reserved},
	{netip.MustParsePrefix("198.51.100.0/24"), Reserved},
	{netip.MustParsePrefix("203.0.113.0/24"), Reserved},
	{netip.MustParsePrefix("224.0.0.0/4"), Multicast},
	{netip.MustParsePrefix("240.0.0.0/4"), Reserved}, // and 255.255.255.255
	{netip.MustParsePrefix("::/128"), Unspecified},
	{netip.MustParsePrefix("::1/128"), Loopback},
	{netip.MustParsePrefix("fc00::/7"), Private},
	{netip.MustParsePrefix("fe80::/10"), LinkLocal},
	{netip.MustParsePrefix("fec0::/10"), Private}, // site-local, deprecated
	{netip.MustParsePrefix("ff00::/8"), Multicast},
	{netip.MustParsePrefix("100::/64"), Reserved}, // discard
	{netip.MustParsePrefix("2001:db8::/32"), Reserved},
}

// ClassifyAddr classifies an address on its own (without allow_cidrs or the host's addresses). An
// IPv6 address that carries an IPv4 address — NAT64, 6to4, Teredo, IPv4-compatible or
// IPv4-translated — is refused when any IPv4 address it carries is.
func ClassifyAddr(a netip.Addr) Class {
	a = a.Unmap()
	for _, r := range refusedRanges {
		if r.prefix.Contains(a) {
			return r.class
		}
	}
	for _, v4 := range embeddedV4(a) {
		if c := ClassifyAddr(v4); c != Allowed {
			return c
		}
	}
	return Allowed
}

var (
	nat64         = netip.MustParsePrefix("64:ff9b::/96")   // RFC 6052 well-known prefix
	nat64Local    = netip.MustParsePrefix("64:ff9b:1::/48") // RFC 8215 local-use
	sixToFour     = netip.MustParsePrefix("2002::/16")
	teredo        = netip.MustParsePrefix("2001::/32")
	v4Compatible  = netip.MustParsePrefix("::/96")
	v4Translated  = netip.MustParsePrefix("::ffff:0:0:0/96") // SIIT, ::ffff:0:a.b.c.d
	isatapIIDMask = [4]byte{0x00, 0x00, 0x5e, 0xfe}          // interface id 0000:5efe:a.b.c.d
)

// embeddedV4 returns the IPv4 addresses an IPv6 address carries under the common translation and
// tunnelling schemes, so that 64:ff9b::7f00:1 is refused like 127.0.0.1.
func embeddedV4(a netip.Addr) []netip.Addr {
	if !a.Is6() {
		return nil
	}
	b := a.As16()
	v4 := func(i, j, k, l int) netip.Addr { return netip.AddrFrom4([4]byte{b[i], b[j], b[k], b[l]}) }
	var out []netip.Addr
	switch {
	case nat64.Contains(a):
		out = append(out, v4(12, 13, 14, 15))
	case nat64Local.Contains(a):
		// A /96 inside the /48 puts the address last; the /48 layout puts it in bits 48–63 and
		// 72–95 (RFC 6052 §2.2). Zero bits 48–95 mean the /96 layout; otherwise judge both.
		if b[6]|b[7]|b[8]|b[9]|b[10]|b[11] != 0 {
			out = append(out, v4(6, 7, 9, 10))
		}
		out = append(out, v4(12, 13, 14, 15))
	case sixToFour.Contains(a):
		out = append(out, v4(2, 3, 4, 5))
	case teredo.Contains(a):
		// Server in bits 32–63, client obfuscated (inverted) in the last 32 bits.
		client := netip.AddrFrom4([4]byte{^b[12], ^b[13], ^b[14], ^b[15]})
		out = append(out, v4(4, 5, 6, 7), client)
	case v4Translated.Contains(a), v4Compatible.Contains(a):
		out = append(out, v4(12, 13, 14, 15))
	}
	if [4]byte{b[8] &^ 0x02, b[9], b[10], b[11]} == isatapIIDMask {
		out = append(out, v4(12, 13, 14, 15))
	}
	return out
}
