package connector

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openfirma/firma/internal/duration"
)

// fakeResolver answers from a table and counts lookups.
type fakeResolver struct {
	mu      sync.Mutex
	answers map[string][]string
	lookups []string
}

func (r *fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lookups = append(r.lookups, host)
	as, ok := r.answers[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	var out []netip.Addr
	for _, a := range as {
		out = append(out, netip.MustParseAddr(a))
	}
	return out, nil
}

func newTest(t *testing.T, cfg Config, answers map[string][]string, own ...string) (*Connector, *fakeResolver) {
	t.Helper()
	if cfg.DialTimeout.Duration == 0 {
		cfg.DialTimeout = duration.Of(time.Second)
	}
	c, err := New(cfg, []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:15001"), netip.MustParseAddrPort("[::1]:15001")})
	if err != nil {
		t.Fatal(err)
	}
	r := &fakeResolver{answers: answers}
	c.resolver = r
	var ownAddrs []netip.Addr
	for _, a := range own {
		ownAddrs = append(ownAddrs, netip.MustParseAddr(a))
	}
	c.own = func() []netip.Addr { return ownAddrs }
	return c, r
}

func TestResolve(t *testing.T) {
	answers := map[string][]string{
		"public.test":   {"93.184.216.34"},
		"mixed.test":    {"10.0.0.1", "93.184.216.34", "::ffff:127.0.0.1", "2606:2800::1"},
		"internal.test": {"10.0.0.1", "192.168.0.1"},
		"meta.test":     {"169.254.169.254"},
		"rebind.test":   {"64:ff9b::7f00:1"},
		"own.test":      {"93.184.216.99"},
		"cgnat.test":    {"100.64.1.1"},
	}
	for _, tc := range []struct {
		name  string
		cfg   Config
		host  string
		want  []string
		class Class
	}{
		{name: "public", host: "public.test", want: []string{"93.184.216.34"}},
		{name: "case and dot", host: "PUBLIC.test.", want: []string{"93.184.216.34"}},
		{name: "refused ones dropped, order kept", host: "mixed.test", want: []string{"93.184.216.34", "2606:2800::1"}},
		{name: "all private", host: "internal.test", class: Private},
		{name: "metadata", host: "meta.test", class: Metadata},
		{name: "nat64 of loopback", host: "rebind.test", class: Loopback},
		{name: "own address", host: "own.test", class: Own},
		{name: "cgnat", host: "cgnat.test", class: SharedSpace},
		{name: "ip literal refused", host: "127.0.0.1", class: Loopback},
		{name: "bracketed v6 literal", host: "[::1]", class: Loopback},
		{name: "ip literal public", host: "93.184.216.34", want: []string{"93.184.216.34"}},
		{name: "allow_cidrs lifts private", cfg: Config{AllowCIDRs: []string{"10.0.0.0/8"}}, host: "internal.test", want: []string{"10.0.0.1"}},
		{name: "allow_cidrs mapped form", cfg: Config{AllowCIDRs: []string{"::ffff:10.0.0.0/104"}}, host: "internal.test", want: []string{"10.0.0.1"}},
		{name: "wide allow does not open metadata", cfg: Config{AllowCIDRs: []string{"0.0.0.0/0", "169.254.0.0/16"}}, host: "meta.test", class: Metadata},
		{name: "exact allow opens metadata", cfg: Config{AllowCIDRs: []string{"169.254.169.254/32"}}, host: "meta.test", want: []string{"169.254.169.254"}},
		{name: "allow_cidrs lifts own", cfg: Config{AllowCIDRs: []string{"93.184.216.99/32"}}, host: "own.test", want: []string{"93.184.216.99"}},
		{name: "static override", cfg: Config{Resolve: map[string]string{"Static.Test": "93.184.216.1"}}, host: "static.test", want: []string{"93.184.216.1"}},
		{name: "static override still classified", cfg: Config{Resolve: map[string]string{"static.test": "127.0.0.2"}}, host: "static.test", class: Loopback},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := newTest(t, tc.cfg, answers, "93.184.216.99")
			got, err := c.Resolve(context.Background(), tc.host)
			if tc.class != Allowed {
				var ae *AddrError
				if !errors.As(err, &ae) || ae.Class != tc.class || !errors.Is(err, ErrRefusedAddress) {
					t.Fatalf("got %v, %v; want a %q refusal", got, err, tc.class)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var gs []string
			for _, a := range got {
				gs = append(gs, a.String())
			}
			if strings.Join(gs, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("got %v, want %v", gs, tc.want)
			}
		})
	}
}

func TestResolveErrors(t *testing.T) {
	c, r := newTest(t, Config{Resolve: map[string]string{"pinned.test": "93.184.216.1"}}, nil)
	if _, err := c.Resolve(context.Background(), "missing.test"); err == nil || errors.Is(err, ErrRefusedAddress) {
		t.Fatalf("unknown name: %v", err)
	}
	c.Resolve(context.Background(), "pinned.test")
	c.Resolve(context.Background(), "10.0.0.1")
	if len(r.lookups) != 1 || r.lookups[0] != "missing.test" {
		t.Fatalf("static names and literals must not be looked up: %v", r.lookups)
	}
}

// TestDialRefusesSelf: the sidecar's own listeners are never dialed, even with loopback allowed.
func TestDialRefusesSelf(t *testing.T) {
	c, _ := newTest(t, Config{AllowCIDRs: []string{"127.0.0.0/8", "::1/128"}}, nil)
	for _, host := range []string{"127.0.0.1", "::1", "::ffff:127.0.0.1"} {
		_, _, err := c.Dial(context.Background(), host, 15001)
		var ae *AddrError
		if !errors.As(err, &ae) || ae.Class != Self {
			t.Errorf("%s: %v", host, err)
		}
	}
}

// TestDialExactAddress: Dial connects to the classified address and reports it.
func TestDialExactAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	c, _ := newTest(t, Config{AllowCIDRs: []string{"127.0.0.1/32"}}, map[string][]string{"up.test": {"127.0.0.2", "127.0.0.1"}})
	conn, dialed, err := c.Dial(context.Background(), "up.test", port)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if dialed != netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)) {
		t.Fatalf("dialed %v: 127.0.0.2 is not allowed and must be skipped", dialed)
	}
}

// TestOwnAddrsConcurrent refreshes the host's addresses while others classify: run with -race.
// The cache used to reuse its slice (addrs[:0]) under callers still iterating it.
func TestOwnAddrsConcurrent(t *testing.T) {
	own := cachedOwnAddrs(0)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 200; j++ {
				for _, a := range own() {
					_ = a.IsLoopback()
				}
			}
		}()
	}
	wg.Wait()
	found := false
	for _, a := range own() {
		found = found || a.IsLoopback()
	}
	if !found {
		t.Fatal("the host's own addresses must include loopback")
	}
}

func TestValidate(t *testing.T) {
	cfg := Config{
		Resolve:     map[string]string{"a.test": "not-an-ip"},
		AllowCIDRs:  []string{"10.0.0.0/33"},
		Nameservers: []string{"1.1.1.1", "[2606:4700::1111]:53", "dns.example"},
	}
	err := cfg.Validate()
	for _, want := range []string{`resolve: "a.test"`, "allow_cidrs", `nameservers: "dns.example"`, "dial_timeout: must be positive"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
	ok := DefaultConfig()
	ok.Nameservers = []string{"1.1.1.1", "[::1]:5353"}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
}
