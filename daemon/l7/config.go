package l7

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/openfirma/firma/internal/duration"
)

// CAConfig is [sidecar.ca]: where the MITM CA lives.
type CAConfig struct {
	// Dir holds firma-ca.crt and firma-ca.key. "" means no CA; the daemon must then refuse
	// https_mitm.enabled (Config.ValidateCA does that check).
	Dir string `toml:"dir"`
}

// Validate checks the section on its own. Errors name keys relative to [sidecar.ca].
func (c *CAConfig) Validate() error {
	if c.Dir != "" && filepath.Clean(c.Dir) == "/" {
		return errors.New("dir: the filesystem root cannot hold the CA")
	}
	return nil
}

// Config is [sidecar.interceptor.https_mitm]: which hosts are TLS-terminated and how.
type Config struct {
	Enabled        bool     `toml:"enabled"`
	InterceptHosts []string `toml:"intercept_hosts"` // TLS-terminated, every request judged
	BypassHosts    []string `toml:"bypass_hosts"`    // CONNECT-only; checked before intercept_hosts
	StrictHosts    []string `toml:"strict_hosts"`    // a failed MITM handshake denies, never falls back

	// FallbackPeriod is how long a non-strict intercepted host is tunnelled CONNECT-only after a
	// client rejected the minted certificate (certificate pinning, CA not trusted).
	FallbackPeriod duration.Duration `toml:"fallback_period"`
	// HandshakeTimeout bounds the agent-side TLS handshake.
	HandshakeTimeout duration.Duration `toml:"handshake_timeout"`
	// IdleTimeout closes an agent-side keep-alive or HTTP/2 connection with no request in flight.
	IdleTimeout duration.Duration `toml:"idle_timeout"`
	// ReadHeaderTimeout bounds how long an agent-side connection, TLS-terminated or plain HTTP,
	// takes to send a request's headers once it has started one.
	ReadHeaderTimeout duration.Duration `toml:"read_header_timeout"`
	// MaxConcurrentStreams is the HTTP/2 stream limit per agent connection.
	MaxConcurrentStreams int `toml:"max_concurrent_streams"`

	// LeafLifetime is the validity of a minted leaf certificate; LeafCacheSize bounds the LRU cache.
	LeafLifetime  duration.Duration `toml:"leaf_lifetime"`
	LeafCacheSize int               `toml:"leaf_cache_size"`

	// Upstream pool: connections to one upstream host are shared by all agent connections.
	UpstreamMaxConnsPerHost int               `toml:"upstream_max_conns_per_host"` // 0 = unlimited
	UpstreamMaxIdlePerHost  int               `toml:"upstream_max_idle_per_host"`
	UpstreamIdleTimeout     duration.Duration `toml:"upstream_idle_timeout"`
	// UpstreamResponseTimeout bounds the wait for an upstream's response headers (504 after it).
	UpstreamResponseTimeout duration.Duration `toml:"upstream_response_timeout"`
	// UpstreamTLSTimeout bounds the upstream TLS handshake.
	UpstreamTLSTimeout duration.Duration `toml:"upstream_tls_timeout"`

	// Request bodies, on intercepted and plain HTTP alike. A body is buffered before the decision
	// only when a policy reads it, at most [sidecar.policy] max_body_bytes of it; every other body
	// streams.
	//
	// BodyBufferBytes bounds the bytes buffered at once across every connection: a request whose
	// body would not fit is refused (503, Retry-After) rather than buffered. One agent holds at most
	// half of it, or one body of max_body_bytes if that is more.
	BodyBufferBytes int64 `toml:"body_buffer_bytes"`
	// BodyReadTimeout bounds reading a body that is buffered for a policy (408 after it).
	BodyReadTimeout duration.Duration `toml:"body_read_timeout"`
	// MaxRequestBodyBytes caps every request body (0: no cap): a declared length over it is
	// refused (413) before anything is sent upstream; a streamed body that passes it is cut off
	// there and its request aborted.
	MaxRequestBodyBytes int64 `toml:"max_request_body_bytes"`

	// compiled is set by Validate so that Mode and Strict need not parse the lists again.
	compiled *hostLists
}

// DefaultConfig is the section's defaults: MITM off, every limit set.
func DefaultConfig() Config {
	return Config{
		FallbackPeriod:          duration.Of(10 * time.Minute),
		HandshakeTimeout:        duration.Of(10 * time.Second),
		IdleTimeout:             duration.Of(2 * time.Minute),
		ReadHeaderTimeout:       duration.Of(30 * time.Second),
		MaxConcurrentStreams:    250,
		LeafLifetime:            duration.Of(24 * time.Hour),
		LeafCacheSize:           1024,
		UpstreamMaxConnsPerHost: 64,
		UpstreamMaxIdlePerHost:  16,
		UpstreamIdleTimeout:     duration.Of(90 * time.Second),
		UpstreamResponseTimeout: duration.Of(5 * time.Minute),
		UpstreamTLSTimeout:      duration.Of(10 * time.Second),
		BodyBufferBytes:         DefaultBodyBufferBytes,
		BodyReadTimeout:         duration.Of(30 * time.Second),
	}
}

// DefaultBodyBufferBytes is body_buffer_bytes when not set: 128 MiB, eight bodies of the default
// max_body_bytes.
const DefaultBodyBufferBytes = 128 << 20

// Validate checks the section. Errors name keys relative to [sidecar.interceptor.https_mitm].
func (c *Config) Validate() error {
	hl, errs := compile(c)
	positive := func(key string, d duration.Duration) {
		if d.Duration <= 0 {
			errs = append(errs, fmt.Errorf("%s: must be positive", key))
		}
	}
	positive("fallback_period", c.FallbackPeriod)
	positive("handshake_timeout", c.HandshakeTimeout)
	positive("idle_timeout", c.IdleTimeout)
	positive("read_header_timeout", c.ReadHeaderTimeout)
	positive("leaf_lifetime", c.LeafLifetime)
	positive("upstream_idle_timeout", c.UpstreamIdleTimeout)
	positive("upstream_response_timeout", c.UpstreamResponseTimeout)
	positive("upstream_tls_timeout", c.UpstreamTLSTimeout)
	positive("body_read_timeout", c.BodyReadTimeout)
	if c.BodyBufferBytes < 1 {
		errs = append(errs, errors.New("body_buffer_bytes: must be at least 1"))
	}
	if c.MaxRequestBodyBytes < 0 {
		errs = append(errs, errors.New("max_request_body_bytes: must not be negative (0: no cap)"))
	}
	if c.LeafLifetime.Duration > maxLeafLifetime {
		errs = append(errs, fmt.Errorf("leaf_lifetime: at most %s", maxLeafLifetime))
	}
	if c.LeafCacheSize < 1 {
		errs = append(errs, errors.New("leaf_cache_size: must be at least 1"))
	}
	if c.MaxConcurrentStreams < 1 {
		errs = append(errs, errors.New("max_concurrent_streams: must be at least 1"))
	}
	if c.UpstreamMaxConnsPerHost < 0 {
		errs = append(errs, errors.New("upstream_max_conns_per_host: must not be negative"))
	}
	if c.UpstreamMaxIdlePerHost < 1 {
		errs = append(errs, errors.New("upstream_max_idle_per_host: must be at least 1"))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	c.compiled = hl
	return nil
}

// ValidateCA is the cross-section check the daemon runs after both Validates: MITM needs a CA dir.
func (c *Config) ValidateCA(ca CAConfig) error {
	if c.Enabled && ca.Dir == "" {
		return errors.New("interceptor.https_mitm.enabled needs ca.dir")
	}
	return nil
}

// Mode is how the sidecar treats a TLS connection to a host.
type Mode int

const (
	ModeDefault   Mode = iota // in no list: the configured default, CONNECT-only
	ModeIntercept             // TLS-terminated, every request judged
	ModeBypass                // in bypass_hosts: CONNECT-only
	// ModeFallback is an intercepted, non-strict host whose last MITM handshake failed less than
	// fallback_period ago: CONNECT-only, audited as a fallback. Only Interceptor.Route returns it.
	ModeFallback
)

func (m Mode) String() string {
	switch m {
	case ModeIntercept:
		return "intercept"
	case ModeBypass:
		return "bypass"
	case ModeFallback:
		return "fallback"
	default:
		return "default"
	}
}

// Mode classifies host: bypass_hosts first, then intercept_hosts (only when enabled), else default.
func (c *Config) Mode(host string) Mode {
	hl := c.lists()
	switch {
	case hl.bypass.Match(host):
		return ModeBypass
	case c.Enabled && hl.intercept.Match(host):
		return ModeIntercept
	default:
		return ModeDefault
	}
}

// Strict reports whether host is in strict_hosts.
func (c *Config) Strict(host string) bool { return c.lists().strict.Match(host) }

type hostLists struct{ intercept, bypass, strict HostList }

func (c *Config) lists() *hostLists {
	if c.compiled != nil {
		return c.compiled
	}
	// Not validated: entries that do not parse match nothing.
	hl, _ := compile(c)
	return hl
}

func compile(c *Config) (*hostLists, []error) {
	var (
		hl   hostLists
		errs []error
		err  error
	)
	if hl.intercept, err = ParseHostList("intercept_hosts", c.InterceptHosts); err != nil {
		errs = append(errs, err)
	}
	if hl.bypass, err = ParseHostList("bypass_hosts", c.BypassHosts); err != nil {
		errs = append(errs, err)
	}
	if hl.strict, err = ParseHostList("strict_hosts", c.StrictHosts); err != nil {
		errs = append(errs, err)
	}
	for i, s := range hl.strict {
		for _, b := range hl.bypass {
			if s == b {
				errs = append(errs, fmt.Errorf("strict_hosts[%d]: %s is also in bypass_hosts", i, s))
			}
		}
	}
	return &hl, errs
}
