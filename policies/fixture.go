package policies

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/rs/zerolog"
)

// ErrInvalidFixture marks a fixture file that cannot be run.
var ErrInvalidFixture = errors.New("invalid fixture")

// FixtureTime is the decision time of a fixture case that sets no context.timestamp_ms, so that
// time-dependent policies give the same answer on every run: 2026-01-01T00:00:00Z.
var FixtureTime = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// FixtureFile is a file of golden cases: requests and the decisions they must get. The format:
//
//	# Setup, all optional; paths are relative to this file. Absent: the embedded defaults.
//	policy_dir        = "../../examples/policies"   # directory of .cedar files
//	schema            = "firma.cedarschema"         # a schema replacing the embedded one
//	rules             = "mapping-rules.toml"        # mapping rules
//	default_protected = true                        # absent: true
//
//	[[case]]
//	name      = "claude-code may talk to Anthropic"
//	principal = "claude-code"          # the agent id (Firma::Agent::"claude-code" also works)
//	method    = "POST"                 # an HTTP method, "CONNECT" or "DNS"
//	host      = "api.anthropic.com"
//	port      = 443                    # optional: the transport's default
//	path      = "/v1/messages"         # HTTP intents only; may carry a query
//	transport = "https"                # optional: "tls" for CONNECT, "dns" for DNS, else "https"
//	action    = "model.inference.chat" # optional: evaluate this action class, skipping the rules
//	context   = { uid = 1000, exe = "/usr/bin/node" }  # optional overrides: session_id,
//	                                   # timestamp_ms, raw_transport, pid, exe, uid, cgroup
//	expect          = "ALLOW"          # ALLOW, DENY or PASSTHROUGH
//	expect_reason   = "permitted by policy"          # optional, exact
//	expect_action   = "communication.external.send"  # optional; "" = unclassified
//	expect_policies = ["permit_at_claude-code.cedar_7"]  # optional, any order; [] = none
//
// A case without timestamp_ms is decided at FixtureTime.
type FixtureFile struct {
	Path             string        `toml:"-"`
	PolicyDir        string        `toml:"policy_dir"`
	Schema           string        `toml:"schema"`
	Rules            string        `toml:"rules"`
	DefaultProtected *bool         `toml:"default_protected"`
	Cases            []FixtureCase `toml:"case"`
}

// FixtureCase is one [[case]] of a fixture file.
type FixtureCase struct {
	Name           string         `toml:"name"`
	Principal      string         `toml:"principal"`
	Method         string         `toml:"method"`
	Host           string         `toml:"host"`
	Port           int            `toml:"port"`
	Path           string         `toml:"path"`
	Transport      string         `toml:"transport"`
	Action         string         `toml:"action"`
	Context        map[string]any `toml:"context"`
	Expect         Outcome        `toml:"expect"`
	ExpectReason   *string        `toml:"expect_reason"`
	ExpectAction   *string        `toml:"expect_action"`
	ExpectPolicies *[]string      `toml:"expect_policies"`

	Line    int     `toml:"-"` // of the [[case]] header
	request Request // built at load
}

// LoadFixtures reads and checks a fixture file; problems name the file and the case's line.
func LoadFixtures(path string) (*FixtureFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("loading fixtures: %w", err)
	}
	f := &FixtureFile{}
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(f); err != nil {
		return nil, &LoadError{Kind: ErrInvalidFixture, Problems: tomlProblems(path, err)}
	}
	f.Path = path
	lines := tableLines(data, "case", len(f.Cases))
	var problems []Problem
	for i := range f.Cases {
		c := &f.Cases[i]
		c.Line = lines[i]
		if c.Name == "" {
			c.Name = fmt.Sprintf("case %d (line %d)", i+1, c.Line)
		}
		for _, err := range c.build() {
			problems = append(problems, Problem{File: path, Line: c.Line, Msg: fmt.Sprintf("%s: %v", c.Name, err)})
		}
	}
	if len(f.Cases) == 0 {
		problems = append(problems, Problem{File: path, Msg: "no [[case]]"})
	}
	if err := newLoadError(ErrInvalidFixture, problems); err != nil {
		return nil, err
	}
	return f, nil
}

func (c *FixtureCase) build() []error {
	var errs []error
	principal := c.Principal
	if id, ok := strings.CutPrefix(principal, `Firma::Agent::"`); ok && strings.HasSuffix(id, `"`) {
		principal = strings.TrimSuffix(id, `"`)
	}
	if principal == "" {
		errs = append(errs, errors.New("principal is required"))
	}
	if c.Host == "" {
		errs = append(errs, errors.New("host is required"))
	}
	switch c.Expect {
	case Allow, Deny, Passthrough:
	default:
		errs = append(errs, fmt.Errorf("expect = %q: want ALLOW, DENY or PASSTHROUGH", c.Expect))
	}
	method := strings.ToUpper(c.Method)
	if method == "" {
		errs = append(errs, errors.New("method is required (an HTTP method, CONNECT or DNS)"))
	}
	transport := c.Transport
	if transport == "" {
		switch method {
		case MethodConnect:
			transport = "tls"
		case MethodDNS:
			transport = "dns"
		default:
			transport = "https"
		}
	}
	r := Request{
		AgentID: principal, Method: method, Host: c.Host, Port: c.Port, Path: c.Path,
		Transport: transport, Time: FixtureTime,
	}
	for k, v := range c.Context {
		if err := setContext(&r, k, v); err != nil {
			errs = append(errs, fmt.Errorf("context.%s: %v", k, err))
		}
	}
	c.request = r
	return errs
}

func setContext(r *Request, key string, v any) error {
	str := func(dst *string) error {
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("want a string, got %T", v)
		}
		*dst = s
		return nil
	}
	long := func(dst *int64) error {
		n, ok := v.(int64)
		if !ok {
			return fmt.Errorf("want an integer, got %T", v)
		}
		*dst = n
		return nil
	}
	var n int64
	var err error
	switch key {
	case "session_id":
		return str(&r.SessionID)
	case "raw_transport":
		return str(&r.Transport)
	case "exe":
		return str(&r.Exe)
	case "cgroup":
		return str(&r.Cgroup)
	case "timestamp_ms":
		if err = long(&n); err == nil {
			r.Time = time.UnixMilli(n).UTC()
		}
	case "pid":
		if err = long(&n); err == nil {
			r.PID = int(n)
		}
	case "uid":
		if err = long(&n); err == nil {
			r.UID = int(n)
		}
	default:
		return errors.New("not a context key (session_id, timestamp_ms, raw_transport, pid, exe, uid, cgroup)")
	}
	return err
}

// Setup returns the configuration the file's setup keys describe, paths resolved against the file.
func (f *FixtureFile) Setup() (Config, MappingConfig) {
	rel := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(filepath.Dir(f.Path), p)
	}
	m := DefaultMappingConfig()
	if f.DefaultProtected != nil {
		m.DefaultProtected = *f.DefaultProtected
	}
	m.RulesPath = rel(f.Rules)
	return Config{Dir: rel(f.PolicyDir), Schema: rel(f.Schema)}, m
}

// Engine builds the engine the file's setup describes.
func (f *FixtureFile) Engine(log zerolog.Logger) (*Engine, error) {
	cfg, m := f.Setup()
	return New(cfg, m, log)
}

// FixtureResult is one case's outcome.
type FixtureResult struct {
	Case     *FixtureCase
	Got      Decision
	Mismatch []string // what differs from the expectation; empty when the case passes
}

// OK reports whether the case got what it expected.
func (r FixtureResult) OK() bool { return len(r.Mismatch) == 0 }

// Run decides every case on e.
func (f *FixtureFile) Run(ctx context.Context, e *Engine) ([]FixtureResult, error) {
	out := make([]FixtureResult, 0, len(f.Cases))
	for i := range f.Cases {
		c := &f.Cases[i]
		if c.Action != "" && !e.Set().Schema().HasActionClass(c.Action) {
			return out, fmt.Errorf("%w: %s:%d: %s: action %q is not an action class of %s",
				ErrInvalidFixture, f.Path, c.Line, c.Name, c.Action, e.Set().Schema().Name())
		}
		r := c.request
		got, err := e.decide(ctx, &r, c.Action)
		if err != nil {
			return out, err
		}
		res := FixtureResult{Case: c, Got: got}
		if got.Outcome != c.Expect {
			res.Mismatch = append(res.Mismatch, fmt.Sprintf("outcome %s, want %s", got.Outcome, c.Expect))
		}
		if c.ExpectReason != nil && got.Reason != *c.ExpectReason {
			res.Mismatch = append(res.Mismatch, fmt.Sprintf("reason %q, want %q", got.Reason, *c.ExpectReason))
		}
		if c.ExpectAction != nil && got.ActionClass != *c.ExpectAction {
			res.Mismatch = append(res.Mismatch, fmt.Sprintf("action class %q, want %q", got.ActionClass, *c.ExpectAction))
		}
		if c.ExpectPolicies != nil {
			want := slices.Sorted(slices.Values(*c.ExpectPolicies))
			have := slices.Sorted(slices.Values(got.MatchedPolicies))
			if !slices.Equal(want, have) {
				res.Mismatch = append(res.Mismatch, fmt.Sprintf("policies %v, want %v", have, want))
			}
		}
		out = append(out, res)
	}
	return out, nil
}

// Describe renders a case's request and decision on one line, for test and CLI output.
func (r FixtureResult) Describe() string {
	c, d := r.Case, r.Got
	target := c.Host
	if c.Path != "" {
		target += c.Path
	}
	s := fmt.Sprintf("%s %s %s → %s %q action=%q policies=%v", c.request.AgentID, c.request.Method, target, d.Outcome, d.Reason, d.ActionClass, d.MatchedPolicies)
	if c.Action != "" {
		s += fmt.Sprintf(" (action fixed to %q)", c.Action)
	}
	return s
}
