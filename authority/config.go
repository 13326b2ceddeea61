package authority

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"

	"github.com/rs/zerolog"
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
	if _, _, err := net.SplitHostPort(c.ListenAddr); err != nil {
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
	return errors.Join(errs...)
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
//   - url set: bundles and revocations come from the authority (public_key_path required).
//   - url empty, public_key_path set: no bundles (the local [sidecar.policy] applies), but Stage 1
//     still verifies capabilities, with revocations from revocation_file if set.
//   - both empty: no Stage 1.
type ClientConfig struct {
	URL              string `toml:"url"`             // e.g. "http://[::1]:50051"
	PublicKeyPath    string `toml:"public_key_path"` // the authority key's .pub
	CacheDir         string `toml:"cache_dir"`       // last good bundle and revocations, 0700
	ClockSkewSeconds int64  `toml:"clock_skew_seconds"`
	LongPollSeconds  int64  `toml:"long_poll_seconds"` // how long one poll may hang; capped below the bundle TTL
	RevocationFile   string `toml:"revocation_file"`   // local revocations, for use without url
}

// DefaultClientConfig returns the defaults for [sidecar.authority].
func DefaultClientConfig() ClientConfig {
	return ClientConfig{
		CacheDir:         "/var/lib/firma/authority",
		ClockSkewSeconds: 30,
		LongPollSeconds:  20,
	}
}

// Enabled reports whether the sidecar follows an authority for bundles and revocations.
func (c *ClientConfig) Enabled() bool { return c.URL != "" }

// Stage1 reports whether capabilities are checked at all.
func (c *ClientConfig) Stage1() bool { return c.URL != "" || c.PublicKeyPath != "" }

// ClockSkew is clock_skew_seconds as a duration.
func (c *ClientConfig) ClockSkew() time.Duration {
	return time.Duration(c.ClockSkewSeconds) * time.Second
}

// Validate checks [sidecar.authority]; errors name keys as sidecar.authority.KEY.
func (c *ClientConfig) Validate() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("sidecar.authority.%s: %s", key, fmt.Sprintf(format, a...)))
	}
	if c.URL != "" {
		u, err := url.Parse(c.URL)
		switch {
		case err != nil:
			bad("url", "%v", err)
		case u.Scheme != "http" && u.Scheme != "https":
			bad("url", "%q: scheme must be http or https", c.URL)
		case u.Host == "":
			bad("url", "%q has no host", c.URL)
		case u.RawQuery != "" || u.Fragment != "":
			bad("url", "%q: no query or fragment", c.URL)
		}
		if c.PublicKeyPath == "" {
			bad("public_key_path", "must be set when url is set")
		}
		if c.CacheDir == "" {
			bad("cache_dir", "must be set when url is set")
		}
		if c.RevocationFile != "" {
			bad("revocation_file", "is for use without an authority; the authority serves revocations")
		}
	}
	if c.ClockSkewSeconds < 0 || c.ClockSkewSeconds > 3600 {
		bad("clock_skew_seconds", "must be between 0 and 3600, got %d", c.ClockSkewSeconds)
	}
	if c.LongPollSeconds < 1 || c.LongPollSeconds > 300 {
		bad("long_poll_seconds", "must be between 1 and 300, got %d", c.LongPollSeconds)
	}
	return errors.Join(errs...)
}
