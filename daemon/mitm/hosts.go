package mitm

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// NormalizeHost is the canonical form every host comparison uses: lowercase, one trailing dot
// stripped, IPv6 brackets removed and IP literals in their canonical text. It does not strip a port.
func NormalizeHost(host string) string {
	h := strings.ToLower(strings.TrimSuffix(host, "."))
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	if ip, err := netip.ParseAddr(h); err == nil {
		return ip.WithZone("").String()
	}
	return h
}

// HostPattern is one entry of a host list: an exact name or IP literal, or "*." followed by a name,
// which matches that name with exactly one more label in front ("*.anthropic.com" matches
// "api.anthropic.com", not "api.dev.anthropic.com" and not "anthropic.com").
type HostPattern struct {
	name     string // normalized; for a wildcard, the part after "*."
	wildcard bool
}

var errBadPattern = errors.New("not a host name, IP literal or *.name pattern")

// ParseHostPattern normalizes s and checks its syntax.
func ParseHostPattern(s string) (HostPattern, error) {
	n := NormalizeHost(strings.TrimSpace(s))
	if rest, ok := strings.CutPrefix(n, "*."); ok {
		if !validName(rest) {
			return HostPattern{}, fmt.Errorf("%q: %w", s, errBadPattern)
		}
		return HostPattern{name: rest, wildcard: true}, nil
	}
	if _, err := netip.ParseAddr(n); err == nil {
		return HostPattern{name: n}, nil
	}
	if !validName(n) {
		return HostPattern{}, fmt.Errorf("%q: %w", s, errBadPattern)
	}
	return HostPattern{name: n}, nil
}

// Match reports whether host (in any case, with or without a trailing dot) matches the pattern.
func (p HostPattern) Match(host string) bool {
	h := NormalizeHost(host)
	if !p.wildcard {
		return h == p.name
	}
	label, ok := strings.CutSuffix(h, "."+p.name)
	return ok && label != "" && !strings.Contains(label, ".")
}

func (p HostPattern) String() string {
	if p.wildcard {
		return "*." + p.name
	}
	return p.name
}

// HostList is a parsed intercept_hosts, bypass_hosts or strict_hosts list.
type HostList []HostPattern

// ParseHostList parses every entry; the error names each bad entry by key and index.
func ParseHostList(key string, entries []string) (HostList, error) {
	var (
		l    HostList
		errs []error
	)
	for i, e := range entries {
		p, err := ParseHostPattern(e)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s[%d]: %w", key, i, err))
			continue
		}
		l = append(l, p)
	}
	return l, errors.Join(errs...)
}

// Match reports whether any pattern matches host.
func (l HostList) Match(host string) bool {
	for _, p := range l {
		if p.Match(host) {
			return true
		}
	}
	return false
}

// validName accepts a DNS name of letters, digits, '-' and '_' in non-empty labels.
func validName(n string) bool {
	if n == "" || len(n) > 253 {
		return false
	}
	for _, label := range strings.Split(n, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}
