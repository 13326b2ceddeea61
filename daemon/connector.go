package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/openfirma/firma/internal/hostname"
)

// ErrRefusedAddress means a name resolved only to addresses the sidecar will not dial.
var ErrRefusedAddress = errors.New("refused address")

// AddrError says which address was refused and why.
type AddrError struct {
	Host   string
	Addr   netip.Addr
	Reason string // loopback, private, link-local, metadata, own address, …
}

func (e *AddrError) Error() string {
	return fmt.Sprintf("%s resolves to %s (%s)", e.Host, e.Addr, e.Reason)
}

func (e *AddrError) Unwrap() error { return ErrRefusedAddress }

// Resolver looks names up for the connector; *net.Resolver satisfies it.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Connector is how the sidecar reaches upstreams: it resolves the name itself (never trusting the
// address the agent dialed), refuses addresses an agent must not reach through it, and dials
// exactly the address it classified (DESIGN invariant 2).
type Connector struct {
	resolver    Resolver
	static      map[string]netip.Addr
	allow       []netip.Prefix
	own         func() []netip.Addr // the host's own addresses
	self        map[netip.AddrPort]bool
	dialTimeout time.Duration
}

// NewConnector builds a connector from [sidecar.upstream]. self lists the sidecar's own listeners,
// which are never dialed whatever allow_cidrs says.
func NewConnector(cfg UpstreamConfig, self []netip.AddrPort) (*Connector, error) {
	c := &Connector{
		static:      map[string]netip.Addr{},
		self:        map[netip.AddrPort]bool{},
		dialTimeout: cfg.DialTimeout.Duration,
		own:         cachedOwnAddrs(10 * time.Second),
	}
	for name, a := range cfg.Resolve {
		addr, err := netip.ParseAddr(a)
		if err != nil {
			return nil, fmt.Errorf("upstream.resolve %q: %w", name, err)
		}
		c.static[hostname.Normalize(name)] = addr.Unmap()
	}
	for _, p := range cfg.AllowCIDRs {
		prefix, err := netip.ParsePrefix(p)
		if err != nil {
			return nil, fmt.Errorf("upstream.allow_cidrs: %w", err)
		}
		c.allow = append(c.allow, prefix.Masked())
	}
	for _, s := range self {
		c.self[s] = true
	}
	c.resolver = newResolver(cfg.Nameservers)
	return c, nil
}

// newResolver uses the host's resolver configuration, or the given nameservers. The sidecar runs
// outside the enforced cgroup, so its own lookups are never redirected to itself.
func newResolver(nameservers []string) Resolver {
	if len(nameservers) == 0 {
		return &net.Resolver{PreferGo: true}
	}
	var servers []string
	for _, ns := range nameservers {
		if ap, err := netip.ParseAddrPort(ns); err == nil {
			servers = append(servers, ap.String())
		} else {
			servers = append(servers, net.JoinHostPort(ns, "53"))
		}
	}
	var next int
	var mu sync.Mutex
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			mu.Lock()
			s := servers[next%len(servers)]
			next++
			mu.Unlock()
			var d net.Dialer
			return d.DialContext(ctx, network, s)
		},
	}
}

// Resolve returns the addresses host may be dialed at, in order, with refused ones removed. When
// every address is refused it returns the first refusal.
func (c *Connector) Resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	host = hostname.Normalize(host)
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a.Unmap()}
	} else if a, ok := c.static[host]; ok {
		addrs = []netip.Addr{a}
	} else {
		found, err := c.resolver.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return nil, fmt.Errorf("resolving %s: %w", host, err)
		}
		for _, a := range found {
			addrs = append(addrs, a.Unmap())
		}
	}
	var ok []netip.Addr
	var refused error
	for _, a := range addrs {
		if reason := c.classify(a); reason != "" {
			if refused == nil {
				refused = &AddrError{Host: host, Addr: a, Reason: reason}
			}
			continue
		}
		ok = append(ok, a)
	}
	if len(ok) == 0 {
		if refused == nil {
			refused = fmt.Errorf("resolving %s: no addresses", host)
		}
		return nil, refused
	}
	return ok, nil
}

// Dial resolves host, classifies the result and connects to the first address that answers. It
// returns the address it dialed, for the audit record.
func (c *Connector) Dial(ctx context.Context, host string, port int) (net.Conn, netip.AddrPort, error) {
	addrs, err := c.Resolve(ctx, host)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	d := net.Dialer{Timeout: c.dialTimeout}
	var errs []error
	for _, a := range addrs {
		target := netip.AddrPortFrom(a, uint16(port))
		if c.self[target] || c.self[netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(port))] && a.IsLoopback() {
			errs = append(errs, &AddrError{Host: host, Addr: a, Reason: "the sidecar itself"})
			continue
		}
		conn, err := d.DialContext(ctx, "tcp", target.String())
		if err == nil {
			return conn, target, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, netip.AddrPort{}, errors.Join(errs...)
}

// DialContext adapts Dial to http.Transport.
func (c *Connector) DialContext(ctx context.Context, _, addr string) (net.Conn, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return nil, fmt.Errorf("port %q: %w", p, err)
	}
	conn, _, err := c.Dial(ctx, host, port)
	return conn, err
}

// classify returns why a must not be dialed, or "" when it may. allow_cidrs overrides every rule.
func (c *Connector) classify(a netip.Addr) string {
	a = a.Unmap()
	for _, p := range c.allow {
		if p.Contains(a) {
			return ""
		}
	}
	if reason := classifyAddr(a); reason != "" {
		return reason
	}
	for _, own := range c.own() {
		if own == a {
			return "own address"
		}
	}
	return ""
}

// Address ranges an agent may not reach through the sidecar unless configured. Addresses that embed
// an IPv4 address (NAT64, 6to4, IPv4-compatible) are judged by the address they embed.
var refusedRanges = []struct {
	prefix netip.Prefix
	reason string
}{
	{netip.MustParsePrefix("169.254.169.254/32"), "metadata"},
	{netip.MustParsePrefix("169.254.170.2/32"), "metadata"},
	{netip.MustParsePrefix("100.100.100.200/32"), "metadata"},
	{netip.MustParsePrefix("fd00:ec2::254/128"), "metadata"},
	{netip.MustParsePrefix("0.0.0.0/8"), "unspecified"},
	{netip.MustParsePrefix("10.0.0.0/8"), "private"},
	{netip.MustParsePrefix("100.64.0.0/10"), "shared address space"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("172.16.0.0/12"), "private"},
	{netip.MustParsePrefix("192.0.0.0/24"), "reserved"},
	{netip.MustParsePrefix("192.168.0.0/16"), "private"},
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"},
	{netip.MustParsePrefix("::/128"), "unspecified"},
	{netip.MustParsePrefix("::1/128"), "loopback"},
	{netip.MustParsePrefix("fc00::/7"), "private"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("fec0::/10"), "site-local"},
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
	{netip.MustParsePrefix("100::/64"), "discard"},
}

func classifyAddr(a netip.Addr) string {
	if embedded, ok := embeddedV4(a); ok {
		if r := classifyAddr(embedded); r != "" {
			return r + " (embedded)"
		}
	}
	for _, r := range refusedRanges {
		if r.prefix.Contains(a) {
			return r.reason
		}
	}
	return ""
}

var (
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	nat64Loc  = netip.MustParsePrefix("64:ff9b:1::/48")
	sixToFour = netip.MustParsePrefix("2002::/16")
	v4compat  = netip.MustParsePrefix("::/96")
)

// embeddedV4 extracts the IPv4 address carried inside an IPv6 address by the common translation
// schemes, so that 64:ff9b::7f00:1 is refused like 127.0.0.1.
func embeddedV4(a netip.Addr) (netip.Addr, bool) {
	if !a.Is6() {
		return netip.Addr{}, false
	}
	b := a.As16()
	switch {
	case nat64.Contains(a), nat64Loc.Contains(a), v4compat.Contains(a) && a != netip.IPv6Unspecified() && a != netip.IPv6Loopback():
		return netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]}), true
	case sixToFour.Contains(a):
		return netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]}), true
	}
	return netip.Addr{}, false
}

// cachedOwnAddrs returns the host's interface addresses, refreshed at most every ttl.
func cachedOwnAddrs(ttl time.Duration) func() []netip.Addr {
	var (
		mu      sync.Mutex
		addrs   []netip.Addr
		fetched time.Time
	)
	return func() []netip.Addr {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(fetched) < ttl {
			return addrs
		}
		fetched = time.Now()
		addrs = addrs[:0]
		ifaddrs, err := net.InterfaceAddrs()
		if err != nil {
			return addrs
		}
		for _, ia := range ifaddrs {
			if p, err := netip.ParsePrefix(ia.String()); err == nil {
				addrs = append(addrs, p.Addr().Unmap())
			}
		}
		return addrs
	}
}
