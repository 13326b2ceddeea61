package policies

import (
	"errors"
	"fmt"
	"path"
	"strings"
	"unicode/utf8"

	"github.com/cedar-policy/cedar-go/types"

	"github.com/openfirma/firma/internal/hostname"
)

// errMalformed prefixes what normalize refuses; the decision reason is its text.
var errMalformed = errors.New("malformed request")

// normalized is a Request after normalization: what mapping rules and Cedar see.
type normalized struct {
	agent, session string
	method         string
	kind           intentKind
	host           string
	port           int
	path           string // "" for connection-level and DNS intents
	query          string // the raw query of an HTTP intent, without '?'
	resource       string // host + path
	transport      string
	pid, uid       int
	exe, cgroup    string
}

type intentKind uint8

const (
	intentHTTP intentKind = iota
	intentConnect
	intentDNS
)

func malformed(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errMalformed, fmt.Sprintf(format, a...))
}

// normalize canonicalizes a request so that no spelling of a host or path can dodge a rule:
//   - host: lowercased, one trailing dot stripped, a port in it split off (it must agree with Port),
//     IPv6 brackets removed, IPv4-mapped IPv6 unmapped; anything but an IP literal or an ASCII
//     name of letters, digits, '-' and '_' is refused;
//   - port: when 0, the default of the transport (http 80, https/tls 443, DNS 53);
//   - path (HTTP only): query and fragment dropped, percent-decoded once (so /v1/%6Dessages is
//     /v1/messages and %2e%2e is ..), then "." and ".." resolved and duplicate and trailing
//     slashes removed; invalid escapes, control characters and invalid UTF-8 are refused;
//   - connection-level (CONNECT) and DNS intents have no path.
func normalize(r *Request) (normalized, error) {
	n := normalized{
		agent: r.AgentID, session: r.SessionID,
		pid: r.PID, uid: r.UID, exe: r.Exe, cgroup: r.Cgroup,
	}
	if r.AgentID == "" {
		return n, malformed("no agent id")
	}
	n.transport = strings.ToLower(r.Transport)
	switch n.transport {
	case "", "http", "https", "tls", "tcp", "dns":
	default:
		return n, malformed("unknown transport %q", r.Transport)
	}
	n.method = strings.ToUpper(r.Method)
	switch {
	case n.method == MethodConnect:
		n.kind = intentConnect
	case n.method == MethodDNS && n.transport != "" && n.transport != "dns":
		// An HTTP request whose method is "DNS" is not a name lookup. Judged as one, a policy that
		// lets the agent resolve names would let it send that request, path and all, anywhere.
		return n, malformed("method DNS on a %s request", n.transport)
	case n.method == MethodDNS:
		n.kind = intentDNS
	case n.method == "":
		return n, malformed("no method")
	case !isToken(n.method):
		return n, malformed("invalid method %q", r.Method)
	}
	host, hostPort, err := NormalizeHost(r.Host)
	if err != nil {
		return n, fmt.Errorf("%w: %v", errMalformed, err)
	}
	n.host = host
	n.port = r.Port
	if n.port < 0 || n.port > 65535 {
		return n, malformed("port %d out of range", r.Port)
	}
	if hostPort != 0 {
		if n.port != 0 && n.port != hostPort {
			return n, malformed("host %q names port %d, the connection port is %d", r.Host, hostPort, n.port)
		}
		n.port = hostPort
	}
	if n.port == 0 {
		n.port = defaultPort(n.kind, n.transport)
	}
	if n.kind != intentHTTP {
		n.resource = n.host
		return n, nil
	}
	if i := strings.IndexAny(r.Path, "?#"); i >= 0 && r.Path[i] == '?' {
		n.query, _, _ = strings.Cut(r.Path[i+1:], "#")
	}
	if n.path, err = NormalizePath(r.Path); err != nil {
		return n, fmt.Errorf("%w: %v", errMalformed, err)
	}
	n.resource = n.host + n.path
	return n, nil
}

func defaultPort(kind intentKind, transport string) int {
	switch {
	case kind == intentDNS || transport == "dns":
		return 53
	case transport == "http":
		return 80
	case transport == "https" || transport == "tls":
		return 443
	}
	return 0
}

// NormalizeHost returns host in the form mapping rules and policies compare against (hostname.Parse):
// lowercased, trailing dot stripped, IP literals canonical; a port is split off (0 when none).
func NormalizeHost(host string) (string, int, error) { return hostname.Parse(host) }

// NormalizePath returns the canonical form of an HTTP request path (see normalize): "/" for an
// empty path, never a query.
func NormalizePath(p string) (string, error) {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	if p == "" {
		return "/", nil
	}
	if p[0] != '/' {
		return "", fmt.Errorf("path %q does not start with '/'", p)
	}
	if pathIsClean(p) {
		return p, nil
	}
	var b strings.Builder
	b.Grow(len(p))
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c == '%' {
			if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
				return "", fmt.Errorf("path %q: invalid percent-encoding", p)
			}
			c = unhex(p[i+1])<<4 | unhex(p[i+2])
			i += 2
		}
		if c < 0x20 || c == 0x7f {
			return "", fmt.Errorf("path %q: control character", p)
		}
		b.WriteByte(c)
	}
	decoded := b.String()
	if !utf8.ValidString(decoded) {
		return "", fmt.Errorf("path %q: invalid UTF-8", p)
	}
	return path.Clean(decoded), nil
}

// pathIsClean reports whether p is already canonical, so the common case costs no allocation.
func pathIsClean(p string) bool {
	if len(p) > 1 && p[len(p)-1] == '/' {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '%' || c < 0x20 || c >= 0x7f:
			return false
		case c == '/' && i+1 < len(p) && p[i+1] == '/':
			return false
		case c == '.' && p[i-1] == '/' && (i+1 == len(p) || p[i+1] == '/' || p[i+1] == '.' && (i+2 == len(p) || p[i+2] == '/')):
			return false
		}
	}
	return true
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// isToken reports whether s is an HTTP method token (RFC 9110 tchar).
func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0 {
			continue
		}
		return false
	}
	return s != ""
}

// resourceEntity is the Cedar resource of a decision, with its attributes.
func resourceEntity(n *normalized, provider string) types.Entity {
	attrs := types.RecordMap{
		"host":   types.String(n.host),
		"path":   types.String(n.path),
		"method": types.String(n.method),
		"port":   types.Long(n.port),
	}
	if provider != "" {
		attrs["provider"] = types.String(provider)
	}
	return types.Entity{
		UID:        types.NewEntityUID(ResourceType, types.String(n.resource)),
		Attributes: types.NewRecord(attrs),
	}
}
