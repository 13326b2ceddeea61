package policies

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"iter"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	cedar "github.com/cedar-policy/cedar-go"
	"github.com/cedar-policy/cedar-go/types"
	xast "github.com/cedar-policy/cedar-go/x/exp/ast"
)

// Sentinels callers branch on. Load errors wrap one of them inside a *LoadError.
var (
	ErrInvalidPolicy = errors.New("invalid policy")
	ErrInvalidSchema = errors.New("invalid schema")
	ErrInvalidRules  = errors.New("invalid mapping rules")
)

// Problem is one thing wrong with an input file, at a position when one is known (Line 0: none).
type Problem struct {
	File   string
	Line   int
	Column int
	Msg    string
}

func (p Problem) String() string {
	switch {
	case p.Line > 0 && p.Column > 0:
		return fmt.Sprintf("%s:%d:%d: %s", p.File, p.Line, p.Column, p.Msg)
	case p.Line > 0:
		return fmt.Sprintf("%s:%d: %s", p.File, p.Line, p.Msg)
	}
	return fmt.Sprintf("%s: %s", p.File, p.Msg)
}

// LoadError lists every problem found while loading a set of files, sorted by file and position,
// so that one run of `firma policy validate` shows them all. It unwraps to Kind.
type LoadError struct {
	Kind     error // ErrInvalidPolicy or ErrInvalidRules
	Problems []Problem
}

func (e *LoadError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

func (e *LoadError) Unwrap() error { return e.Kind }

func newLoadError(kind error, problems []Problem) error {
	if len(problems) == 0 {
		return nil
	}
	sort.SliceStable(problems, func(i, j int) bool {
		a, b := problems[i], problems[j]
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
	return &LoadError{Kind: kind, Problems: problems}
}

// Set is a validated set of Cedar policies with stable ids, indexed by principal and action so that
// evaluation only runs the policies that can apply. Safe for concurrent use; never modified after
// load.
//
// A policy's id is its @id("…") annotation when it has one, else <effect>_at_<file>_<line>, where
// file is the base name of the .cedar file and line is the line of the permit/forbid keyword (e.g.
// forbid_at_claude-code.cedar_18). Ids are unique within a set.
type Set struct {
	schema   *Schema
	policies []*policy // by file, then position
	byID     map[string]*policy
	idx      index
	version  string
}

type policy struct {
	id     string
	file   string // as named in messages
	line   int    // of the effect keyword
	column int
	forbid bool
	named  bool // the id comes from an @id annotation
	cedar  *cedar.Policy
	// What the conditions read, so that a decision builds only those context attributes (and the
	// resource's attributes only when a candidate reads them) and names them in the audit record.
	reads reads
	// remediation is a forbid's @modify, @defer or @step_up; nil for a plain forbid.
	remediation *Remediation
}

func (p *policy) position() string { return fmt.Sprintf("%s:%d:%d", p.file, p.line, p.column) }

// PolicyInfo describes one policy of a Set.
type PolicyInfo struct {
	ID     string
	Effect string // "permit" or "forbid"
	File   string
	Line   int
	Column int
}

// sourceFile is one .cedar file: name is what ids use, path what messages show.
type sourceFile struct {
	name string
	path string
	data []byte
}

// LoadDir loads every *.cedar file directly in dir (not in subdirectories), validating each policy
// against schema (nil: the embedded schema). Every problem in every file is reported at once in a
// *LoadError naming file, line and column.
func LoadDir(dir string, schema *Schema) (*Set, error) {
	files, err := readPolicyDir(dir)
	if err != nil {
		return nil, fmt.Errorf("loading policy dir %s: %w", dir, err)
	}
	set, err := parseSources(files, schemaFor(schema))
	if err != nil {
		return nil, fmt.Errorf("loading policy dir %s: %w", dir, err)
	}
	return set, nil
}

func readPolicyDir(dir string) ([]sourceFile, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var files []sourceFile
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".cedar") || e.IsDir() {
			continue
		}
		path := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		files = append(files, sourceFile{name: e.Name(), path: path, data: data})
	}
	return files, nil
}

// LoadFiles loads the given .cedar files as one set, like LoadDir.
func LoadFiles(paths []string, schema *Schema) (*Set, error) {
	files := make([]sourceFile, 0, len(paths))
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("loading policies: %w", err)
		}
		files = append(files, sourceFile{name: filepath.Base(path), path: path, data: data})
	}
	return parseSources(files, schemaFor(schema))
}

// ParseFiles builds a set from in-memory files, keyed by file name (e.g. the files of a signed
// authority bundle). Every key must end in ".cedar"; ids use the key's base name.
func ParseFiles(files map[string][]byte, schema *Schema) (*Set, error) {
	srcs := make([]sourceFile, 0, len(files))
	var problems []Problem
	for name, data := range files {
		if !strings.HasSuffix(name, ".cedar") {
			problems = append(problems, Problem{File: name, Msg: "not a .cedar file"})
			continue
		}
		srcs = append(srcs, sourceFile{name: filepath.Base(name), path: name, data: data})
	}
	if err := newLoadError(ErrInvalidPolicy, problems); err != nil {
		return nil, err
	}
	return parseSources(srcs, schemaFor(schema))
}

func parseSources(files []sourceFile, schema *Schema) (*Set, error) {
	sort.Slice(files, func(i, j int) bool { return files[i].path < files[j].path })
	set := &Set{schema: schema, byID: map[string]*policy{}}
	var problems []Problem
	for _, f := range files {
		ps, fileProblems := parseFile(f, schema)
		problems = append(problems, fileProblems...)
		for _, p := range ps {
			if first, dup := set.byID[p.id]; dup {
				hint := ""
				if !p.named && !first.named {
					hint = "; give them @id annotations"
				}
				problems = append(problems, Problem{File: p.file, Line: p.line, Column: p.column,
					Msg: fmt.Sprintf("duplicate policy id %q (first at %s%s)", p.id, first.position(), hint)})
				continue
			}
			set.byID[p.id] = p
			set.policies = append(set.policies, p)
		}
	}
	if err := newLoadError(ErrInvalidPolicy, problems); err != nil {
		return nil, err
	}
	set.idx = buildIndex(set.policies, schema)
	set.version = contentHash(schema.source, files)
	return set, nil
}

// cedar-go's parser and scanner errors: `parse error at <input>:L:C "token": message` and
// `<input>:L:C: message`.
var (
	parserError  = regexp.MustCompile(`^parse error at <input>:(\d+):(\d+) ("(?:[^"\\]|\\.)*"): (.*)$`)
	scannerError = regexp.MustCompile(`^<input>:(\d+):(\d+): (.*)$`)
)

// parseProblem turns a cedar-go parse error into a problem at its position.
func parseProblem(path string, err error) Problem {
	msg := strings.TrimPrefix(err.Error(), "parser error: ")
	p := Problem{File: path, Msg: msg}
	if m := parserError.FindStringSubmatch(msg); m != nil {
		p.Line, _ = strconv.Atoi(m[1])
		p.Column, _ = strconv.Atoi(m[2])
		p.Msg = "parse error: " + m[4]
		if m[3] != `""` {
			p.Msg = "parse error near " + m[3] + ": " + m[4]
		}
	} else if m := scannerError.FindStringSubmatch(msg); m != nil {
		p.Line, _ = strconv.Atoi(m[1])
		p.Column, _ = strconv.Atoi(m[2])
		p.Msg = "syntax error: " + m[3]
	}
	return p
}

func parseFile(f sourceFile, schema *Schema) ([]*policy, []Problem) {
	list, err := cedar.NewPolicyListFromBytes(f.name, f.data)
	if err != nil {
		return nil, []Problem{parseProblem(f.path, err)}
	}
	var out []*policy
	var problems []Problem
	for _, cp := range list {
		pos := cp.Position()
		line, col, annotations := scanAnnotations(f.data, pos)
		p := &policy{file: f.path, line: line, column: col, forbid: cp.Effect() == cedar.Forbid, cedar: cp}
		p.reads = analyze(cp)
		effect := "permit"
		if p.forbid {
			effect = "forbid"
		}
		p.id = fmt.Sprintf("%s_at_%s_%d", effect, f.name, line)
		if id, ok := cp.Annotations()["id"]; ok {
			if strings.TrimSpace(string(id)) == "" {
				problems = append(problems, Problem{File: f.path, Line: pos.Line, Column: pos.Column, Msg: "@id must not be empty"})
				continue
			}
			p.id, p.named = string(id), true
		}
		bad := false
		if err := schema.validator.Policy(p.id, (*xast.Policy)(cp.AST())); err != nil {
			for _, e := range flatten(err) {
				msg := strings.TrimPrefix(e.Error(), fmt.Sprintf("for policy `%s`, ", p.id))
				problems = append(problems, Problem{File: f.path, Line: line, Column: col,
					Msg: fmt.Sprintf("policy %s: %s", p.id, msg)})
			}
			bad = true
		}
		for _, path := range p.reads.tests {
			if err := schema.checkHas(path); err != nil {
				problems = append(problems, Problem{File: f.path, Line: line, Column: col, Msg: fmt.Sprintf("policy %s: %v", p.id, err)})
				bad = true
			}
		}
		var errs map[RemediationKind]error
		if p.remediation, errs = parseRemediation(cp, p.forbid); len(errs) > 0 {
			for kind, err := range errs {
				at := annotations[string(kind)]
				problems = append(problems, Problem{File: f.path, Line: at.Line, Column: at.Column,
					Msg: fmt.Sprintf("policy %s: %v", p.id, err)})
			}
			bad = true
		}
		if !bad {
			out = append(out, p)
		}
	}
	return out, problems
}

func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

// scanAnnotations finds the permit/forbid keyword of the policy starting at pos, skipping its
// annotations, so that an id names the line a reader looks for, and the position of each
// annotation by name, so that a bad one is reported where it is written.
func scanAnnotations(src []byte, pos cedar.Position) (line, col int, annotations map[string]cedar.Position) {
	annotations = map[string]cedar.Position{}
	if pos.Offset < 0 || pos.Offset > len(src) {
		return pos.Line, pos.Column, annotations
	}
	// at converts an offset at or after the last one converted to a position.
	cur, from := cedar.Position{Line: pos.Line, Column: pos.Column}, pos.Offset
	at := func(to int) cedar.Position {
		for _, r := range string(src[from:to]) {
			if r == '\n' {
				cur.Line, cur.Column = cur.Line+1, 1
			} else if r != utf8.RuneError {
				cur.Column++
			}
		}
		from = to
		return cur
	}
	i := pos.Offset
	skipSpace := func() {
		for i < len(src) {
			switch {
			case src[i] == ' ' || src[i] == '\t' || src[i] == '\r' || src[i] == '\n':
				i++
			case src[i] == '/' && i+1 < len(src) && src[i+1] == '/':
				for i < len(src) && src[i] != '\n' {
					i++
				}
			default:
				return
			}
		}
	}
	for i < len(src) && src[i] == '@' {
		start := i
		i++
		for i < len(src) && (src[i] == '_' || src[i] >= 'a' && src[i] <= 'z' || src[i] >= 'A' && src[i] <= 'Z' || src[i] >= '0' && src[i] <= '9') {
			i++
		}
		annotations[string(src[start+1:i])] = at(start)
		skipSpace()
		if i < len(src) && src[i] == '(' {
			inString := false
			for i++; i < len(src); i++ {
				c := src[i]
				if inString {
					if c == '\\' {
						i++
					} else if c == '"' {
						inString = false
					}
					continue
				}
				if c == '"' {
					inString = true
				} else if c == ')' {
					i++
					break
				}
			}
		}
		skipSpace()
	}
	if i > len(src) {
		return pos.Line, pos.Column, annotations
	}
	p := at(i)
	return p.Line, p.Column, annotations
}

// contentHash identifies a set by what it was built from: the schema and every file's name and bytes.
func contentHash(schema []byte, files []sourceFile) string {
	h := sha256.New()
	var n [8]byte
	write := func(b []byte) {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	write(schema)
	for _, f := range files {
		write([]byte(f.path))
		write(f.data)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Schema returns the schema the set was validated against.
func (s *Set) Schema() *Schema { return s.schema }

// Version is a content hash of the schema and the policy files the set was built from.
func (s *Set) Version() string { return s.version }

// Len is the number of policies.
func (s *Set) Len() int { return len(s.policies) }

// Policies describes every policy, in file and line order.
func (s *Set) Policies() []PolicyInfo {
	out := make([]PolicyInfo, len(s.policies))
	for i, p := range s.policies {
		effect := "permit"
		if p.forbid {
			effect = "forbid"
		}
		out[i] = PolicyInfo{ID: p.id, Effect: effect, File: p.file, Line: p.line, Column: p.column}
	}
	return out
}

// index narrows evaluation to the policies whose scope can match: by the action class, then by the
// agent. A policy whose principal or action scope is not a plain entity goes to the "any" lists,
// which are always evaluated; Cedar still evaluates every candidate in full, so the index only
// decides what is skipped, never what matches.
type index struct {
	byAction  map[string]*bucket
	anyAction bucket
}

type bucket struct {
	byAgent  map[string][]*policy
	anyAgent []*policy
}

func (b *bucket) add(p *policy) {
	var agent string
	var ok bool
	switch sc := p.cedar.AST().Principal.(type) {
	case xast.ScopeTypeEq:
		agent, ok = string(sc.Entity.ID), sc.Entity.Type == AgentType
	case xast.ScopeTypeIn:
		// Agents have no parents in firma's requests, so `principal in Agent::"a"` is `==`.
		agent, ok = string(sc.Entity.ID), sc.Entity.Type == AgentType
	}
	if !ok {
		b.anyAgent = append(b.anyAgent, p)
		return
	}
	if b.byAgent == nil {
		b.byAgent = map[string][]*policy{}
	}
	b.byAgent[agent] = append(b.byAgent[agent], p)
}

func buildIndex(ps []*policy, schema *Schema) index {
	idx := index{byAction: map[string]*bucket{}}
	addTo := func(class string, p *policy) {
		b := idx.byAction[class]
		if b == nil {
			b = &bucket{}
			idx.byAction[class] = b
		}
		b.add(p)
	}
	// classes an `action in X` scope covers: X itself and every action class below it.
	covered := func(uids ...types.EntityUID) []string {
		seen := map[string]bool{}
		var out []string
		for _, uid := range uids {
			for _, c := range append([]string{string(uid.ID)}, schema.within[uid]...) {
				if !seen[c] {
					seen[c] = true
					out = append(out, c)
				}
			}
		}
		return out
	}
	for _, p := range ps {
		switch sc := p.cedar.AST().Action.(type) {
		case xast.ScopeTypeEq:
			addTo(string(sc.Entity.ID), p)
		case xast.ScopeTypeIn:
			for _, c := range covered(sc.Entity) {
				addTo(c, p)
			}
		case xast.ScopeTypeInSet:
			for _, c := range covered(sc.Entities...) {
				addTo(c, p)
			}
		default:
			idx.anyAction.add(p)
		}
	}
	return idx
}

// candidates are the policy lists that can apply to one (agent, action) pair.
type candidates [4][]*policy

func (s *Set) candidates(agent, action string) candidates {
	var c candidates
	if b := s.idx.byAction[action]; b != nil {
		c[0], c[1] = b.byAgent[agent], b.anyAgent
	}
	c[2], c[3] = s.idx.anyAction.byAgent[agent], s.idx.anyAction.anyAgent
	return c
}

// needs returns the context attributes the candidates read, and whether any reads the resource's
// attributes.
func (c *candidates) needs() (context attrMask, resource bool) {
	for _, list := range c {
		for _, p := range list {
			context |= p.reads.context
			resource = resource || p.reads.resource
		}
	}
	return context, resource
}

// All makes candidates a cedar.PolicyIterator.
func (c *candidates) All() iter.Seq2[cedar.PolicyID, *cedar.Policy] {
	return func(yield func(cedar.PolicyID, *cedar.Policy) bool) {
		for _, list := range c {
			for _, p := range list {
				if !yield(cedar.PolicyID(p.id), p.cedar) {
					return
				}
			}
		}
	}
}

// verdict is Cedar's answer with firma's fail-closed reading of evaluation errors.
type verdict struct {
	allowed  bool
	policies []string  // determining: the forbids for a forbid-deny, the permits for an allow
	matched  []*policy // the determining policies, in policies' order
	permits  []*policy // for a remediable verdict: the permits that would allow the request
	errored  bool      // a forbid could not be evaluated, so the request is denied
	errs     []string  // "id: message" for every policy that failed to evaluate
}

// remediable reports whether the request is denied only by forbids that carry a remediation.
func (v *verdict) remediable() bool {
	if v.allowed || v.errored || len(v.matched) == 0 {
		return false
	}
	for _, p := range v.matched {
		if p.remediation == nil {
			return false
		}
	}
	return true
}

// requestEntities is the entity store of one request: the resource, the per-request entities the
// context refers to (query, headers, json, session counts) and the schema's actions.
type requestEntities struct {
	resource types.Entity
	extra    []types.Entity
	actions  types.EntityMap
}

func (e *requestEntities) Get(uid types.EntityUID) (types.Entity, bool) {
	if uid == e.resource.UID {
		return e.resource, true
	}
	for i := range e.extra {
		if e.extra[i].UID == uid {
			return e.extra[i], true
		}
	}
	ent, ok := e.actions[uid]
	return ent, ok
}

// authorize evaluates the candidate policies for req. Default deny; forbid beats permit. A policy
// that fails to evaluate is skipped as Cedar specifies, except that a failing forbid denies: an
// error must never be what lets a request through.
func (s *Set) authorize(agent, action string, ents *requestEntities, req types.Request) verdict {
	c := s.candidates(agent, action)
	return s.authorizeCandidates(&c, ents, req)
}

func (s *Set) authorizeCandidates(c *candidates, ents *requestEntities, req types.Request) verdict {
	dec, diag := cedar.Authorize(c, ents, req)
	var v verdict
	for _, e := range diag.Errors {
		v.errs = append(v.errs, fmt.Sprintf("%s: %s", e.PolicyID, e.Message))
		if p := s.byID[string(e.PolicyID)]; p != nil && p.forbid {
			v.errored = true
			v.matched = append(v.matched, p)
		}
	}
	if v.errored {
		for _, r := range diag.Reasons {
			if p := s.byID[string(r.PolicyID)]; p != nil && p.forbid {
				v.matched = append(v.matched, p)
			}
		}
	} else {
		v.allowed = dec == cedar.Allow
		for _, r := range diag.Reasons {
			v.matched = append(v.matched, s.byID[string(r.PolicyID)])
		}
	}
	sort.Slice(v.matched, func(i, j int) bool { return v.matched[i].id < v.matched[j].id })
	for _, p := range v.matched {
		v.policies = append(v.policies, p.id)
	}
	return v
}

// permitsOnly iterates the permits among candidates.
type permitsOnly struct{ c *candidates }

func (p permitsOnly) All() iter.Seq2[cedar.PolicyID, *cedar.Policy] {
	return func(yield func(cedar.PolicyID, *cedar.Policy) bool) {
		for id, cp := range p.c.All() {
			if cp.Effect() == cedar.Permit && !yield(id, cp) {
				return
			}
		}
	}
}

// permits returns the permits among the candidates that are satisfied, as when no forbid applied:
// whether a request that only @modify forbids stop would be allowed once modified.
func (s *Set) permits(c *candidates, ents *requestEntities, req types.Request) []*policy {
	dec, diag := cedar.Authorize(permitsOnly{c}, ents, req)
	if dec != cedar.Allow {
		return nil
	}
	out := make([]*policy, 0, len(diag.Reasons))
	for _, r := range diag.Reasons {
		out = append(out, s.byID[string(r.PolicyID)])
	}
	return out
}

// Query is one generic evaluation against a Set, e.g. an authority issuance request.
type Query struct {
	AgentID     string // principal Firma::Agent::"<AgentID>"
	ActionClass string // action Firma::Action::"<ActionClass>"
	Resource    string // resource Firma::Resource::"<Resource>": a host+path, or what the caller scopes
	// Attributes of the resource and the context record. Values may be string, bool, int, int64
	// or []string. Policies that read an attribute or context key the query lacks fail to evaluate
	// (a failing permit does not permit; a failing forbid denies).
	Attributes map[string]any
	Context    map[string]any
}

// Verdict is the result of Evaluate.
type Verdict struct {
	Allowed  bool
	Policies []string // determining policy ids: the forbids for a forbid-deny, the permits for an allow
	Errors   []string // "id: message" for each policy that failed to evaluate
}

// Evaluate runs the set on one query: default deny, forbid beats permit, a forbid that fails to
// evaluate denies. It returns an error only for a value of an unsupported type.
func (s *Set) Evaluate(q Query) (Verdict, error) {
	attrs, err := toRecord(q.Attributes)
	if err != nil {
		return Verdict{}, fmt.Errorf("resource attributes: %w", err)
	}
	ctx, err := toRecord(q.Context)
	if err != nil {
		return Verdict{}, fmt.Errorf("context: %w", err)
	}
	ents := &requestEntities{
		resource: types.Entity{UID: types.NewEntityUID(ResourceType, types.String(q.Resource)), Attributes: attrs},
		actions:  s.schema.actions,
	}
	req := types.Request{
		Principal: types.NewEntityUID(AgentType, types.String(q.AgentID)),
		Action:    types.NewEntityUID(ActionType, types.String(q.ActionClass)),
		Resource:  ents.resource.UID,
		Context:   ctx,
	}
	v := s.authorize(q.AgentID, q.ActionClass, ents, req)
	return Verdict{Allowed: v.allowed, Policies: v.policies, Errors: v.errs}, nil
}

func toRecord(m map[string]any) (types.Record, error) {
	rm := make(types.RecordMap, len(m))
	for k, v := range m {
		cv, err := toValue(v)
		if err != nil {
			return types.Record{}, fmt.Errorf("%q: %w", k, err)
		}
		rm[types.String(k)] = cv
	}
	return types.NewRecord(rm), nil
}

func toValue(v any) (types.Value, error) {
	switch v := v.(type) {
	case string:
		return types.String(v), nil
	case bool:
		return types.Boolean(v), nil
	case int:
		return types.Long(v), nil
	case int64:
		return types.Long(v), nil
	case []string:
		vals := make([]types.Value, len(v))
		for i, s := range v {
			vals[i] = types.String(s)
		}
		return types.NewSet(vals...), nil
	}
	return nil, fmt.Errorf("unsupported value type %T", v)
}
