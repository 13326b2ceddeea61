package policies

import (
	"errors"
	"fmt"
	"strings"
)

// Config is [sidecar.policy]: where the local policy set lives when no authority serves bundles, and
// the bounds of what policies may read.
type Config struct {
	Dir    string `toml:"dir"`    // directory of *.cedar files; "" = the embedded default set
	Schema string `toml:"schema"` // a user schema replacing the embedded firma.cedarschema; "" = embedded
	// MaxBodyBytes bounds a request body buffered because a policy reads it (body_size, json) or
	// because it is a git push, and what a compressed body may inflate to. A body-reading decision
	// on a larger body is DENY. 0: DefaultMaxBodyBytes.
	MaxBodyBytes int64 `toml:"max_body_bytes"`
	// HiddenHeaders are header names policies never see (context.headers), on top of the built-in
	// credential headers. The sidecar adds the headers it injects credentials into.
	HiddenHeaders []string `toml:"hidden_headers"`
	// MaxSessions bounds the session tracker (context.action_count and the other session
	// attributes): past it, the least recently active session is forgotten. 0: DefaultMaxSessions.
	MaxSessions int `toml:"max_sessions"`
	// Git is [sidecar.policy.git]: git smart-HTTP classification.
	Git GitConfig `toml:"git"`
}

// MappingConfig is [sidecar.mapping]: how raw intents are classified into action classes.
type MappingConfig struct {
	RulesPath        string `toml:"rules_path"`        // mapping-rules.toml; "" = the embedded default rules
	DefaultProtected bool   `toml:"default_protected"` // unmatched intent: true ⇒ DENY, false ⇒ PASSTHROUGH
}

// DefaultMappingConfig fails closed: an intent no rule classifies is denied.
func DefaultMappingConfig() MappingConfig { return MappingConfig{DefaultProtected: true} }

// limits is the parsed, defaulted part of Config that decisions use.
type limits struct {
	maxBody int64
	hidden  map[string]bool
	git     *gitRules
}

// parse checks the keys of Config that are not files, naming the key of each problem.
func (c Config) parse() (*limits, error) {
	var errs []error
	l := &limits{maxBody: c.MaxBodyBytes, hidden: map[string]bool{}}
	switch {
	case l.maxBody == 0:
		l.maxBody = DefaultMaxBodyBytes
	case l.maxBody < 0:
		errs = append(errs, fmt.Errorf("sidecar.policy.max_body_bytes: %d is negative", c.MaxBodyBytes))
	}
	if c.MaxSessions < 0 {
		errs = append(errs, fmt.Errorf("sidecar.policy.max_sessions: %d is negative", c.MaxSessions))
	}
	for _, h := range c.HiddenHeaders {
		name := strings.ToLower(strings.TrimSpace(h))
		if !isHeaderName(name) {
			errs = append(errs, fmt.Errorf("sidecar.policy.hidden_headers: %q is not a header name", h))
			continue
		}
		l.hidden[name] = true
	}
	g, err := c.Git.parse()
	if err != nil {
		errs = append(errs, err)
	}
	l.git = g
	return l, errors.Join(errs...)
}
