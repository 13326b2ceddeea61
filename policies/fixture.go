package policies

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
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
//	protected_branches = ["main", "release/*"]      # [sidecar.policy.git]; absent: the defaults
//	git_hosts         = ["github.com"]              # [sidecar.policy.git] hosts; absent: the defaults
//	max_body_bytes    = 1048576                     # [sidecar.policy]; absent: the default
//
//	[[case]]
//	name      = "claude-code may talk to Anthropic"
//	principal = "claude-code"          # the agent id (Firma::Agent::"claude-code" also works)
//	method    = "POST"                 # an HTTP method, "CONNECT" or "DNS"
//	host      = "api.anthropic.com"
//	port      = 443                    # optional: the transport's default
//	path      = "/v1/messages?beta=1"  # HTTP intents only; its query is context.query
//	transport = "https"                # optional: "tls" for CONNECT, "dns" for DNS, else "https"
//	action    = "model.inference.chat" # optional: evaluate this action class, skipping the rules
//	body      = '{"model": "x"}'       # optional request body (or body_file = "push.bin",
//	                                   # relative to this file, for binary bodies such as git pushes)
//	context   = { uid = 1000, json = { model = "claude-sonnet-4-5", max_tokens = 1024 } }
//	expect          = "ALLOW"          # ALLOW, DENY, PASSTHROUGH, MODIFY, DEFER or STEP_UP
//	expect_reason   = "permitted by policy"          # optional, exact
//	expect_action   = "communication.external.send"  # optional; "" = unclassified
//	expect_policies = ["permit_at_claude-code.cedar_7"]  # optional, any order; [] = none
//	expect_fields   = ["context.json.model"]         # optional, any order; [] = none
//
// context sets what the request would carry, by the names policies read:
//
//   - attribution: session_id, timestamp_ms, raw_transport, pid, exe, uid, cgroup;
//
//   - content: body_size (a size without a body), content_type (the Content-Type header),
//     headers (a table of header name → value), json (a table sent as the JSON body);
//
//   - session state: action_count, deny_count, prior_action_classes, last_resource,
//     session_duration_s, actions_last_minute and actions_last_hour (tables of action class →
//     count). With none of these, the cases of a file form one sequence: each decision is
//     observed, so a case sees what the cases before it in the same session did.
//
//   - git: git_service, git_owner, git_repo, git_refs (an array), git_delete, git_force replace what
//     the request gives (a git path classifies it; body_file with a captured push gives the rest);
//     with them, set action to the class the request would have.
//
// query comes from the path. A case without timestamp_ms is decided at FixtureTime.
type FixtureFile struct {
	Path              string        `toml:"-"`
	PolicyDir         string        `toml:"policy_dir"`
	Schema            string        `toml:"schema"`
	Rules             string        `toml:"rules"`
	DefaultProtected  *bool         `toml:"default_protected"`
	ProtectedBranches []string      `toml:"protected_branches"`
	GitHosts          []string      `toml:"git_hosts"`
	MaxBodyBytes      int64         `toml:"max_body_bytes"`
	Cases             []FixtureCase `toml:"case"`
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
	Body           *string        `toml:"body"`
	BodyFile       string         `toml:"body_file"`
	Context        map[string]any `toml:"context"`
	Expect         Outcome        `toml:"expect"`
	ExpectReason   *string        `toml:"expect_reason"`
	ExpectAction   *string        `toml:"expect_action"`
	ExpectPolicies *[]string      `toml:"expect_policies"`
	ExpectFields   *[]string      `toml:"expect_fields"`

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
		for _, err := range c.build(filepath.Dir(path)) {
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

func (c *FixtureCase) build(dir string) []error {
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
	case Allow, Deny, Passthrough, Modify, Defer, StepUp:
	default:
		errs = append(errs, fmt.Errorf("expect = %q: want ALLOW, DENY, PASSTHROUGH, MODIFY, DEFER or STEP_UP", c.Expect))
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
		Transport: transport, Time: FixtureTime, Content: Content{Header: http.Header{}},
	}
	switch {
	case c.Body != nil && c.BodyFile != "":
		errs = append(errs, errors.New("body and body_file: give one"))
	case c.Body != nil:
		r.Content.Body = []byte(*c.Body)
	case c.BodyFile != "":
		data, err := os.ReadFile(filepath.Join(dir, c.BodyFile))
		if err != nil {
			errs = append(errs, fmt.Errorf("body_file: %w", err))
		}
		r.Content.Body = data
	}
	r.Content.BodySize = int64(len(r.Content.Body))
	var session SessionState
	hasSession := false
	for _, k := range slices.Sorted(maps.Keys(c.Context)) {
		isSession, err := setContext(&r, &session, k, c.Context[k])
		if err != nil {
			errs = append(errs, fmt.Errorf("context.%s: %v", k, err))
		}
		hasSession = hasSession || isSession
	}
	if hasSession {
		r.Session = &session
	}
	c.request = r
	return errs
}

// setContext applies one context key of a fixture case; it reports whether the key is session state.
func setContext(r *Request, session *SessionState, key string, v any) (bool, error) {
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
	boolean := func(dst *bool) error {
		b, ok := v.(bool)
		if !ok {
			return fmt.Errorf("want true or false, got %T", v)
		}
		*dst = b
		return nil
	}
	stringList := func(dst *[]string) error {
		list, ok := v.([]any)
		if !ok {
			return fmt.Errorf("want an array of strings, got %T", v)
		}
		for _, e := range list {
			s, ok := e.(string)
			if !ok {
				return fmt.Errorf("want strings, got %T", e)
			}
			*dst = append(*dst, s)
		}
		return nil
	}
	counts := func(dst *map[string]int64) error {
		m, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("want a table of action class → count, got %T", v)
		}
		*dst = map[string]int64{}
		for class, n := range m {
			if i, ok := n.(int64); ok {
				(*dst)[class] = i
				continue
			}
			return fmt.Errorf("%s: want an integer, got %T", class, n)
		}
		return nil
	}
	var n int64
	var err error
	switch key {
	case "session_id":
		return false, str(&r.SessionID)
	case "raw_transport":
		return false, str(&r.Transport)
	case "exe":
		return false, str(&r.Exe)
	case "cgroup":
		return false, str(&r.Cgroup)
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
	case "body_size":
		if r.Content.Body != nil {
			return false, errors.New("with body or body_file, the size is the body's")
		}
		err = long(&r.Content.BodySize)
	case "content_type":
		var ct string
		if err = str(&ct); err == nil {
			r.Content.Header.Set("Content-Type", ct)
		}
	case "headers":
		m, ok := v.(map[string]any)
		if !ok {
			return false, fmt.Errorf("want a table of header name → value, got %T", v)
		}
		for name, val := range m {
			s, ok := val.(string)
			if !ok {
				return false, fmt.Errorf("%s: want a string, got %T", name, val)
			}
			r.Content.Header.Add(name, s)
		}
	case "json":
		if r.Content.Body != nil || r.Content.BodySize != 0 {
			return false, errors.New("json with body, body_file or body_size: give one")
		}
		if _, ok := v.(map[string]any); !ok {
			return false, fmt.Errorf("want a table, got %T", v)
		}
		body, jerr := json.Marshal(v)
		if jerr != nil {
			return false, jerr
		}
		r.Content.Body, r.Content.BodySize = body, int64(len(body))
		if r.Content.Header.Get("Content-Type") == "" {
			r.Content.Header.Set("Content-Type", "application/json")
		}
	case "query", "query_params":
		return false, errors.New("the query comes from the path: path = \"/x?name=value\"")
	case "git_service", "git_owner", "git_repo", "git_refs", "git_delete", "git_force":
		if r.git == nil {
			r.git = &gitFacts{}
		}
		switch key {
		case "git_service":
			return false, str(&r.git.service)
		case "git_owner":
			return false, str(&r.git.owner)
		case "git_repo":
			return false, str(&r.git.repo)
		case "git_refs":
			return false, stringList(&r.git.refs)
		case "git_delete":
			return false, boolean(&r.git.delete)
		}
		return false, boolean(&r.git.force)
	case "action_count":
		return true, long(&session.ActionCount)
	case "deny_count":
		return true, long(&session.DenyCount)
	case "last_resource":
		return true, str(&session.LastResource)
	case "session_duration_s":
		if err = long(&n); err == nil {
			session.Duration = time.Duration(n) * time.Second
		}
		return true, err
	case "prior_action_classes":
		err := stringList(&session.PriorActionClasses)
		slices.Sort(session.PriorActionClasses)
		return true, err
	case "actions_last_minute":
		return true, counts(&session.LastMinute)
	case "actions_last_hour":
		return true, counts(&session.LastHour)
	default:
		return false, fmt.Errorf("not a context key (%s)", strings.Join(fixtureContextKeys, ", "))
	}
	return false, err
}

// fixtureContextKeys are the context keys a fixture case may set.
var fixtureContextKeys = []string{
	"session_id", "timestamp_ms", "raw_transport", "pid", "exe", "uid", "cgroup",
	"body_size", "content_type", "headers", "json",
	"git_service", "git_owner", "git_repo", "git_refs", "git_delete", "git_force",
	"action_count", "deny_count", "prior_action_classes", "last_resource", "session_duration_s",
	"actions_last_minute", "actions_last_hour",
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
	return Config{
		Dir: rel(f.PolicyDir), Schema: rel(f.Schema), MaxBodyBytes: f.MaxBodyBytes,
		Git: GitConfig{Hosts: f.GitHosts, ProtectedBranches: f.ProtectedBranches},
	}, m
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

// Run decides every case on e, in order. Cases without session state in their context see the
// decisions of the cases before them: each is observed by a tracker of this run.
func (f *FixtureFile) Run(ctx context.Context, e *Engine) ([]FixtureResult, error) {
	out := make([]FixtureResult, 0, len(f.Cases))
	sessions := NewSessions(0)
	for i := range f.Cases {
		c := &f.Cases[i]
		if c.Action != "" && !e.Set().Schema().HasActionClass(c.Action) {
			return out, fmt.Errorf("%w: %s:%d: %s: action %q is not an action class of %s",
				ErrInvalidFixture, f.Path, c.Line, c.Name, c.Action, e.Set().Schema().Name())
		}
		r := c.request
		got, err := e.decide(ctx, &r, c.Action, sessions)
		if err != nil {
			return out, err
		}
		sessions.Observe(got)
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
		if c.ExpectFields != nil {
			want := slices.Sorted(slices.Values(*c.ExpectFields))
			if !slices.Equal(want, got.Fields) {
				res.Mismatch = append(res.Mismatch, fmt.Sprintf("fields %v, want %v", got.Fields, want))
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
	if len(d.Fields) > 0 {
		s += fmt.Sprintf(" fields=%v", d.Fields)
	}
	if c.Action != "" {
		s += fmt.Sprintf(" (action fixed to %q)", c.Action)
	}
	return s
}
