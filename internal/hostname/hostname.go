// Package hostname is firma's one host normalizer: the canonical form in which SNI, Host headers,
// CONNECT targets, DNS questions, mapping rules, host lists and credentials compare hosts.
// Lowercase, one trailing dot stripped, IPv6 brackets removed, IP literals canonical (IPv4-mapped
// addresses unmapped); names are LDH labels (and '_') within DNS length limits.
package hostname

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Parse returns host in the canonical form every comparison in firma uses: lowercased,
// trailing dot stripped, IP literals canonical (no brackets, IPv4-mapped addresses unmapped). A port
// in host ("example.com:443", "[::1]:80") is split off and returned; 0 when there is none.
func Parse(host string) (string, int, error) {
	if host == "" {
		return "", 0, errors.New("no host")
	}
	name, port := host, 0
	if strings.HasPrefix(host, "[") {
		end := strings.IndexByte(host, ']')
		if end < 0 {
			return "", 0, fmt.Errorf("host %q: unclosed '['", host)
		}
		name = host[1:end]
		rest := host[end+1:]
		if rest != "" {
			p, ok := ParsePort(strings.TrimPrefix(rest, ":"))
			if !strings.HasPrefix(rest, ":") || !ok {
				return "", 0, fmt.Errorf("host %q: bad port", host)
			}
			port = p
		}
		addr, err := netip.ParseAddr(name)
		if err != nil || !addr.Is6() || addr.Zone() != "" {
			return "", 0, fmt.Errorf("host %q: not an IPv6 address", host)
		}
		return addr.Unmap().String(), port, nil
	}
	if i := strings.IndexByte(host, ':'); i >= 0 {
		if strings.Count(host, ":") > 1 { // a bare IPv6 literal
			addr, err := netip.ParseAddr(host)
			if err != nil || addr.Zone() != "" {
				return "", 0, fmt.Errorf("host %q: not an IPv6 address", host)
			}
			return addr.Unmap().String(), 0, nil
		}
		p, ok := ParsePort(host[i+1:])
		if !ok {
			return "", 0, fmt.Errorf("host %q: bad port", host)
		}
		name, port = host[:i], p
	}
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	if addr, err := netip.ParseAddr(name); err == nil {
		if addr.Zone() != "" {
			return "", 0, fmt.Errorf("host %q: zoned address", host)
		}
		return addr.Unmap().String(), port, nil
	}
	if err := Check(name); err != nil {
		return "", 0, fmt.Errorf("host %q: %v", host, err)
	}
	return name, port, nil
}

// ParsePort accepts a decimal port 1-65535, without sign or spaces.
func ParsePort(s string) (int, bool) {
	if s == "" || len(s) > 5 {
		return 0, false
	}
	p, err := strconv.Atoi(s)
	if err != nil || p < 1 || p > 65535 || s[0] == '+' || s[0] == '-' {
		return 0, false
	}
	return p, true
}

// Check accepts a lowercase ASCII DNS name: labels of letters, digits, '-' and '_'.
func Check(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	if len(name) > 253 {
		return errors.New("name longer than 253 characters")
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" {
			return errors.New("empty label")
		}
		if len(label) > 63 {
			return errors.New("label longer than 63 characters")
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("invalid character %q", c)
			}
		}
	}
	return nil
}

// Normalize is Parse for a host without a port. A host that does not parse is lowercased with its
// trailing dot stripped only, so that it matches no pattern and no SNI by accident.
func Normalize(host string) string {
	h, port, err := Parse(host)
	if err != nil || port != 0 {
		return strings.TrimSuffix(strings.ToLower(host), ".")
	}
	return h
}
