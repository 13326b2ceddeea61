package daemon

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/openfirma/firma/daemon/judge"
	"github.com/openfirma/firma/internal/duration"
)

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
