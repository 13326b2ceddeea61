package authority

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/internal/duration"
)

// Config is the [authority] section of firma.toml, as the guide writes it. Relative paths are
// relative to the working directory of the firma process, as in the guide.
type Config struct {
	ListenAddr        string `toml:"listen_addr"`
	PolicyDir         string `toml:"policy_dir"`          // *.cedar files served as the policy bundle
	IssuancePolicyDir string `toml:"issuance_policy_dir"` // *.cedar files that decide what may be issued
	RevocationFile    string `toml:"revocation_file"`
	KeyFile           string `toml:"key_file"` // Ed25519 private key from `firma authority generate-key`
	MaxTTLSeconds     int64  `toml:"max_ttl_seconds"`
	BundleTTLSeconds  int64  `toml:"bundle_ttl_seconds"` // a sidecar out of contact this long fails closed
	LogLevel          string `toml:"log_level"`
	// Schema replaces the embedded firma.cedarschema for the bundle and for issuance; "" = embedded.
	Schema string `toml:"schema"`

	// TLSCertFile and TLSKeyFile make the authority serve HTTPS (PEM certificate chain and key,
	// reread when they change). Without them it serves plain HTTP, which only a loopback
	// listen_addr may do.
	TLSCertFile string `toml:"tls_cert_file"`
	TLSKeyFile  string `toml:"tls_key_file"`
	// ClientCAFile authenticates sidecars by client certificate: PEM CA certificates that sign
	// them (reread when it changes). The sidecar's name is its certificate's common name.
	ClientCAFile string `toml:"client_ca_file"`
	// TokensFile authenticates sidecars by bearer token: one SHA-256 hash per sidecar name (see
	// TokensFile format in tokens.go), reread when it changes.
	TokensFile string `toml:"tokens_file"`
	// IssuedFile records every capability issued (token id and claims, never the token), so that
	// revoke can refuse an id this authority never issued. "" = issued.jsonl beside
	// revocation_file.
	IssuedFile string `toml:"issued_file"`
}

// DefaultConfig returns the defaults that apply to keys a file leaves out.
func DefaultConfig() Config {
	return Config{
		ListenAddr:       "[::1]:50051",
		MaxTTLSeconds:    28800,
		BundleTTLSeconds: 60,
		LogLevel:         "info",
	}
}

// maxBundleTTL bounds bundle_ttl_seconds: a day without contact is already far too long to trust.
const maxBundleTTL = 86400

// Validate checks the keys every authority command relies on. Commands then require the paths
// they use (RequireServe, RequireIssue, RequireRevoke).
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("authority.%s: %s", key, fmt.Sprintf(format, a...)))
	}
	host, _, err := net.SplitHostPort(c.ListenAddr)
	if err != nil {
		bad("listen_addr", "%q: %v", c.ListenAddr, err)
	}
	if c.MaxTTLSeconds <= 0 {
		bad("max_ttl_seconds", "must be positive, got %d", c.MaxTTLSeconds)
	}
	if c.BundleTTLSeconds <= 0 || c.BundleTTLSeconds > maxBundleTTL {
		bad("bundle_ttl_seconds", "must be between 1 and %d, got %d", maxBundleTTL, c.BundleTTLSeconds)
	}
	if _, err := zerolog.ParseLevel(c.LogLevel); err != nil || c.LogLevel == "" {
		bad("log_level", "%q is not one of trace, debug, info, warn, error", c.LogLevel)
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		bad("tls_cert_file", "tls_cert_file and tls_key_file must be set together")
	}
	if c.ClientCAFile != "" && !c.TLS() {
		bad("client_ca_file", "client certificates need TLS: set tls_cert_file and tls_key_file")
	}
	if err == nil && !isLoopbackHost(host) {
		// Beyond loopback, sidecars must know they talk to their authority, and the authority
		// must know it talks to a sidecar.
		if !c.TLS() {
			bad("listen_addr", "%q is not a loopback address: plain HTTP is only served on loopback; set tls_cert_file and tls_key_file", c.ListenAddr)
		}
		if !c.AuthRequired() {
			bad("listen_addr", "%q is not a loopback address: set client_ca_file or tokens_file so that only your sidecars are served", c.ListenAddr)
		}
	}
	return errors.Join(errs...)
}

// TLS reports whether the authority serves HTTPS.
func (c *Config) TLS() bool { return c.TLSCertFile != "" }

// AuthRequired reports whether sidecars must authenticate (by certificate or token).
func (c *Config) AuthRequired() bool { return c.ClientCAFile != "" || c.TokensFile != "" }

// IssuedPath is where issued capabilities are recorded: issued_file, or issued.jsonl beside the
// revocation file; "" when neither is set.
func (c *Config) IssuedPath() string {
	switch {
	case c.IssuedFile != "":
		return c.IssuedFile
	case c.RevocationFile != "":
		return filepath.Join(filepath.Dir(c.RevocationFile), "issued.jsonl")
	}
	return ""
}

// isLoopbackHost reports whether host (from a host:port) names only loopback: a loopback IP or
// "localhost". The empty host (every interface) is not loopback.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(strings.TrimSuffix(host, "."), "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

func (c *Config) require(keys ...string) error {
	var errs []error
	for _, k := range keys {
		var v string
		switch k {
		case "policy_dir":
			v = c.PolicyDir
		case "issuance_policy_dir":
			v = c.IssuancePolicyDir
		case "revocation_file":
			v = c.RevocationFile
		case "key_file":
			v = c.KeyFile
		default:
			panic("authority: unknown key " + k)
		}
		if v == "" {
			errs = append(errs, fmt.Errorf("authority.%s: must be set", k))
		}
	}
	return errors.Join(errs...)
}

// RequireServe checks that the keys the server needs are set.
func (c *Config) RequireServe() error {
	return c.require("policy_dir", "revocation_file", "key_file")
}

// RequireIssue checks that the keys `issue` needs are set.
func (c *Config) RequireIssue() error { return c.require("issuance_policy_dir", "key_file") }

// RequireRevoke checks that the keys `revoke` needs are set.
func (c *Config) RequireRevoke() error { return c.require("revocation_file") }

// MaxTTL is max_ttl_seconds as a duration.
func (c *Config) MaxTTL() time.Duration { return time.Duration(c.MaxTTLSeconds) * time.Second }

// BundleTTL is bundle_ttl_seconds as a duration.
func (c *Config) BundleTTL() time.Duration { return time.Duration(c.BundleTTLSeconds) * time.Second }

// ClientConfig is [sidecar.authority]: how the sidecar follows an authority and checks
// capabilities (Stage 1). The daemon embeds it in its Config under the toml key "authority".
//
//   - url or urls set: bundles and revocations come from the authority (public_key_path required).
//   - neither set, public_key_path set: no bundles (the local [sidecar.policy] applies), but Stage 1
//     still verifies capabilities, with revocations from revocation_file if set.
//   - nothing set: no Stage 1.
type ClientConfig struct {
	URL string `toml:"url"` // e.g. "https://authority.example:50051"
	// URLs are replicas of one authority, tried in order: the client fails over to the next when
	// one fails and returns to the first after a while. Use url or urls, not both.
	URLs          []string `toml:"urls"`
	PublicKeyPath string   `toml:"public_key_path"` // the authority key's .pub
	CacheDir      string   `toml:"cache_dir"`       // last good bundle and revocations, 0700
	// MaxClockSkew is how far past its expiry (or before its start) a capability is still
	// accepted. Default 0: an expired capability is refused at once.
	MaxClockSkew    duration.Duration `toml:"clock_skew"`
	LongPollSeconds int64             `toml:"long_poll_seconds"` // how long one poll may hang; capped below the bundle TTL
	RevocationFile  string            `toml:"revocation_file"`   // local revocations, for use without url

	// CAFile holds the PEM CA certificates that verify an https authority ("" = the system's).
	CAFile string `toml:"ca_file"`
	// ClientCertFile and ClientKeyFile authenticate the sidecar by certificate (reread when they
	// change). TokenFile authenticates it by bearer token instead (or as well).
	ClientCertFile string `toml:"client_cert_file"`
	ClientKeyFile  string `toml:"client_key_file"`
	TokenFile      string `toml:"token_file"`
}

// DefaultClientConfig returns the defaults for [sidecar.authority].
func DefaultClientConfig() ClientConfig {
	return ClientConfig{
		CacheDir:        "/var/lib/firma/authority",
		LongPollSeconds: 20,
	}
}

// Endpoints are the authority URLs in order of preference (url, or urls).
func (c *ClientConfig) Endpoints() []string {
	if c.URL != "" {
		return []string{c.URL}
	}
	return c.URLs
}

// Enabled reports whether the sidecar follows an authority for bundles and revocations.
func (c *ClientConfig) Enabled() bool { return len(c.Endpoints()) > 0 }

// Stage1 reports whether capabilities are checked at all.
func (c *ClientConfig) Stage1() bool { return c.Enabled() || c.PublicKeyPath != "" }

// ClockSkew is clock_skew: the tolerance on both ends of a capability's validity window.
func (c *ClientConfig) ClockSkew() time.Duration { return c.MaxClockSkew.Duration }

// maxClockSkew bounds clock_skew: clocks an hour apart need fixing, not tolerating.
const maxClockSkew = time.Hour

// Validate checks [sidecar.authority]; errors name keys as sidecar.authority.KEY.
func (c *ClientConfig) Validate() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("sidecar.authority.%s: %s", key, fmt.Sprintf(format, a...)))
	}
	if c.URL != "" && len(c.URLs) > 0 {
		bad("urls", "set url or urls, not both")
	}
	key := "url"
	if len(c.URLs) > 0 {
		key = "urls"
	}
	anyHTTPS := false
	seen := map[string]bool{}
	for _, raw := range c.Endpoints() {
		if seen[raw] {
			bad(key, "%q is listed twice", raw)
		}
		seen[raw] = true
		u, err := url.Parse(raw)
		switch {
		case err != nil:
			bad(key, "%v", err)
		case u.Scheme != "http" && u.Scheme != "https":
			bad(key, "%q: scheme must be http or https", raw)
		case u.Host == "":
			bad(key, "%q has no host", raw)
		case u.RawQuery != "" || u.Fragment != "" || u.User != nil:
			bad(key, "%q: no user, query or fragment", raw)
		case u.Scheme == "http" && !isLoopbackHost(u.Hostname()):
			bad(key, "%q: plain http only to a loopback authority; use https", raw)
		case u.Scheme == "https":
			anyHTTPS = true
		}
	}
	if c.Enabled() {
		if c.PublicKeyPath == "" {
			bad("public_key_path", "must be set when %s is set", key)
		}
		if c.CacheDir == "" {
			bad("cache_dir", "must be set when %s is set", key)
		}
		if c.RevocationFile != "" {
			bad("revocation_file", "is for use without an authority; the authority serves revocations")
		}
	}
	if (c.ClientCertFile == "") != (c.ClientKeyFile == "") {
		bad("client_cert_file", "client_cert_file and client_key_file must be set together")
	}
	for _, f := range []struct{ key, v string }{
		{"ca_file", c.CAFile}, {"client_cert_file", c.ClientCertFile}, {"token_file", c.TokenFile},
	} {
		if f.v != "" && !c.Enabled() {
			bad(f.key, "is only used with url or urls")
		}
	}
	if c.Enabled() && !anyHTTPS {
		if c.CAFile != "" {
			bad("ca_file", "no authority url is https")
		}
		if c.ClientCertFile != "" {
			bad("client_cert_file", "client certificates need an https authority url")
		}
	}
	if d := c.MaxClockSkew.Duration; d < 0 || d > maxClockSkew {
		bad("clock_skew", "must be between 0s and %s, got %s", maxClockSkew, d)
	}
	if c.LongPollSeconds < 1 || c.LongPollSeconds > 300 {
		bad("long_poll_seconds", "must be between 1 and 300, got %d", c.LongPollSeconds)
	}
	return errors.Join(errs...)
}

// endpointList returns the endpoints with trailing slashes removed.
func (c *ClientConfig) endpointList() []string {
	var out []string
	for _, u := range c.Endpoints() {
		out = append(out, strings.TrimRight(u, "/"))
	}
	return out
}

// HiddenPaths are the [sidecar.authority] files an agent must not read: the sidecar's credentials
// for the authority and its cache. Empty entries are left out.
func (c *ClientConfig) HiddenPaths() []string {
	return nonEmpty(c.TokenFile, c.ClientKeyFile, c.CacheDir)
}

// ProtectedPaths are the [sidecar.authority] files an agent may read but must not change: what
// the sidecar trusts. Empty entries are left out.
func (c *ClientConfig) ProtectedPaths() []string {
	return nonEmpty(c.PublicKeyPath, c.RevocationFile, c.CAFile, c.ClientCertFile)
}

func nonEmpty(paths ...string) []string {
	var out []string
	for _, p := range paths {
		if p != "" {
			out = append(out, p)
		}
	}
	return out
}
