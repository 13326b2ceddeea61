package metrics

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
)

// unixPrefix marks a listen_addr that is a unix socket path.
const unixPrefix = "unix:"

// Config is [sidecar.metrics]: the opt-in listener of /healthz and /metrics.
type Config struct {
	// ListenAddr is where /healthz and /metrics are served: a loopback "127.0.0.1:9090",
	// "[::1]:9090" or "localhost:9090", or a unix socket "unix:/run/firma/metrics.sock" (0600,
	// root only). "" (the default) serves nothing.
	ListenAddr string `toml:"listen_addr"`
	// AllowRemote permits a listen_addr that is not loopback ("0.0.0.0:9090", a host address). The
	// endpoints name agents, action classes and the sidecar's state to whoever reaches them, and
	// they have no authentication: put a firewall or an authenticating proxy in front.
	AllowRemote bool `toml:"allow_remote"`
}

// Enabled reports whether the listener is configured.
func (c Config) Enabled() bool { return c.ListenAddr != "" }

// Validate checks the section; keys are named relative to [sidecar.metrics].
func (c Config) Validate() error {
	if c.ListenAddr == "" {
		return nil
	}
	e, err := ParseEndpoint(c.ListenAddr)
	if err != nil {
		return fmt.Errorf("listen_addr: %w", err)
	}
	if !e.Local() && !c.AllowRemote {
		return fmt.Errorf("listen_addr: %s is not a loopback address: /metrics names agents and the sidecar's state "+
			"to anyone who reaches it, without authentication (use 127.0.0.1:PORT or unix:/PATH, or set allow_remote = true "+
			"behind a firewall)", c.ListenAddr)
	}
	return nil
}

// Endpoint is a parsed listen_addr: what to listen on and how a client reaches it.
type Endpoint struct {
	Network string // "tcp" or "unix"
	Address string // host:port, or the socket's absolute path
}

// ParseEndpoint reads a listen_addr: "host:port" where host is an IP literal, "localhost" or empty
// (every interface), or "unix:/absolute/path".
func ParseEndpoint(addr string) (Endpoint, error) {
	if path, ok := strings.CutPrefix(addr, unixPrefix); ok {
		if !filepath.IsAbs(path) || filepath.Clean(path) != path {
			return Endpoint{}, fmt.Errorf("%q: want unix: followed by an absolute, clean path", addr)
		}
		return Endpoint{Network: "unix", Address: path}, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return Endpoint{}, fmt.Errorf("%q: want host:port or unix:/path: %w", addr, err)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return Endpoint{}, fmt.Errorf("%q: port %q is not a number from 1 to 65535", addr, port)
	}
	if host != "" && host != "localhost" {
		if _, err := netip.ParseAddr(host); err != nil {
			return Endpoint{}, fmt.Errorf("%q: %q is not an IP address or localhost (a name could resolve anywhere)", addr, host)
		}
	}
	return Endpoint{Network: "tcp", Address: addr}, nil
}

// Local reports whether only this host can reach the endpoint: a unix socket or a loopback address.
func (e Endpoint) Local() bool {
	if e.Network == "unix" {
		return true
	}
	host, _, err := net.SplitHostPort(e.Address)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// AddrPort is a TCP endpoint's address ("localhost" as 127.0.0.1), for the connector's list of
// addresses it never dials; false for a unix socket.
func (e Endpoint) AddrPort() (netip.AddrPort, bool) {
	if e.Network != "tcp" {
		return netip.AddrPort{}, false
	}
	host, port, err := net.SplitHostPort(e.Address)
	if err != nil {
		return netip.AddrPort{}, false
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, false
	}
	var a netip.Addr
	switch host {
	case "localhost":
		a = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	case "":
		a = netip.IPv6Unspecified()
	default:
		if a, err = netip.ParseAddr(host); err != nil {
			return netip.AddrPort{}, false
		}
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(p)), true
}

// String is the endpoint as listen_addr writes it.
func (e Endpoint) String() string {
	if e.Network == "unix" {
		return unixPrefix + e.Address
	}
	return e.Address
}

// errNoEndpoint is what a client gets for an empty listen_addr.
var errNoEndpoint = errors.New("no [sidecar.metrics] listen_addr: the sidecar serves no /healthz or /metrics")
