package metrics

import (
	"net/netip"
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		addr   string
		remote bool
		err    string // "" = valid
	}{
		{"", false, ""},
		{"127.0.0.1:9090", false, ""},
		{"127.0.0.2:9090", false, ""},
		{"[::1]:9090", false, ""},
		{"localhost:9090", false, ""},
		{"unix:/run/firma/metrics.sock", false, ""},
		{"0.0.0.0:9090", false, "not a loopback address"},
		{":9090", false, "not a loopback address"},
		{"10.1.2.3:9090", false, "allow_remote"},
		{"0.0.0.0:9090", true, ""},
		{"10.1.2.3:9090", true, ""},
		{"metrics.example.com:9090", true, "not an IP address or localhost"},
		{"127.0.0.1", false, "want host:port or unix:/path"},
		{"127.0.0.1:0", false, "port \"0\""},
		{"127.0.0.1:http", false, "port \"http\""},
		{"unix:metrics.sock", false, "absolute"},
		{"unix:/run/../tmp/m.sock", false, "clean"},
	} {
		err := Config{ListenAddr: tc.addr, AllowRemote: tc.remote}.Validate()
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%q (remote %v): %v", tc.addr, tc.remote, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q (remote %v): error %v, want one containing %q", tc.addr, tc.remote, err, tc.err)
		case err != nil && !strings.HasPrefix(err.Error(), "listen_addr: "):
			t.Errorf("%q: error %q does not name the key", tc.addr, err)
		}
	}
}

func TestEndpoint(t *testing.T) {
	for _, tc := range []struct {
		addr     string
		local    bool
		addrPort string // "" = none
	}{
		{"127.0.0.1:9090", true, "127.0.0.1:9090"},
		{"localhost:9091", true, "127.0.0.1:9091"},
		{"[::1]:9090", true, "[::1]:9090"},
		{"[::ffff:127.0.0.1]:9090", true, "127.0.0.1:9090"},
		{":9090", false, "[::]:9090"},
		{"0.0.0.0:9090", false, "0.0.0.0:9090"},
		{"unix:/run/m.sock", true, ""},
	} {
		e, err := ParseEndpoint(tc.addr)
		if err != nil {
			t.Fatalf("%q: %v", tc.addr, err)
		}
		if e.Local() != tc.local {
			t.Errorf("%q: local %v", tc.addr, e.Local())
		}
		ap, ok := e.AddrPort()
		if tc.addrPort == "" {
			if ok {
				t.Errorf("%q: AddrPort %v", tc.addr, ap)
			}
		} else if !ok || ap != netip.MustParseAddrPort(tc.addrPort) {
			t.Errorf("%q: AddrPort %v, %v; want %s", tc.addr, ap, ok, tc.addrPort)
		}
		if e.String() != tc.addr {
			t.Errorf("%q: String %q", tc.addr, e.String())
		}
	}
}
