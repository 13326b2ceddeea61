// Package credentials owns [[sidecar.credentials]]: upstream API keys that the sidecar holds so the
// agent never does, and the Injector that puts them on allowed requests to exactly their host.
//
// An entry is
//
//	[[sidecar.credentials]]
//	host = "api.anthropic.com"     # exact host, no wildcard, no port
//	mode = "basic"                 # "basic" (default) or "bearer"
//	header = "x-api-key"           # required for basic; bearer defaults to Authorization
//	value_from_env = "ANTHROPIC_API_KEY"   # exactly one of value_from_env and value_from_file
//	prefix = ""                    # basic only: put before the value, e.g. "Token "
//
// Modes:
//   - basic: `<header>: <prefix><value>`, a static header such as Anthropic's x-api-key. ("basic"
//     is the guide's name for a plain header; it is not HTTP Basic authentication.)
//   - bearer: `<header, default Authorization>: Bearer <value>`, as OpenAI expects. prefix must be
//     empty: the mode supplies "Bearer ".
//
// value_from_env is read once, by New: a variable that is unset or empty is a startup error naming
// the variable and the entry. value_from_file is read on every request (so a rotated key takes
// effect at once); trailing whitespace is trimmed; a missing or empty file fails that request with
// ErrInjectionFailed.
//
// The package must not log, return or format a credential value: errors and log lines name the
// entry, the header and the source, never the value. It does not decide whether a request may go
// out; the caller applies credentials only after policy allowed the request and only over TLS to the
// verified upstream.
package credentials

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/internal/hostname"
	"github.com/openfirma/firma/internal/logfields"
)

// Modes of an entry.
const (
	ModeBasic  = "basic"
	ModeBearer = "bearer"
)

// StrippedHeaders are removed from every request to a host that has credentials, before injection,
// whatever the entries' own headers are. Proxy-Authorization is removed from every request.
var StrippedHeaders = []string{"Authorization", "X-Api-Key", "Proxy-Authorization"}

var (
	// ErrInjectionFailed is what a request-time failure wraps (the audit reason is its text).
	ErrInjectionFailed = errors.New("credential injection failed")
	// ErrMissingEnv is what New wraps when a value_from_env variable is unset or empty.
	ErrMissingEnv = errors.New("environment variable is not set")
)

// Config is one [[sidecar.credentials]] entry.
type Config struct {
	Host          string `toml:"host"`
	Mode          string `toml:"mode"`
	Header        string `toml:"header"`
	ValueFromEnv  string `toml:"value_from_env"`
	ValueFromFile string `toml:"value_from_file"`
	Prefix        string `toml:"prefix"`
}

// headers an entry may not set: they frame the request or belong to a hop.
var reservedHeaders = map[string]bool{
	"Host": true, "Content-Length": true, "Transfer-Encoding": true, "Connection": true,
	"Upgrade": true, "Te": true, "Trailer": true, "Keep-Alive": true, "Proxy-Connection": true,
	"Proxy-Authorization": true, "Cookie": true,
}

// Validate checks one entry's syntax. Errors name keys relative to the entry.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if c.Host == "" {
		bad("host: must be set")
	} else if h := hostname.Normalize(strings.TrimSpace(c.Host)); !validHost(h) {
		bad("host: %q is not an exact host name or IP literal (no wildcard, port or scheme)", c.Host)
	}
	switch c.Mode {
	case "", ModeBasic:
		if c.Header == "" {
			bad("header: must be set for mode %q", ModeBasic)
		}
	case ModeBearer:
		if c.Prefix != "" {
			bad("prefix: must be empty for mode %q (it sends \"Bearer <value>\")", ModeBearer)
		}
	default:
		bad("mode: %q is not %q or %q", c.Mode, ModeBasic, ModeBearer)
	}
	if c.Header != "" {
		if !validToken(c.Header) {
			bad("header: %q is not a valid header name", c.Header)
		} else if reservedHeaders[http.CanonicalHeaderKey(c.Header)] {
			bad("header: %q cannot be injected", c.Header)
		}
	}
	if strings.ContainsAny(c.Prefix, "\r\n\x00") {
		bad("prefix: must not contain CR, LF or NUL")
	}
	switch {
	case c.ValueFromEnv == "" && c.ValueFromFile == "":
		bad("one of value_from_env and value_from_file must be set")
	case c.ValueFromEnv != "" && c.ValueFromFile != "":
		bad("value_from_env and value_from_file are exclusive")
	}
	return errors.Join(errs...)
}

// header is the header the entry sets, canonicalized.
func (c *Config) header() string {
	if c.Header == "" && c.Mode == ModeBearer {
		return "Authorization"
	}
	return http.CanonicalHeaderKey(c.Header)
}

// HeaderNames lists the headers the entries set, lowercased, each once: the sidecar hides them
// from policies ([sidecar.policy] hidden_headers), on top of the credential headers every policy
// is kept from.
func HeaderNames(cfgs []Config) []string {
	var out []string
	for i := range cfgs {
		h := strings.ToLower(cfgs[i].header())
		if h != "" && !slices.Contains(out, h) {
			out = append(out, h)
		}
	}
	return out
}

// ValidateAll checks every entry and that no host sets one header twice. Errors name
// credentials[i].
func ValidateAll(cfgs []Config) error {
	var errs []error
	seen := map[[2]string]int{}
	for i := range cfgs {
		c := &cfgs[i]
		if err := c.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("credentials[%d]: %w", i, err))
			continue
		}
		k := [2]string{hostname.Normalize(strings.TrimSpace(c.Host)), c.header()}
		if j, dup := seen[k]; dup {
			errs = append(errs, fmt.Errorf("credentials[%d]: host %s header %s is already set by credentials[%d]", i, k[0], k[1], j))
		}
		seen[k] = i
	}
	return errors.Join(errs...)
}

// Injector holds the validated entries by host.
type Injector struct {
	byHost map[string][]*entry
}

type entry struct {
	label  string // "credentials[0] (api.anthropic.com)"
	header string
	prefix string // "Bearer " for bearer, else the entry's prefix
	value  string // from the environment; "" when file is set
	file   string
}

// New validates cfgs and reads every value_from_env variable through lookupEnv (os.LookupEnv in the
// daemon). It logs one line per entry naming host, header and source.
func New(cfgs []Config, lookupEnv func(string) (string, bool), log zerolog.Logger) (*Injector, error) {
	if err := ValidateAll(cfgs); err != nil {
		return nil, err
	}
	in := &Injector{byHost: map[string][]*entry{}}
	var errs []error
	for i := range cfgs {
		c := &cfgs[i]
		host := hostname.Normalize(strings.TrimSpace(c.Host))
		e := &entry{
			label:  fmt.Sprintf("credentials[%d] (%s)", i, host),
			header: c.header(),
			prefix: c.Prefix,
			file:   c.ValueFromFile,
		}
		if c.Mode == ModeBearer {
			e.prefix = "Bearer "
		}
		source := "file:" + c.ValueFromFile
		if c.ValueFromEnv != "" {
			source = "env:" + c.ValueFromEnv
			v, ok := lookupEnv(c.ValueFromEnv)
			v = strings.TrimSpace(v)
			switch {
			case !ok || v == "":
				errs = append(errs, fmt.Errorf("%s: %w: %s", e.label, ErrMissingEnv, c.ValueFromEnv))
				continue
			case strings.ContainsAny(v, "\r\n\x00"):
				errs = append(errs, fmt.Errorf("%s: environment variable %s holds CR, LF or NUL", e.label, c.ValueFromEnv))
				continue
			}
			e.value = v
		} else if _, err := os.Stat(c.ValueFromFile); err != nil {
			log.Warn().Str(logfields.Entry, e.label).Str(logfields.Source, source).Err(err).
				Msg("credential file not readable now; requests to its host will fail until it is")
		}
		in.byHost[host] = append(in.byHost[host], e)
		log.Info().Str(logfields.Entry, e.label).Str(logfields.Host, host).Str(logfields.Header, e.header).
			Str(logfields.Source, source).Msg("credential configured")
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return in, nil
}

// Has reports whether host (exactly, after normalization) has credentials.
func (in *Injector) Has(host string) bool {
	return in != nil && len(in.byHost[hostname.Normalize(host)]) > 0
}

// Apply prepares h for the upstream host. It always removes Proxy-Authorization; when host has
// credentials it removes StrippedHeaders and each entry's header, then sets the entries' values.
// It returns the names of the headers it set. On error (ErrInjectionFailed) h must not be sent.
func (in *Injector) Apply(host string, h http.Header) ([]string, error) {
	h.Del("Proxy-Authorization")
	if in == nil {
		return nil, nil
	}
	entries := in.byHost[hostname.Normalize(host)]
	if len(entries) == 0 {
		return nil, nil
	}
	values := make([]string, len(entries))
	for i, e := range entries {
		v, err := e.resolve()
		if err != nil {
			return nil, err
		}
		values[i] = e.prefix + v
	}
	for _, name := range StrippedHeaders {
		h.Del(name)
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		h.Del(e.header)
		names[i] = e.header
	}
	for i, e := range entries {
		h.Set(e.header, values[i])
	}
	return names, nil
}

// resolve returns the entry's secret. Errors name the entry and file, never the content.
func (e *entry) resolve() (string, error) {
	if e.file == "" {
		return e.value, nil
	}
	data, err := os.ReadFile(e.file)
	if err != nil {
		return "", fmt.Errorf("%w: %s: reading value_from_file: %w", ErrInjectionFailed, e.label, err)
	}
	v := string(bytes.TrimSpace(data))
	switch {
	case v == "":
		return "", fmt.Errorf("%w: %s: %s is empty", ErrInjectionFailed, e.label, e.file)
	case strings.ContainsAny(v, "\r\n\x00"):
		return "", fmt.Errorf("%w: %s: %s holds more than one line", ErrInjectionFailed, e.label, e.file)
	}
	return v, nil
}

// validHost accepts a DNS name (letters, digits, '-', '_' in non-empty labels) or an IP literal.
func validHost(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
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

// validToken is RFC 9110's token, the syntax of a header name.
func validToken(s string) bool {
	for _, r := range s {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
			strings.ContainsRune("!#$%&'*+-.^_`|~", r) {
			continue
		}
		return false
	}
	return s != ""
}
