package policies

import (
	"path"
	"strings"
	"testing"
)

func TestNormalizeHost(t *testing.T) {
	for _, tc := range []struct {
		in   string
		host string
		port int
		err  string
	}{
		{in: "API.Anthropic.COM", host: "api.anthropic.com"},
		{in: "api.anthropic.com.", host: "api.anthropic.com"},
		{in: "api.anthropic.com:443", host: "api.anthropic.com", port: 443},
		{in: "API.anthropic.com.:8443", host: "api.anthropic.com", port: 8443},
		{in: "169.254.169.254", host: "169.254.169.254"},
		{in: "169.254.169.254.", host: "169.254.169.254"},
		{in: "[fd00:ec2::254]", host: "fd00:ec2::254"},
		{in: "[FD00:EC2:0::254]:80", host: "fd00:ec2::254", port: 80},
		{in: "fd00:ec2:0:0:0:0:0:254", host: "fd00:ec2::254"},
		{in: "[::ffff:169.254.169.254]", host: "169.254.169.254"},
		{in: "::ffff:a9fe:a9fe", host: "169.254.169.254"},
		{in: "_dmarc.example.com", host: "_dmarc.example.com"},
		{in: "", err: "no host"},
		{in: "a..b", err: "empty label"},
		{in: "a.b..", err: "empty label"},
		{in: "exa mple.com", err: "invalid character ' '"},
		{in: "bücher.example", err: "invalid character"},
		{in: "example.com:0", err: "bad port"},
		{in: "example.com:99999", err: "bad port"},
		{in: "example.com:+80", err: "bad port"},
		{in: "[::1", err: "unclosed"},
		{in: "[::1]x", err: "bad port"},
		{in: "[example.com]", err: "not an IPv6 address"},
		{in: "[fe80::1%eth0]", err: "not an IPv6 address"},
		{in: "example.com%2f", err: "invalid character"},
		{in: strings.Repeat("a", 64) + ".com", err: "label longer than 63"},
	} {
		host, port, err := NormalizeHost(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("NormalizeHost(%q) = %q, %v; want error %q", tc.in, host, err, tc.err)
			}
			continue
		}
		if err != nil || host != tc.host || port != tc.port {
			t.Errorf("NormalizeHost(%q) = %q, %d, %v; want %q, %d", tc.in, host, port, err, tc.host, tc.port)
		}
	}
}

func TestNormalizePath(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{in: "", want: "/"},
		{in: "/", want: "/"},
		{in: "/v1/messages", want: "/v1/messages"},
		{in: "/v1/messages?beta=true", want: "/v1/messages"},
		{in: "/v1/messages#frag", want: "/v1/messages"},
		{in: "?q", want: "/"},
		{in: "/v1/%6Dessages", want: "/v1/messages"},
		{in: "/v1/%6dessages", want: "/v1/messages"},
		{in: "/v1//messages", want: "/v1/messages"},
		{in: "//v1///messages//", want: "/v1/messages"},
		{in: "/v1/./messages", want: "/v1/messages"},
		{in: "/v1/x/../messages", want: "/v1/messages"},
		{in: "/v1/x/%2e%2e/messages", want: "/v1/messages"},
		{in: "/v1/x/%2E%2E/messages", want: "/v1/messages"},
		{in: "/v1/x/.%2e/messages", want: "/v1/messages"},
		{in: "/../../etc/passwd", want: "/etc/passwd"},
		{in: "/v1/messages/", want: "/v1/messages"},
		{in: "/v1%2Fmessages", want: "/v1/messages"},
		{in: "/a/..", want: "/"},
		{in: "/a/.", want: "/a"},
		{in: "/a/.b", want: "/a/.b"},
		{in: "/a/..b", want: "/a/..b"},
		{in: "/a/b.", want: "/a/b."},
		{in: "/%252e%252e/x", want: "/%2e%2e/x"}, // decoded once, like the upstream does
		{in: "/caf%C3%A9", want: "/café"},
		{in: "/café", want: "/café"},
		{in: "v1/messages", err: "does not start with '/'"},
		{in: "http://x/v1", err: "does not start with '/'"},
		{in: "/v1/%zz", err: "invalid percent-encoding"},
		{in: "/v1/%4", err: "invalid percent-encoding"},
		{in: "/v1/%", err: "invalid percent-encoding"},
		{in: "/v1/%00", err: "control character"},
		{in: "/v1/\x01", err: "control character"},
		{in: "/v1/%0a", err: "control character"},
		{in: "/v1/%7f", err: "control character"},
		{in: "/v1/%ff", err: "invalid UTF-8"},
	} {
		got, err := NormalizePath(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("NormalizePath(%q) = %q, %v; want error %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("NormalizePath(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// FuzzNormalizePath: the result is canonical (normalizing it again changes nothing) and never
// carries a segment that could still be resolved.
func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/", "/v1/%6Dessages", "/a/../b", "//x//", "/%2e%2e/", "/a/.", "/a?b", "/%zz"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := NormalizePath(in)
		if err != nil {
			return
		}
		if !strings.HasPrefix(out, "/") || strings.Contains(out, "//") || path.Clean(out) != out {
			t.Fatalf("NormalizePath(%q) = %q: not canonical", in, out)
		}
		if strings.ContainsAny(out, "%?#") {
			// A literal '%', '?' or '#' may only come from a decoded "%25", "%3F" or "%23";
			// normalizing again would decode it, or cut the path at it.
			return
		}
		again, err := NormalizePath(out)
		if err != nil || again != out {
			t.Fatalf("NormalizePath(%q) = %q, but normalizing that gives %q, %v", in, out, again, err)
		}
	})
}

// TestPathIsCleanAgrees: the allocation-free fast path only accepts paths path.Clean keeps as is.
func TestPathIsCleanAgrees(t *testing.T) {
	for _, p := range []string{"/", "/a", "/a/", "/a//b", "/a/./b", "/a/../b", "/.", "/..", "/a/.", "/a/..", "/.a", "/a.", "/..a", "/a/b.c/d", "/%41", "/a\x01"} {
		if pathIsClean(p) && path.Clean(p) != p {
			t.Errorf("pathIsClean(%q) but path.Clean gives %q", p, path.Clean(p))
		}
	}
}

func TestNormalizeRequest(t *testing.T) {
	for _, tc := range []struct {
		r        Request
		port     int
		resource string
		err      string
	}{
		{r: Request{AgentID: "a", Method: "get", Host: "X.com", Path: "/p?q", Transport: "https"}, port: 443, resource: "x.com/p"},
		{r: Request{AgentID: "a", Method: "GET", Host: "x.com", Path: "/p", Transport: "http"}, port: 80, resource: "x.com/p"},
		{r: Request{AgentID: "a", Method: "CONNECT", Host: "x.com", Port: 8443, Path: "/ignored", Transport: "tls"}, port: 8443, resource: "x.com"},
		{r: Request{AgentID: "a", Method: "DNS", Host: "x.com."}, port: 53, resource: "x.com"},
		{r: Request{AgentID: "a", Method: "CONNECT", Host: "203.0.113.7", Port: 22, Transport: "tcp"}, port: 22, resource: "203.0.113.7"},
		{r: Request{AgentID: "a", Method: "CONNECT", Host: "x.com:443", Transport: "TLS"}, port: 443, resource: "x.com"},
		{r: Request{Method: "GET", Host: "x.com"}, err: "no agent id"},
		{r: Request{AgentID: "a", Host: "x.com"}, err: "no method"},
		{r: Request{AgentID: "a", Method: "GE T", Host: "x.com"}, err: "invalid method"},
		{r: Request{AgentID: "a", Method: "GET", Host: "x.com", Transport: "quic"}, err: "unknown transport"},
		{r: Request{AgentID: "a", Method: "GET", Host: "x.com", Port: 70000}, err: "out of range"},
		{r: Request{AgentID: "a", Method: "CONNECT", Host: "x.com:80", Port: 443}, err: "names port 80"},
	} {
		n, err := normalize(&tc.r)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.HasPrefix(err.Error(), "malformed request: ") {
				t.Errorf("normalize(%+v) error %v, want %q", tc.r, err, tc.err)
			}
			continue
		}
		if err != nil || n.port != tc.port || n.resource != tc.resource {
			t.Errorf("normalize(%+v) = port %d resource %q, %v; want %d %q", tc.r, n.port, n.resource, err, tc.port, tc.resource)
		}
	}
}

// An HTTP request with the method "DNS" is refused as malformed, never judged as a name lookup: a
// policy that lets an agent resolve any name must not let it send any request with that method.
func TestHTTPMethodDNSIsNotALookup(t *testing.T) {
	for _, transport := range []string{"https", "http", "tls", "tcp"} {
		if _, err := normalize(&Request{AgentID: "a", Method: "dns", Host: "evil.example", Path: "/x?d=1", Transport: transport}); err == nil ||
			!strings.Contains(err.Error(), "method DNS on a "+transport+" request") {
			t.Errorf("%s: %v", transport, err)
		}
	}
	for _, transport := range []string{"dns", ""} {
		n, err := normalize(&Request{AgentID: "a", Method: MethodDNS, Host: "api.example.com", Transport: transport})
		if err != nil || n.kind != intentDNS {
			t.Errorf("a lookup over %q: %v", transport, err)
		}
	}
}
