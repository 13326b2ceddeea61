package connector

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/openfirma/firma/internal/duration"
)

// Config is [sidecar.upstream]: how the sidecar resolves, classifies and dials upstreams.
type Config struct {
	// CAFile holds extra roots the L7 engine verifies upstream certificates against (tests, private
	// CAs). The connector itself dials TCP and never reads it.
	CAFile string `toml:"ca_file"`
	// Resolve is static name → address overrides, like curl --resolve.
	Resolve map[string]string `toml:"resolve"`
	// AllowCIDRs lifts the refusal of otherwise-refused ranges (loopback, private, link-local…).
	// Metadata endpoints need an entry that names them exactly (a /32 or /128).
	AllowCIDRs []string `toml:"allow_cidrs"`
	// Nameservers the sidecar resolves with; empty = the host's /etc/resolv.conf.
	Nameservers []string `toml:"nameservers"`
	// DialTimeout bounds one TCP connect to an upstream.
	DialTimeout duration.Duration `toml:"dial_timeout"`
}

// DefaultConfig is the section's defaults.
func DefaultConfig() Config { return Config{DialTimeout: duration.Of(10 * time.Second)} }

// Validate checks the section. Errors name keys relative to [sidecar.upstream].
func (c *Config) Validate() error {
	var errs []error
	for name, addr := range c.Resolve {
		if _, err := netip.ParseAddr(addr); err != nil {
			errs = append(errs, fmt.Errorf("resolve: %q: %q is not an IP address", name, addr))
		}
	}
	for _, cidr := range c.AllowCIDRs {
		if _, err := netip.ParsePrefix(cidr); err != nil {
			errs = append(errs, fmt.Errorf("allow_cidrs: %q: %v", cidr, err))
		}
	}
	for _, ns := range c.Nameservers {
		if _, err := ParseNameserver(ns); err != nil {
			errs = append(errs, fmt.Errorf("nameservers: %w", err))
		}
	}
	if c.DialTimeout.Duration <= 0 {
		errs = append(errs, errors.New("dial_timeout: must be positive"))
	}
	return errors.Join(errs...)
}

// ParseNameserver reads "addr" or "addr:port" (IPv6 as "[addr]:port"); the port defaults to 53.
func ParseNameserver(ns string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(ns); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(ns)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not an address or address:port", ns)
	}
	return netip.AddrPortFrom(a, 53), nil
}
