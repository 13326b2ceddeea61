package authority

import (
	"errors"
	"fmt"
	"strings"
)

// A resource scope is a `*` glob over a resource written host+path, e.g. "api.anthropic.com" (a
// connection-level intent: no path) or "api.anthropic.com/v1/messages" (an HTTP request). The exact
// semantics, chosen so that `*.anthropic.com*` can never cover anthropic.com.evil.io:
//
//   - The scope and the resource are each split at their first "/" into a host part and a path part
//     (the path part keeps its leading "/"). A ":port" on the resource's host is ignored: a scope
//     names hosts, not ports, and may not contain ":".
//   - Hosts compare case-insensitively, with a trailing dot removed; paths compare exactly.
//   - In the host part, `*` matches any run (possibly empty) of host characters — letters, digits,
//     "-", "_" and "." — and never ":" or "/". So `*.anthropic.com` covers api.anthropic.com and
//     a.b.anthropic.com, but not anthropic.com.
//   - A scope with no path part that ends in `*` covers any port and any path, including none.
//     When that last `*` follows a letter or digit (as in `*.anthropic.com*` or
//     `api.anthropic.com*`) it is a "rest" wildcard that matches no host characters at all: the host
//     must match what precedes it. So `*.anthropic.com*` covers api.anthropic.com,
//     api.anthropic.com:443 and api.anthropic.com/v1/messages, and does not cover
//     api.anthropic.com.evil.io or x.anthropic.community. When it follows ".", "-" or "_" (as in
//     `api.*`) it is also a host wildcard: `api.*` covers api.example.org/anything.
//   - Otherwise a scope with no path part covers only connection-level resources (no path).
//   - In the path part, `*` matches any run of characters, "/" included. A connection-level
//     resource (no path) is covered by a path part only when that path part is exactly "/*" — a
//     scope limited to some paths cannot open a tunnel in which the path cannot be seen.
//   - A scope made only of `*` covers everything.

// ErrBadScope is wrapped by ValidateScope's errors.
var ErrBadScope = errors.New("bad resource scope")

// ValidateScope checks that scope is non-empty and uses only characters a host+path glob may hold.
func ValidateScope(scope string) error {
	if scope == "" {
		return fmt.Errorf("%w: empty", ErrBadScope)
	}
	if len(scope) > 2048 {
		return fmt.Errorf("%w: longer than 2048 bytes", ErrBadScope)
	}
	host, _, _ := strings.Cut(scope, "/")
	if host == "" {
		return fmt.Errorf("%w: %q has no host part", ErrBadScope, scope)
	}
	for i := 0; i < len(scope); i++ {
		c := scope[i]
		if c <= ' ' || c >= 0x7f {
			return fmt.Errorf("%w: %q: control, space or non-ASCII byte at %d", ErrBadScope, scope, i)
		}
	}
	for i := 0; i < len(host); i++ {
		if c := host[i]; !isHostChar(c) && c != '*' {
			return fmt.Errorf("%w: %q: %q is not allowed in the host part", ErrBadScope, scope, c)
		}
	}
	return nil
}

// ScopeCovers reports whether scope covers resource (host+path), by the rules above. An invalid
// scope covers nothing.
func ScopeCovers(scope, resource string) bool {
	if ValidateScope(scope) != nil {
		return false
	}
	if strings.Trim(scope, "*") == "" {
		return true
	}
	sHost, sPath, sHasPath := cutPath(scope)
	rHost, rPath, _ := cutPath(resource)
	rHost = stripPort(normalizeHost(rHost))
	if rHost == "" {
		return false
	}
	sHost = strings.ToLower(sHost)

	if !sHasPath {
		n := len(sHost)
		if sHost[n-1] != '*' {
			return rPath == "" && globMatch(sHost, rHost, isHostChar)
		}
		if c := sHost[n-2]; c >= 'a' && c <= 'z' || c >= '0' && c <= '9' {
			sHost = sHost[:n-1] // rest wildcard: no more host characters
		}
		return globMatch(sHost, rHost, isHostChar)
	}
	if !globMatch(sHost, rHost, isHostChar) {
		return false
	}
	if rPath == "" {
		return sPath == "/*"
	}
	return globMatch(sPath, rPath, func(byte) bool { return true })
}

// cutPath splits s at its first "/" into host and path, the path keeping its "/".
func cutPath(s string) (host, path string, hasPath bool) {
	if i := strings.IndexByte(s, '/'); i >= 0 {
		return s[:i], s[i:], true
	}
	return s, "", false
}

// normalizeHost lowercases host[:port] and removes a trailing dot from the name. It returns "" for
// a host that holds anything but host characters and one optional ":port".
func normalizeHost(h string) string {
	h = strings.ToLower(h)
	name, port, hasPort := strings.Cut(h, ":")
	name = strings.TrimSuffix(name, ".")
	if name == "" || strings.Contains(name, "..") || name[0] == '.' {
		return ""
	}
	for i := 0; i < len(name); i++ {
		if !isHostChar(name[i]) {
			return ""
		}
	}
	if !hasPort {
		return name
	}
	if port == "" {
		return ""
	}
	for i := 0; i < len(port); i++ {
		if port[i] < '0' || port[i] > '9' {
			return ""
		}
	}
	return name + ":" + port
}

func stripPort(h string) string {
	name, _, _ := strings.Cut(h, ":")
	return name
}

func isHostChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
}

// globMatch reports whether s matches pattern, where `*` matches any run of bytes for which star
// returns true and every other byte matches itself.
func globMatch(pattern, s string, star func(byte) bool) bool {
	// ok[j] is whether pattern[:i] matches s[:j], row by row over i.
	ok := make([]bool, len(s)+1)
	ok[0] = true
	for i := 0; i < len(pattern); i++ {
		p := pattern[i]
		if p == '*' {
			for j := 1; j <= len(s); j++ {
				ok[j] = ok[j] || ok[j-1] && star(s[j-1])
			}
			continue
		}
		for j := len(s); j >= 1; j-- {
			ok[j] = ok[j-1] && s[j-1] == p
		}
		ok[0] = false
	}
	return ok[len(s)]
}
