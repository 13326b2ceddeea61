package daemon

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/daemon/credentials"
	"github.com/openfirma/firma/daemon/judge"
	"github.com/openfirma/firma/internal/duration"
	"github.com/openfirma/firma/policies"
)

// TestPolicyConfigHidesCredentialHeaders: no policy can read a header the sidecar puts a credential
// in, even one whose name does not say so — else an agent could probe the key through a policy's
// answers.
func TestPolicyConfigHidesCredentialHeaders(t *testing.T) {
	dir := t.TempDir()
	pol := `@id("permit") permit (principal, action, resource);
@id("probe") forbid (principal, action, resource) when { context.headers.hasTag("x-vendor-pass") };
`
	if err := os.WriteFile(filepath.Join(dir, "p.cedar"), []byte(pol), 0o644); err != nil {
		t.Fatal(err)
	}
	rules := filepath.Join(t.TempDir(), "rules.toml")
	if err := os.WriteFile(rules, []byte("[[rules]]\nhost = \"*\"\naction_class = \"communication.external.send\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := DefaultConfig()
	c.Policy = policies.Config{Dir: dir, HiddenHeaders: []string{"X-Internal"}}
	c.Credentials = []credentials.Config{
		{Host: "api.vendor.test", Header: "X-Vendor-Pass", ValueFromEnv: "K"},
		{Host: "api.other.test", Mode: credentials.ModeBearer, ValueFromEnv: "K2"},
		{Host: "api.third.test", Header: "x-vendor-pass", ValueFromEnv: "K3"},
	}
	got := c.PolicyConfig().HiddenHeaders
	if !slices.Equal(got, []string{"X-Internal", "x-vendor-pass", "authorization"}) {
		t.Fatalf("hidden headers %q", got)
	}
	if !slices.Equal(c.Policy.HiddenHeaders, []string{"X-Internal"}) {
		t.Fatalf("the configured list changed: %q", c.Policy.HiddenHeaders)
	}
	req := policies.Request{AgentID: "a", Method: "GET", Host: "api.vendor.test", Port: 443, Path: "/", Transport: "https",
		Content: policies.Content{Header: http.Header{"X-Vendor-Pass": {"probe"}}}}
	for _, tc := range []struct {
		cfg  policies.Config
		want policies.Outcome
	}{{c.Policy, policies.Deny}, {c.PolicyConfig(), policies.Allow}} {
		e, err := policies.New(tc.cfg, policies.MappingConfig{RulesPath: rules, DefaultProtected: true}, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		if d, _ := e.Decide(context.Background(), req); d.Outcome != tc.want {
			t.Errorf("hidden %q: %s %s, want %s", tc.cfg.HiddenHeaders, d.Outcome, d.Reason, tc.want)
		}
	}
}

// TestValidateBodyBudget: a budget that cannot hold one body a policy reads is a config error.
func TestValidateBodyBudget(t *testing.T) {
	c := DefaultConfig()
	c.Interceptor.HTTPSMITM.BodyBufferBytes = 1 << 20
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "sidecar.interceptor.https_mitm.body_buffer_bytes") {
		t.Fatalf("error %v", err)
	}
	c.Policy.MaxBodyBytes = 1 << 19
	if err := c.Validate(); err != nil && strings.Contains(err.Error(), "body_buffer_bytes") {
		t.Fatalf("budget above max_body_bytes refused: %v", err)
	}
}

// A negative idle timeout is refused naming its key; 0 (never) is accepted.
func TestValidateIdleTimeout(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Transparent.IdleTimeout.Duration = 0
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate with idle_timeout 0: %v", err)
	}
	cfg.Transparent.IdleTimeout.Duration = -1
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "sidecar.transparent.idle_timeout") {
		t.Fatalf("Validate with a negative idle_timeout: %v", err)
	}
}

// TestValidateLimitsAndWaits: the defaults validate, and every bad limit or wait is an error naming
// its key in firma.toml.
func TestValidateLimitsAndWaits(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if !reflect.DeepEqual(cfg.Limits, judge.DefaultLimitsConfig()) || cfg.Transparent.ServerFirstWait.Duration != 300*time.Millisecond ||
		cfg.Transparent.FirstSpeakerTimeout.Duration != 2*time.Minute {
		t.Errorf("defaults: limits %+v, server_first_wait %s, first_speaker_timeout %s",
			cfg.Limits, cfg.Transparent.ServerFirstWait, cfg.Transparent.FirstSpeakerTimeout)
	}

	for _, tc := range []struct {
		key  string
		edit func(*Config)
	}{
		{"sidecar.limits.max_flows", func(c *Config) { c.Limits.MaxFlows = 0 }},
		{"sidecar.limits.new_flows_per_second", func(c *Config) { c.Limits.NewFlowsPerSecond = -1 }},
		{"sidecar.limits.new_flows_burst", func(c *Config) { c.Limits.NewFlowsBurst = -3 }},
		{"sidecar.limits.agents.claude-code.max_flows", func(c *Config) {
			c.Limits.Agents = map[string]judge.AgentLimits{"claude-code": {MaxFlows: -1}}
		}},
		{"sidecar.transparent.server_first_wait", func(c *Config) { c.Transparent.ServerFirstWait = duration.Of(0) }},
		{"sidecar.transparent.server_first_wait", func(c *Config) { c.Transparent.ServerFirstWait = duration.Of(time.Minute) }},
		{"sidecar.transparent.first_speaker_timeout", func(c *Config) { c.Transparent.FirstSpeakerTimeout = duration.Of(-time.Second) }},
		{"sidecar.interceptor.https_mitm.read_header_timeout", func(c *Config) { c.Interceptor.HTTPSMITM.ReadHeaderTimeout = duration.Of(0) }},
	} {
		c := DefaultConfig()
		tc.edit(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.key+":") {
			t.Errorf("%s: Validate = %v, want an error naming the key", tc.key, err)
		}
	}
}
