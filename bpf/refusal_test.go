package bpf

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	ok := Config{Cgroup: "/sys/fs/cgroup/a", PinDir: "/sys/fs/bpf/a", SidecarPort: 15001, DNSPort: 15053}
	cases := []struct {
		name   string
		adjust func(*Config)
		err    string
	}{
		{"ok", func(*Config) {}, ""},
		{"inbound ports", func(c *Config) { c.InboundPorts = []uint16{8080, 3000} }, ""},
		{"relative cgroup", func(c *Config) { c.Cgroup = "a" }, "not an absolute path"},
		{"no port", func(c *Config) { c.SidecarPort = 0 }, "sidecar port is not set"},
		{"same ports", func(c *Config) { c.DNSPort = c.SidecarPort }, "dns port equals sidecar port"},
		{"inbound zero", func(c *Config) { c.InboundPorts = []uint16{0} }, "inbound port 0"},
		{"inbound sidecar", func(c *Config) { c.InboundPorts = []uint16{15001} }, "inbound port 15001 is the sidecar's"},
		{"inbound resolver", func(c *Config) { c.InboundPorts = []uint16{80, 15053} }, "inbound port 15053 is the sidecar's"},
		{"too many inbound", func(c *Config) { c.InboundPorts = make([]uint16, MaxInboundPorts+1) }, "at most 16"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.adjust(&c)
			err := c.validate()
			if (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("validate: %v, want %q", err, tc.err)
			}
		})
	}
}

func TestRateLimit(t *testing.T) {
	for _, tc := range []struct {
		rate, burst   uint32
		cost, burstNS uint64
	}{
		{0, 0, 1e9 / DefaultRefusalRate, DefaultRefusalBurst * 1e9 / DefaultRefusalRate},
		{5, 3, 2e8, 6e8},
		{1, 1, 1e9, 1e9},
		{2e9, 1, 1, 1}, // faster than a nanosecond each: as fast as the kernel can
	} {
		cost, burst := Config{RefusalRate: tc.rate, RefusalBurst: tc.burst}.rateLimit()
		if cost != tc.cost || burst != tc.burstNS {
			t.Errorf("rate %d burst %d: cost %d burst %d, want %d %d", tc.rate, tc.burst, cost, burst, tc.cost, tc.burstNS)
		}
	}
}

func TestRefusalText(t *testing.T) {
	who := Refusal{PID: 42, UID: 65534, Comm: "escape", CgroupID: 7}
	cases := []struct {
		r    Refusal
		want string
	}{
		{Refusal{Kind: RefusalSockopt, Level: 1, Option: 25}, "refused sockopt: setsockopt SOL_SOCKET SO_BINDTODEVICE"},
		{Refusal{Kind: RefusalSockopt, Level: 41, Option: 57}, "setsockopt SOL_IPV6 IPV6_RTHDR"},
		{Refusal{Kind: RefusalSockopt, Level: 99, Option: 3}, "setsockopt level 99 option 3"},
		{Refusal{Kind: RefusalFamily, Family: 17, Type: 3, Protocol: 768}, "refused family: socket AF_PACKET SOCK_RAW protocol 768"},
		{Refusal{Kind: RefusalProto, Family: 2, Type: 3, Protocol: 17}, "socket AF_INET SOCK_RAW protocol 17"},
		{Refusal{Kind: RefusalUDP, Family: 2, Type: 2, Addr: netip.MustParseAddrPort("10.0.0.1:443")}, "refused udp: AF_INET SOCK_DGRAM to 10.0.0.1:443"},
		{Refusal{Kind: RefusalEgress, IPProto: 6, LocalPort: 4000, Addr: netip.MustParseAddrPort("127.0.0.1:15001"), Ifindex: 2}, "refused egress drop: tcp from port 4000 to 127.0.0.1:15001 via ifindex 2"},
		{Refusal{Kind: RefusalEgress, IPProto: 43, Addr: netip.MustParseAddrPort("[fd00::1]:0"), Ifindex: 2}, "ipv6-route from port 0"},
		{Refusal{Kind: RefusalIngress, IPProto: 17, LocalPort: 8080, Addr: netip.MustParseAddrPort("10.0.0.9:5353"), Ifindex: 3}, "udp to port 8080 from 10.0.0.9:5353 via ifindex 3"},
		{Refusal{Kind: RefusalBind, Type: 1, Addr: netip.MustParseAddrPort("0.0.0.0:15001")}, "refused bind: bind SOCK_STREAM 0.0.0.0:15001"},
		{Refusal{Kind: RefusalBPF, BPFCmd: 34}, "refused bpf: bpf BPF_LINK_DETACH"},
		{Refusal{Kind: RefusalTun}, "refused tun: tun/tap device"},
		{Refusal{Kind: RefusalKind(99)}, "refused kind 99"},
		{Refusal{Kind: RefusalSelf, Suppressed: 12}, ", 12 more suppressed before it"},
	}
	for _, tc := range cases {
		r := tc.r
		r.PID, r.UID, r.Comm, r.CgroupID = who.PID, who.UID, who.Comm, who.CgroupID
		s := r.String()
		if !strings.Contains(s, tc.want) || !strings.Contains(s, `(pid 42 comm "escape" uid 65534 cgroup 7)`) {
			t.Errorf("%+v: %q, want it to contain %q and who", tc.r, s, tc.want)
		}
	}
}

func TestStatusErr(t *testing.T) {
	st := Status{Cgroup: "/cg", Links: []LinkStatus{
		{Program: "firma_connect4", State: LinkOK},
		{Program: "firma_egress", State: LinkDetached},
		{Program: "firma_bind4", State: LinkReplaced, Detail: "runs program 9, not 7"},
	}}
	err := st.Err()
	if st.OK() || !errors.Is(err, ErrNotInForce) {
		t.Fatalf("broken status: ok=%v err=%v", st.OK(), err)
	}
	want := "on /cg: 2 of 3 links: firma_egress detached; firma_bind4 replaced (runs program 9, not 7)"
	if !strings.Contains(err.Error(), want) {
		t.Errorf("err %q, want %q", err, want)
	}
	st.Links = st.Links[:1]
	if !st.OK() || st.Err() != nil {
		t.Errorf("healthy status: ok=%v err=%v", st.OK(), st.Err())
	}
	if LinkState(42).String() != "state 42" || LinkMissing.String() != "missing" {
		t.Error("link state names")
	}
}

func TestFeaturesString(t *testing.T) {
	all := Features{SocketFamilies: true, CompatSockopt: true, BPFSyscall: true, TunDevices: true}
	if !all.Complete() || strings.Contains(all.String(), "NOT") {
		t.Errorf("complete features: %q", all)
	}
	some := Features{BPFSyscall: true, Missing: []string{"attaching firma_socket_create: EINVAL"}}
	s := some.String()
	if some.Complete() || !strings.Contains(s, "non-inet socket families NOT refused") ||
		!strings.Contains(s, "bpf() refused") || !strings.Contains(s, "(attaching firma_socket_create: EINVAL)") {
		t.Errorf("partial features: %q", s)
	}
}
