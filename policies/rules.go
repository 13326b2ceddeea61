package policies

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"

	"github.com/openfirma/firma/internal/hostname"
)

// HostPattern is a host pattern of mapping rules (and of the sidecar's intercept, bypass and strict
// lists): an exact name or IP literal, "*.suffix" matching exactly one more label, or "*" matching
// every host. Patterns are lowercased and a trailing dot is stripped.
type HostPattern struct {
	kind  patternKind
	value string // the exact host, or the suffix after "*."
}

type patternKind uint8

const (
	patternExact patternKind = iota
	patternOneLabel
	patternAny
)

// ParseHostPattern parses and normalizes a host pattern.
func ParseHostPattern(s string) (HostPattern, error) {
	switch {
	case s == "*":
		return HostPattern{kind: patternAny}, nil
	case s == "":
		return HostPattern{}, errors.New("empty host pattern")
	case strings.HasPrefix(s, "*."):
		suffix := strings.TrimSuffix(strings.ToLower(s[2:]), ".")
		if err := hostname.Check(suffix); err != nil {
			return HostPattern{}, fmt.Errorf("host pattern %q: %v", s, err)
		}
		return HostPattern{kind: patternOneLabel, value: suffix}, nil
	case strings.Contains(s, "*"):
		return HostPattern{}, fmt.Errorf("host pattern %q: '*' may only be the whole first label (\"*.example.com\") or the whole pattern", s)
	}
	host, port, err := NormalizeHost(s)
	if err != nil {
		return HostPattern{}, fmt.Errorf("host pattern: %v", err)
	}
	if port != 0 {
		return HostPattern{}, fmt.Errorf("host pattern %q: must not carry a port", s)
	}
	return HostPattern{kind: patternExact, value: host}, nil
}

// Match reports whether a normalized host (see NormalizeHost) matches the pattern. IP literals only
// match exact and "*" patterns.
func (p HostPattern) Match(host string) bool {
	switch p.kind {
	case patternAny:
		return true
	case patternOneLabel:
		i := strings.IndexByte(host, '.')
		return i > 0 && host[i+1:] == p.value && !isIP(host)
	}
	return host == p.value
}

func (p HostPattern) String() string {
	switch p.kind {
	case patternAny:
		return "*"
	case patternOneLabel:
		return "*." + p.value
	}
	return p.value
}

func isIP(host string) bool {
	_, err := netip.ParseAddr(host)
	return err == nil
}

// parseRuleHost parses a mapping rule's host: a host pattern, optionally with a port that the
// intent's port must equal ("127.0.0.1:9100", "github.com:22", "[::1]:8080", "*.corp:443"), or ":*"
// for any port ("localhost:*", the same as no port). It returns port 0 for any port.
func parseRuleHost(s string) (HostPattern, int, error) {
	host, port := s, 0
	bareIPv6 := strings.Count(s, ":") > 1 && !strings.HasPrefix(s, "[")
	if i := strings.LastIndexByte(s, ':'); i >= 0 && !bareIPv6 && !strings.HasSuffix(s, "]") {
		host = s[:i]
		if s[i+1:] != "*" {
			p, ok := hostname.ParsePort(s[i+1:])
			if !ok {
				return HostPattern{}, 0, fmt.Errorf("host %q: bad port (want 1-65535 or *)", s)
			}
			port = p
		}
	}
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	p, err := ParseHostPattern(host)
	return p, port, err
}

// Rule is one validated [[rules]] entry of a mapping-rules file.
type Rule struct {
	// Method is "" (any HTTP method: L7 requests only), "*" (any intent: HTTP, CONNECT and DNS),
	// "CONNECT" (connection-level intents), "DNS" (name lookups) or one HTTP method.
	Method      string
	Host        HostPattern
	Port        int    // the port the intent must have; 0 = any
	Path        string // a glob where '*' matches any run of characters, '/' included; "" = any
	ActionClass string
	Provider    string
	File        string
	Line        int

	glob  glob
	order int
}

func (r *Rule) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s:%d: ", r.File, r.Line)
	if r.Method != "" {
		b.WriteString(r.Method + " ")
	}
	b.WriteString(r.Host.String())
	if r.Port != 0 {
		fmt.Fprintf(&b, ":%d", r.Port)
	}
	b.WriteString(r.Path)
	b.WriteString(" → " + r.ActionClass)
	return b.String()
}

func (r *Rule) matches(n *normalized) bool {
	if r.Port != 0 && r.Port != n.port {
		return false
	}
	switch r.Method {
	case "*":
	case "":
		if n.kind != intentHTTP {
			return false
		}
	default:
		if r.Method != n.method {
			return false
		}
	}
	return r.Path == "" || r.glob.match(n.path)
}

// moreSpecific orders the rules of one host tier: a port, then any port; an exact path, then a glob
// with more literal characters, then no path; then an explicit method, then any HTTP method, then
// "*"; then file order.
func moreSpecific(a, b *Rule) bool {
	if (a.Port != 0) != (b.Port != 0) {
		return a.Port != 0
	}
	if pa, pb := a.glob.rank(), b.glob.rank(); pa != pb {
		return pa > pb
	}
	if ma, mb := methodRank(a.Method), methodRank(b.Method); ma != mb {
		return ma > mb
	}
	return a.order < b.order
}

func methodRank(m string) int {
	switch m {
	case "*":
		return 0
	case "":
		return 1
	}
	return 2
}

// glob is a path pattern where '*' matches any run of characters.
type glob struct {
	parts []string // the literal parts between '*'s; nil for "no path"
}

func newGlob(pattern string) glob {
	if pattern == "" {
		return glob{}
	}
	return glob{parts: strings.Split(pattern, "*")}
}

// rank is 0 for no path, else 1 + twice the literal length, +1 for a path without '*'.
func (g glob) rank() int {
	if g.parts == nil {
		return 0
	}
	n := 0
	for _, p := range g.parts {
		n += len(p)
	}
	r := 1 + 2*n
	if len(g.parts) == 1 {
		r++
	}
	return r
}

func (g glob) match(s string) bool {
	if len(g.parts) == 1 {
		return s == g.parts[0]
	}
	first, last := g.parts[0], g.parts[len(g.parts)-1]
	if len(s) < len(first)+len(last) || !strings.HasPrefix(s, first) || !strings.HasSuffix(s, last) {
		return false
	}
	s = s[len(first) : len(s)-len(last)]
	for _, mid := range g.parts[1 : len(g.parts)-1] {
		i := strings.Index(s, mid)
		if i < 0 {
			return false
		}
		s = s[i+len(mid):]
	}
	return true
}

// Rules is a validated mapping-rules file, indexed by host. Safe for concurrent use.
//
// Classification picks the most specific rule that matches the normalized intent:
//  1. host: an exact host beats "*.suffix", which beats "*"; then a rule with a port beats one
//     for any port;
//  2. then path: an exact path beats a glob, a glob with more literal characters beats one with
//     fewer, and any path beats no path;
//  3. then method: a named method (GET, CONNECT, DNS, …) beats no method (any HTTP method), which
//     beats "*" (any intent);
//  4. then the rule written first.
type Rules struct {
	name    string
	source  []byte
	rules   []*Rule
	exact   map[string][]*Rule // by host
	oneUp   map[string][]*Rule // "*.suffix" rules by suffix
	any     []*Rule
	version string
}

type rulesFile struct {
	Rules []rawRule `toml:"rules"`
}

type rawRule struct {
	Method      string `toml:"method"`
	Host        string `toml:"host"`
	Path        string `toml:"path"`
	ActionClass string `toml:"action_class"`
	Provider    string `toml:"provider"`
}

// LoadRules reads a mapping-rules file and validates it against schema (nil: the embedded schema).
func LoadRules(path string, schema *Schema) (*Rules, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("loading mapping rules: %w", err)
	}
	return ParseRules(path, data, schema)
}

// ParseRules parses mapping rules in the mapping-rules.toml format; name is used in messages. Every
// problem is reported at once in a *LoadError naming file and line: unknown keys, bad host patterns
// or paths, action classes the schema does not declare, and duplicate rules.
func ParseRules(name string, data []byte, schema *Schema) (*Rules, error) {
	schema = schemaFor(schema)
	var f rulesFile
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, newLoadError(ErrInvalidRules, tomlProblems(name, err))
	}
	lines := tableLines(data, "rules", len(f.Rules))
	rs := &Rules{name: name, source: bytes.Clone(data), exact: map[string][]*Rule{}, oneUp: map[string][]*Rule{}}
	var problems []Problem
	seen := map[string]*Rule{}
	for i, raw := range f.Rules {
		r, errs := buildRule(raw, schema)
		r.File, r.Line, r.order = name, lines[i], i
		for _, err := range errs {
			problems = append(problems, Problem{File: name, Line: r.Line, Msg: fmt.Sprintf("rules[%d]: %v", i, err)})
		}
		if len(errs) > 0 {
			continue
		}
		key := fmt.Sprintf("%s %s:%d %s", r.Method, r.Host, r.Port, r.Path)
		if first, dup := seen[key]; dup {
			problems = append(problems, Problem{File: name, Line: r.Line,
				Msg: fmt.Sprintf("rules[%d]: same method, host, port and path as the rule at line %d", i, first.Line)})
			continue
		}
		seen[key] = r
		rs.rules = append(rs.rules, r)
		switch r.Host.kind {
		case patternExact:
			rs.exact[r.Host.value] = append(rs.exact[r.Host.value], r)
		case patternOneLabel:
			rs.oneUp[r.Host.value] = append(rs.oneUp[r.Host.value], r)
		default:
			rs.any = append(rs.any, r)
		}
	}
	if err := newLoadError(ErrInvalidRules, problems); err != nil {
		return nil, err
	}
	for _, tier := range []map[string][]*Rule{rs.exact, rs.oneUp} {
		for _, list := range tier {
			sort.SliceStable(list, func(i, j int) bool { return moreSpecific(list[i], list[j]) })
		}
	}
	sort.SliceStable(rs.any, func(i, j int) bool { return moreSpecific(rs.any[i], rs.any[j]) })
	sum := sha256.Sum256(data)
	rs.version = hex.EncodeToString(sum[:])
	return rs, nil
}

func buildRule(raw rawRule, schema *Schema) (*Rule, []error) {
	r := &Rule{ActionClass: raw.ActionClass, Provider: raw.Provider}
	var errs []error
	r.Method = strings.ToUpper(raw.Method)
	if r.Method != "" && r.Method != "*" && !isToken(r.Method) {
		errs = append(errs, fmt.Errorf("method %q is not an HTTP method, CONNECT, DNS or *", raw.Method))
	}
	if raw.Host == "" {
		errs = append(errs, errors.New("host is required"))
	} else if h, port, err := parseRuleHost(raw.Host); err != nil {
		errs = append(errs, err)
	} else {
		r.Host, r.Port = h, port
	}
	switch {
	case raw.Path == "" || raw.Path == "*":
		// "*" matches every path, as no path does (OpenFirma's templates write it).
	case (r.Method == MethodConnect || r.Method == MethodDNS) && raw.Path == "/":
		// Connection-level and DNS intents have no path; "/" is accepted as "no path" there.
	case r.Method == MethodConnect || r.Method == MethodDNS:
		errs = append(errs, fmt.Errorf("path %q on a %s rule: %s intents have no path", raw.Path, r.Method, r.Method))
	default:
		if err := checkPathGlob(raw.Path); err != nil {
			errs = append(errs, err)
		} else {
			r.Path = raw.Path
			r.glob = newGlob(raw.Path)
		}
	}
	switch {
	case raw.ActionClass == "":
		errs = append(errs, errors.New("action_class is required"))
	case !schema.HasActionClass(raw.ActionClass):
		errs = append(errs, fmt.Errorf("unknown action class %q (not an action of %s)", raw.ActionClass, schema.Name()))
	}
	if raw.Provider != "" && hostname.Check(raw.Provider) != nil {
		errs = append(errs, fmt.Errorf("provider %q: use lowercase letters, digits, '-', '_' and '.'", raw.Provider))
	}
	return r, errs
}

// checkPathGlob accepts a path glob only if its literal parts are already normalized, so that a rule
// can never be written in a form no normalized path will match.
func checkPathGlob(p string) error {
	if p[0] != '/' && p[0] != '*' {
		return fmt.Errorf("path %q does not start with '/' or '*'", p)
	}
	if strings.ContainsAny(p, "?#") {
		return fmt.Errorf("path %q: the query is not part of the path", p)
	}
	// Normalize with '*' standing in for a plain segment character (a leading '*' for "/x").
	probe := strings.ReplaceAll(p, "*", "x")
	if p[0] == '*' {
		probe = "/" + probe
	}
	want, err := NormalizePath(probe)
	if err != nil {
		return fmt.Errorf("path %q: %v", p, err)
	}
	if want != probe {
		return fmt.Errorf("path %q is not in normalized form (percent-decoded, no \".\", \"..\", \"//\" or trailing '/')", p)
	}
	return nil
}

// tableLines finds the line of each [[key]] header, so messages can point at the entry. An entry
// written another way (an inline array) gets line 0.
func tableLines(data []byte, key string, n int) []int {
	lines := make([]int, n)
	var p unstable.Parser
	p.Reset(data)
	i := 0
	for p.NextExpression() && i < n {
		e := p.Expression()
		if e.Kind != unstable.ArrayTable {
			continue
		}
		it := e.Key()
		if it.Next() && string(it.Node().Data) == key && it.IsLast() {
			lines[i] = p.Shape(p.Range(it.Node().Data)).Start.Line
			i++
		}
	}
	return lines
}

// tomlProblems turns go-toml's errors into problems with positions.
func tomlProblems(name string, err error) []Problem {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		var out []Problem
		for _, e := range strict.Errors {
			row, col := e.Position()
			out = append(out, Problem{File: name, Line: row, Column: col, Msg: fmt.Sprintf("unknown key %q", strings.Join(e.Key(), "."))})
		}
		return out
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, col := de.Position()
		return []Problem{{File: name, Line: row, Column: col, Msg: strings.TrimPrefix(de.Error(), "toml: ")}}
	}
	return []Problem{{File: name, Msg: err.Error()}}
}

// Name is the file the rules were read from.
func (rs *Rules) Name() string { return rs.name }

// Version is a content hash of the rules file.
func (rs *Rules) Version() string { return rs.version }

// All returns the rules in file order.
func (rs *Rules) All() []*Rule { return append([]*Rule(nil), rs.rules...) }

// Classify returns the rule that classifies the intent, or nil when none does. method is an HTTP
// method, MethodConnect or MethodDNS; host and path are normalized first, as Decide does.
func (rs *Rules) Classify(method, host, path string) (*Rule, error) {
	n, err := normalize(&Request{AgentID: "-", Method: method, Host: host, Path: path})
	if err != nil {
		return nil, err
	}
	return rs.match(&n), nil
}

func (rs *Rules) match(n *normalized) *Rule {
	for _, r := range rs.exact[n.host] {
		if r.matches(n) {
			return r
		}
	}
	if i := strings.IndexByte(n.host, '.'); i > 0 {
		if list := rs.oneUp[n.host[i+1:]]; len(list) > 0 && !isIP(n.host) {
			for _, r := range list {
				if r.matches(n) {
					return r
				}
			}
		}
	}
	for _, r := range rs.any {
		if r.matches(n) {
			return r
		}
	}
	return nil
}

// revalidate parses the same rules text against another schema (a bundle's).
func (rs *Rules) revalidate(schema *Schema) (*Rules, error) {
	return ParseRules(rs.name, rs.source, schema)
}
