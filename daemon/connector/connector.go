// Package connector is how the sidecar reaches upstreams: it resolves a name with its own resolver
// (never trusting the address the agent dialed), classifies every resolved address, refuses those an
// agent must not reach through the sidecar (loopback, private, link-local, metadata, the host's own
// addresses, the sidecar's own listeners, and IPv6 addresses that embed one of those) unless
// [sidecar.upstream] allow_cidrs lifts the class, and dials exactly the address it classified.
//
// It uses the standard library only and decides nothing about policy: by the time it is asked to
// dial, the judge has allowed the flow and written its record.
package connector

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
	Host  string
	Addr  netip.Addr
	Class Class
}

func (e *AddrError) Error() string {
	return fmt.Sprintf("%s resolves to %s (%s)", e.Host, e.Addr, e.Class)
}

func (e *AddrError) Unwrap() error { return ErrRefusedAddress }

// Resolver looks names up for the connector; *net.Resolver satisfies it.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Connector resolves, classifies and dials. It is safe for concurrent use.
type Connector struct {
	resolver    Resolver
	static      map[string]netip.Addr
	allow       []netip.Prefix
	own         func() []netip.Addr // the host's own addresses; the slice is never modified after return
	self        map[netip.AddrPort]bool
	dialTimeout time.Duration
}

// New builds a connector from a validated [sidecar.upstream]. self lists the sidecar's own
// listeners, which are never dialed whatever allow_cidrs says.
func New(cfg Config, self []netip.AddrPort) (*Connector, error) {
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
		c.allow = append(c.allow, netip.PrefixFrom(prefix.Addr().Unmap(), prefix.Bits()-unmapBits(prefix)).Masked())
	}
	for _, s := range self {
		c.self[netip.AddrPortFrom(s.Addr().Unmap(), s.Port())] = true
	}
	var servers []netip.AddrPort
	for _, ns := range cfg.Nameservers {
		ap, err := ParseNameserver(ns)
		if err != nil {
			return nil, fmt.Errorf("upstream.nameservers: %w", err)
		}
		servers = append(servers, ap)
	}
	c.resolver = newResolver(servers)
	return c, nil
}

// unmapBits is how many prefix bits an IPv4-mapped prefix loses when unmapped.
func unmapBits(p netip.Prefix) int {
	if p.Addr().Is4In6() {
		return 96
	}
	return 0
}

// newResolver uses the host's resolver configuration, or the given nameservers in turn. The sidecar
// runs outside the enforced cgroup, so its own lookups are never redirected to itself.
func newResolver(servers []netip.AddrPort) Resolver {
	if len(servers) == 0 {
		return &net.Resolver{PreferGo: true}
	}
	var (
		next int
		mu   sync.Mutex
	)
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			mu.Lock()
			s := servers[next%len(servers)]
			next++
			mu.Unlock()
			var d net.Dialer
			return d.DialContext(ctx, network, s.String())
		},
	}
}

// Static returns the [sidecar.upstream] resolve override for a name, so that the DNS resolver can
// answer agents with the address the sidecar will dial.
func (c *Connector) Static(name string) (netip.Addr, bool) {
	a, ok := c.static[hostname.Normalize(name)]
	return a, ok
}

// Resolve returns the addresses host may be dialed at, in order, with refused ones removed. When
// every address is refused it returns the first refusal (an *AddrError).
func (c *Connector) Resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	host = hostname.Normalize(host)
	var found []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		found = []netip.Addr{a}
	} else if a, ok := c.static[host]; ok {
		found = []netip.Addr{a}
	} else {
		var err error
		if found, err = c.resolver.LookupNetIP(ctx, "ip", host); err != nil {
			return nil, fmt.Errorf("resolving %s: %w", host, err)
		}
	}
	ok := make([]netip.Addr, 0, len(found))
	var refused error
	for _, a := range found {
		a = a.Unmap()
		if class := c.Classify(a); class != Allowed {
			if refused == nil {
				refused = &AddrError{Host: host, Addr: a, Class: class}
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
		if c.isSelf(target) {
			errs = append(errs, &AddrError{Host: host, Addr: a, Class: Self})
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

// isSelf reports whether target is one of the sidecar's own listeners (a listener on 0.0.0.0 or ::
// is reached through every local address).
func (c *Connector) isSelf(target netip.AddrPort) bool {
	if c.self[target] {
		return true
	}
	for _, unspec := range []netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified()} {
		if c.self[netip.AddrPortFrom(unspec, target.Port())] && (target.Addr().IsLoopback() || c.isOwn(target.Addr())) {
			return true
		}
	}
	return false
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

// Classify returns why a must not be dialed, or Allowed. allow_cidrs lifts every class but
// metadata, which needs an entry as narrow as the metadata address itself.
func (c *Connector) Classify(a netip.Addr) Class {
	a = a.Unmap()
	class := ClassifyAddr(a)
	if class == Allowed && c.isOwn(a) {
		class = Own
	}
	if class == Allowed {
		return Allowed
	}
	for _, p := range c.allow {
		if !p.Contains(a) {
			continue
		}
		if class != Metadata || p.Bits() == a.BitLen() {
			return Allowed
		}
	}
	return class
}

func (c *Connector) isOwn(a netip.Addr) bool {
	for _, own := range c.own() {
		if own == a {
			return true
		}
	}
	return false
}

// cachedOwnAddrs returns the host's interface addresses, refreshed at most every ttl. Each refresh
// builds a new slice: callers may still be iterating the one they got before.
func cachedOwnAddrs(ttl time.Duration) func() []netip.Addr {
	var (
		mu      sync.Mutex
		addrs   []netip.Addr
		fetched time.Time
	)
	return func() []netip.Addr {
		mu.Lock()
		defer mu.Unlock()
		if !fetched.IsZero() && time.Since(fetched) < ttl {
			return addrs
		}
		fetched = time.Now()
		ifaddrs, err := net.InterfaceAddrs()
		if err != nil {
			return addrs // keep the last good list
		}
		fresh := make([]netip.Addr, 0, len(ifaddrs))
		for _, ia := range ifaddrs {
			if p, err := netip.ParsePrefix(ia.String()); err == nil {
				fresh = append(fresh, p.Addr().Unmap())
			}
		}
		addrs = fresh
		return addrs
	}
}
