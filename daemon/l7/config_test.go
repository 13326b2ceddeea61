package l7

import (
	"bytes"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"

	"github.com/openfirma/firma/internal/duration"
)

func TestHostListMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, host string
		want          bool
	}{
		{"api.anthropic.com", "api.anthropic.com", true},
		{"api.anthropic.com", "API.Anthropic.COM.", true},
		{"API.anthropic.com.", "api.anthropic.com", true},
		{"api.anthropic.com", "anthropic.com", false},
		{"api.anthropic.com", "x.api.anthropic.com", false},
		{"*.anthropic.com", "api.anthropic.com", true},
		{"*.anthropic.com", "API.anthropic.com.", true},
		{"*.anthropic.com", "api.dev.anthropic.com", false},
		{"*.anthropic.com", "anthropic.com", false},
		{"*.anthropic.com", ".anthropic.com", false},
		{"*.anthropic.com", "evilanthropic.com", false},
		{"*.anthropic.com", "api.anthropic.com.evil.com", false},
		{"127.0.0.1", "127.0.0.1", true},
		{"::1", "[::1]", true},
		{"[2001:db8::1]", "2001:DB8:0::1", true},
		{"*", "anything.example", true},
	} {
		l, err := ParseHostList("intercept_hosts", []string{tc.pattern})
		if err != nil {
			t.Fatalf("%q: %v", tc.pattern, err)
		}
		if got := l.Match(tc.host); got != tc.want {
			t.Errorf("%q matches %q = %v, want %v", tc.pattern, tc.host, got, tc.want)
		}
	}
}

func TestHostListSyntax(t *testing.T) {
	for _, bad := range []string{"", "*.", "a.*.com", "*foo.com", "**.com", "api.x.com:443", "https://api.x.com",
		"api x.com", "api..com", "*.127.0.0.1x/", "a/b"} {
		if _, err := ParseHostList("bypass_hosts", []string{"ok.example.com", bad}); err == nil ||
			!strings.HasPrefix(err.Error(), "bypass_hosts[1]: ") {
			t.Errorf("%q: error %v", bad, err)
		}
	}
}

func TestModeAndStrict(t *testing.T) {
	c := DefaultConfig()
	c.Enabled = true
	c.InterceptHosts = []string{"api.openai.com", "*.anthropic.com", "api.stripe.com"}
	c.BypassHosts = []string{"pinned.anthropic.com"}
	c.StrictHosts = []string{"api.stripe.com"}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]Mode{
		"api.openai.com":           ModeIntercept,
		"api.anthropic.com":        ModeIntercept,
		"pinned.anthropic.com":     ModeBypass, // bypass is checked first
		"api.dev.anthropic.com":    ModeDefault,
		"example.com":              ModeDefault,
		"API.STRIPE.COM.":          ModeIntercept,
		"api.openai.com.evil.test": ModeDefault,
	} {
		if got := c.Mode(host); got != want {
			t.Errorf("Mode(%s) = %s, want %s", host, got, want)
		}
	}
	if !c.Strict("api.stripe.com") || c.Strict("api.openai.com") {
		t.Error("Strict")
	}
	c.Enabled = false
	if c.Mode("api.openai.com") != ModeDefault || c.Mode("pinned.anthropic.com") != ModeBypass {
		t.Error("disabled MITM still intercepts")
	}
}

func TestValidateErrors(t *testing.T) {
	c := DefaultConfig()
	c.InterceptHosts = []string{"ok.example.com", "*bad.com"}
	c.BypassHosts = []string{"pinned.example.com"}
	c.StrictHosts = []string{"pinned.example.com"}
	c.LeafCacheSize = 0
	c.FallbackPeriod = duration.Duration{}
	err := c.Validate()
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{`intercept_hosts[1]: host pattern "*bad.com"`, "strict_hosts[0]: pinned.example.com is also in bypass_hosts",
		"leaf_cache_size", "fallback_period"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	ok := DefaultConfig()
	ok.Enabled = true
	if err := ok.ValidateCA(CAConfig{}); err == nil {
		t.Error("enabled MITM without ca.dir accepted")
	}
	if err := ok.ValidateCA(CAConfig{Dir: "/etc/firma/ca"}); err != nil {
		t.Error(err)
	}
	if err := (&CAConfig{Dir: "/"}).Validate(); err == nil {
		t.Error("ca.dir = / accepted")
	}
}

// The guide's section decodes strictly into Config, durations as strings.
func TestDecodeGuideSection(t *testing.T) {
	const doc = `
[https_mitm]
enabled = true
intercept_hosts = [
  "api.openai.com",
  "api.anthropic.com",
  "api.stripe.com",
]
bypass_hosts = []
strict_hosts = ["api.stripe.com"]
fallback_period = "5m"
leaf_cache_size = 10
`
	var v struct {
		HTTPSMITM Config `toml:"https_mitm"`
	}
	v.HTTPSMITM = DefaultConfig()
	dec := toml.NewDecoder(bytes.NewReader([]byte(doc)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatal(err)
	}
	c := v.HTTPSMITM
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.FallbackPeriod.String() != "5m0s" || c.LeafCacheSize != 10 || c.Mode("api.stripe.com") != ModeIntercept || !c.Strict("api.stripe.com") {
		t.Errorf("decoded %+v", c)
	}
	var bad struct {
		HTTPSMITM Config `toml:"https_mitm"`
	}
	dec = toml.NewDecoder(strings.NewReader("[https_mitm]\nintercept = []\n"))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&bad); err == nil {
		t.Error("unknown key accepted")
	}
}

// The body keys: defaults that buffer, a cap that is off, and errors naming each bad key.
func TestBodyKeys(t *testing.T) {
	c := DefaultConfig()
	if c.BodyBufferBytes != DefaultBodyBufferBytes || c.MaxRequestBodyBytes != 0 || c.BodyReadTimeout.Duration <= 0 {
		t.Fatalf("defaults %d %d %v", c.BodyBufferBytes, c.MaxRequestBodyBytes, c.BodyReadTimeout)
	}
	c.BodyBufferBytes, c.MaxRequestBodyBytes, c.BodyReadTimeout = 0, -1, duration.Duration{}
	err := c.Validate()
	for _, want := range []string{"body_buffer_bytes", "max_request_body_bytes", "body_read_timeout"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %s: %v", want, err)
		}
	}
	var v struct {
		HTTPSMITM Config `toml:"https_mitm"`
	}
	v.HTTPSMITM = DefaultConfig()
	dec := toml.NewDecoder(strings.NewReader("[https_mitm]\nbody_buffer_bytes = 67108864\nmax_request_body_bytes = 1048576\nbody_read_timeout = \"10s\"\n"))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatal(err)
	}
	if c := v.HTTPSMITM; c.BodyBufferBytes != 64<<20 || c.MaxRequestBodyBytes != 1<<20 || c.BodyReadTimeout.String() != "10s" || c.Validate() != nil {
		t.Fatalf("decoded %+v", c)
	}
}
