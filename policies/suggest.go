package policies

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/net/publicsuffix"
)

// SuggestOptions say whose traffic a Suggester turns into policy.
type SuggestOptions struct {
	// AgentID is the agent whose decisions are read; every other agent's are ignored.
	AgentID string
	// Exclude are host patterns ("tracker.example.com", "*.ads.example.com") the operator does not
	// want the agent to reach: their records are not covered, and the suggestion forbids them.
	Exclude []string
	// Schema is the registry the action classes come from. nil: the embedded schema.
	Schema *Schema
	// IncludeDenied also covers what enforce mode denied (records with enforced unset). By default
	// only what the agent did is covered: what went through, and what monitor mode let through.
	IncludeDenied bool
}

// Suggester turns an agent's recorded decisions into a reviewable policy: a mapping-rules file and a
// Cedar file that, together, allow exactly what the agent was seen doing — generalized where the
// data supports it — and forbid what the operator excluded.
//
//   - Hosts: two or more names seen under one parent ("a.example.com", "b.example.com") become
//     "*.example.com", which matches exactly one more label; never a parent that is a public suffix
//     ("*.co.uk", "*.github.io", "*.com"), by the Public Suffix List (golang.org/x/net/publicsuffix,
//     the list net/http/cookiejar uses), and never for IP literals.
//   - Paths: two or more paths seen under one first segment become a prefix glob at their longest
//     common segment prefix (/v1/items/1 and /v1/users → /v1/*); a lone path stays exact.
//   - Action classes: the class the record carries when the rules in force classified the intent
//     (the most frequent one, if records disagree); otherwise one chosen from the registry by method
//     and host, and the comment says so.
//
// Every rule and permit is commented with how many requests it covers and an example. The output is
// sorted, so that it diffs well between runs, and checked before it is returned: it validates
// against the schema, every covered intent is allowed under it, and every excluded one denied.
type Suggester struct {
	opt     SuggestOptions
	schema  *Schema
	exclude []HostPattern

	tuples   map[tupleKey]*tuple
	excluded map[string]*tuple // by exclude pattern: what was seen of it (count, example)
	exTuples map[tupleKey]bool // the distinct excluded intents (up to maxChecked), for the self-check

	records    int // decisions of the agent
	left       int // refused in enforce mode, not covered
	malformed  int
	oddMethods int
	first      time.Time
	last       time.Time
	firstSeq   uint64
	lastSeq    uint64
}

// tupleKey is one distinct intent, normalized.
type tupleKey struct {
	kind      intentKind
	method    string
	host      string
	port      int
	path      string
	transport string
}

// tuple is what was seen of one distinct intent.
type tuple struct {
	key       tupleKey
	count     int
	wouldDeny int            // refused by the policy in force, let through by monitor mode
	denied    int            // refused in enforce mode (covered with IncludeDenied)
	classes   map[string]int // recorded class → records
	providers map[string]int
	forbidden map[string]int // forbids that matched a recorded refusal → records
	exes      map[string]int

	class string // chosen
	why   string // why the class was chosen by heuristic; "" when recorded
}

// Suggestion is what Suggest wrote.
type Suggestion struct {
	Rules      []byte // mapping-rules.toml
	Policy     []byte // the Cedar file
	PolicyFile string // its file name: "<agent>.cedar"
	// Records is the agent's decision records read; Covered those the suggestion allows; Excluded
	// those of excluded hosts; Left the enforce-mode refusals left out (IncludeDenied unset).
	Records, Covered, Excluded, Left int
	// Notes say what the operator should look at: what was left out, and what the policy in force
	// forbade that the suggestion permits.
	Notes []string
}

// NewSuggester checks the options and returns an empty Suggester.
func NewSuggester(opt SuggestOptions) (*Suggester, error) {
	if opt.AgentID == "" {
		return nil, errors.New("suggest: no agent id")
	}
	s := &Suggester{opt: opt, schema: schemaFor(opt.Schema), tuples: map[tupleKey]*tuple{}, excluded: map[string]*tuple{},
		exTuples: map[tupleKey]bool{}}
	for _, x := range opt.Exclude {
		p, err := ParseHostPattern(x)
		if err != nil {
			return nil, fmt.Errorf("suggest: --exclude %q: %w", x, err)
		}
		if p.kind == patternAny {
			return nil, fmt.Errorf("suggest: --exclude %q would exclude every host", x)
		}
		if !slices.Contains(s.exclude, p) {
			s.exclude = append(s.exclude, p)
		}
	}
	return s, nil
}

// maxChecked bounds the distinct excluded intents Suggest proves denied: excluded hosts are
// forbidden whole, so a sample proves as much as all of them.
const maxChecked = 10000

// methodName is the HTTP methods a suggested rule may name: a "*" or a lowercase method means
// something else to a rule (any intent), so intents with such methods are not covered.
var methodName = regexp.MustCompile(`^[A-Z][A-Z0-9_-]*$`)

// Add reads one recorded decision. Decisions of other agents are ignored.
func (s *Suggester) Add(o Observed) {
	if o.Request.AgentID != s.opt.AgentID {
		return
	}
	s.records++
	t := o.Request.Time
	if !t.IsZero() && (s.first.IsZero() || t.Before(s.first)) {
		s.first = t
	}
	if t.After(s.last) {
		s.last = t
	}
	if o.Seq != 0 && (s.firstSeq == 0 || o.Seq < s.firstSeq) {
		s.firstSeq = o.Seq
	}
	s.lastSeq = max(s.lastSeq, o.Seq)

	r := o.Request
	n, err := normalize(&r)
	if err != nil {
		s.malformed++
		return
	}
	key := tupleKey{kind: n.kind, method: n.method, host: n.host, port: n.port, path: n.path, transport: n.transport}
	if n.kind == intentDNS {
		key.port, key.transport = 0, "dns"
	}
	for _, p := range s.exclude {
		if excludes(p, n.host) {
			x := s.excluded[p.String()]
			if x == nil {
				x = newTuple(key)
				s.excluded[p.String()] = x
			}
			x.count++
			x.exes[o.Request.Exe]++
			if len(s.exTuples) < maxChecked {
				s.exTuples[key] = true
			}
			if describeKey(key) < describeKey(x.key) {
				x.key = key
			}
			return
		}
	}
	refused := !o.Outcome.Allowed()
	if refused && o.Enforced && !s.opt.IncludeDenied {
		s.left++
		return
	}
	if n.kind == intentHTTP && !methodName.MatchString(n.method) {
		s.oddMethods++
		return
	}
	tp := s.tuples[key]
	if tp == nil {
		tp = newTuple(key)
		s.tuples[key] = tp
	}
	tp.count++
	if refused {
		if o.Enforced {
			tp.denied++
		} else {
			tp.wouldDeny++
		}
		for _, id := range o.Policies {
			tp.forbidden[id]++
		}
	}
	if o.ActionClass != "" {
		tp.classes[o.ActionClass]++
	}
	if o.Provider != "" {
		tp.providers[o.Provider]++
	}
	tp.exes[o.Request.Exe]++
}

// excludes reports whether an --exclude pattern covers host: a wildcard any name below it, however
// deep, as the forbid written for it does.
func excludes(p HostPattern, host string) bool {
	if p.kind == patternOneLabel {
		return strings.HasSuffix(host, "."+p.value) && !isIP(host)
	}
	return p.Match(host)
}

func newTuple(k tupleKey) *tuple {
	return &tuple{key: k, classes: map[string]int{}, providers: map[string]int{}, forbidden: map[string]int{}, exes: map[string]int{}}
}

// classKey is what a mapping rule can tell apart: an HTTP request by method, host and path; a
// connection and a name lookup by host.
type classKey struct {
	kind         intentKind
	method, host string
	path         string
}

func (k tupleKey) classKey() classKey {
	return classKey{kind: k.kind, method: k.method, host: k.host, path: k.path}
}

// grant is one suggested permit: a kind of intent to a host pattern, under a path pattern, in one
// action class, with the rules that classify it.
type grant struct {
	kind   intentKind
	host   string // exact, or "*.parent"
	path   string // HTTP: exact, or a glob "prefix/*"; "" otherwise
	class  string
	tuples []*tuple
}

// plan is how the suggestion generalizes: host patterns, and which cells keep exact paths.
type plan struct {
	ungrouped map[string]bool   // parents whose names stay exact
	exact     map[cellKey]bool  // cells whose paths stay exact
	hostOf    map[string]string // host → its pattern
	cells     map[cellKey][]*tuple
}

type cellKey struct {
	kind  intentKind
	host  string // pattern
	class string
}

// Suggest builds the suggestion from what was added.
func (s *Suggester) Suggest() (*Suggestion, error) {
	if err := s.chooseClasses(); err != nil {
		return nil, err
	}
	p := &plan{ungrouped: map[string]bool{}, exact: map[cellKey]bool{}}
	var grants []*grant
	var rules *Rules
	var rulesText []byte
	for round := 0; ; round++ {
		if round > 4*len(s.tuples)+8 {
			return nil, errors.New("suggest: internal error: the suggested rules do not converge")
		}
		s.group(p)
		grants = s.grants(p)
		if s.resolveCollisions(p, grants) {
			continue
		}
		rulesText = s.rulesFile(grants)
		var err error
		if rules, err = ParseRules(RulesFileName, rulesText, s.schema); err != nil {
			return nil, fmt.Errorf("suggest: internal error: the suggested rules do not load: %w", err)
		}
		if !s.resolveMisclassified(p, rules) {
			break
		}
	}
	name := PolicyFileName(s.opt.AgentID)
	policyText := s.policyFile(name, grants)
	set, err := ParseFiles(map[string][]byte{name: policyText}, s.schema)
	if err != nil {
		return nil, fmt.Errorf("suggest: internal error: the suggested policy does not validate: %w", err)
	}
	if err := s.check(set, rules); err != nil {
		return nil, err
	}
	out := &Suggestion{Rules: rulesText, Policy: policyText, PolicyFile: name, Records: s.records, Left: s.left}
	for _, t := range s.tuples {
		out.Covered += t.count
	}
	for _, x := range s.excluded {
		out.Excluded += x.count
	}
	out.Notes = s.notes(grants)
	return out, nil
}

// RulesFileName is the name Suggest gives its mapping-rules file.
const RulesFileName = "mapping-rules.toml"

// suggestedMark is in the first line of every file Suggest writes.
const suggestedMark = ": suggested by `firma policy suggest` for agent "

// SuggestedFor reports whether a file's content is one Suggest wrote (and so one a new suggestion
// for the same agent may replace), and for which agent.
func SuggestedFor(data []byte) (agent string, ok bool) {
	first, _, _ := bytes.Cut(data, []byte("\n"))
	_, quoted, ok := bytes.Cut(first, []byte(suggestedMark))
	if !ok {
		return "", false
	}
	agent, err := strconv.Unquote(string(quoted))
	return agent, err == nil
}

// PolicyFileName is the Cedar file Suggest writes for agent: "<agent>.cedar", with characters
// that do not belong in a file name replaced by '_'.
func PolicyFileName(agent string) string {
	b := []byte(agent)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			b[i] = '_'
		}
	}
	name := strings.TrimLeft(string(b), ".")
	if name == "" {
		name = "agent"
	}
	return name + ".cedar"
}

// chooseClasses gives every covered intent its class: the one the records carry most (when the
// schema has it), else a heuristic one. Intents a rule cannot tell apart get the same class.
func (s *Suggester) chooseClasses() error {
	byClass := map[classKey][]*tuple{}
	for _, t := range s.tuples {
		byClass[t.key.classKey()] = append(byClass[t.key.classKey()], t)
	}
	for ck, ts := range byClass {
		votes := map[string]int{}
		for _, t := range ts {
			for c, n := range t.classes {
				if s.schema.HasActionClass(c) {
					votes[c] += n
				}
			}
		}
		class, why := "", ""
		best := 0
		for c, n := range votes {
			if n > best || n == best && c < class {
				class, best = c, n
			}
		}
		if class == "" {
			var err error
			if class, why, err = s.heuristic(ck, ts); err != nil {
				return err
			}
		}
		for _, t := range ts {
			t.class, t.why = class, why
		}
	}
	return nil
}

// heuristic chooses an action class from the registry for intents no rule classified.
func (s *Suggester) heuristic(ck classKey, ts []*tuple) (class, why string, err error) {
	type choice struct{ class, why string }
	var choices []choice
	switch ck.kind {
	case intentDNS:
		choices = []choice{{"network.dns.resolve", "a name lookup"}}
	case intentConnect:
		tls := false
		for _, t := range ts {
			tls = tls || t.key.transport != "tcp"
		}
		if tls {
			choices = []choice{{"communication.external.send", "a TLS connection to a service"}}
		} else {
			choices = []choice{{"network.connect", "raw TCP"}}
		}
	default:
		p, read := ck.path, ck.method == "GET" || ck.method == "HEAD" || ck.method == "OPTIONS"
		switch {
		case strings.HasSuffix(p, "/git-receive-pack"):
			choices = append(choices, choice{ClassCodeWrite, "a git push (smart HTTP)"})
		case strings.HasSuffix(p, "/git-upload-pack") || strings.HasSuffix(p, "/info/refs"):
			choices = append(choices, choice{ClassCodeRead, "a git fetch (smart HTTP)"})
		case ck.method == "POST" && strings.HasSuffix(p, "/embeddings"):
			choices = append(choices, choice{"model.inference.embedding", "an LLM embeddings endpoint"})
		case ck.method == "POST" && (strings.HasSuffix(p, "/chat/completions") || strings.HasSuffix(p, "/v1/messages") || strings.HasSuffix(p, "/v1/responses")):
			choices = append(choices, choice{"model.inference.chat", "an LLM chat endpoint"})
		case read && isRegistry(ck.host):
			choices = append(choices, choice{"package.install", "a download from a package registry"})
		}
		if read {
			choices = append(choices, choice{"communication.external.read", ck.method + " reads"})
		} else {
			choices = append(choices, choice{"communication.external.send", ck.method + " sends"})
		}
		choices = append(choices, choice{"web.request", "a web request"})
	}
	for _, c := range choices {
		if s.schema.HasActionClass(c.class) {
			return c.class, c.why, nil
		}
	}
	return "", "", fmt.Errorf("suggest: schema %s has none of the action classes suggest chooses from for %s: classify it with a rule in the rules in force",
		s.schema.Name(), describeKey(ts[0].key))
}

// isRegistry reports whether a host looks like a package registry's.
func isRegistry(host string) bool {
	for _, l := range strings.Split(host, ".") {
		switch l {
		case "registry", "npmjs", "pypi", "pythonhosted", "crates", "rubygems":
			return true
		}
	}
	return false
}

// group maps every covered host to its pattern and sorts the intents into cells.
func (s *Suggester) group(p *plan) {
	siblings := map[string][]string{}
	for _, t := range s.tuples {
		parent := groupParent(t.key.host)
		if parent != "" && !slices.Contains(siblings[parent], t.key.host) {
			siblings[parent] = append(siblings[parent], t.key.host)
		}
	}
	p.hostOf = map[string]string{}
	for parent, hosts := range siblings {
		if len(hosts) >= 2 && !p.ungrouped[parent] {
			for _, h := range hosts {
				p.hostOf[h] = "*." + parent
			}
		}
	}
	p.cells = map[cellKey][]*tuple{}
	for _, t := range s.tuples {
		host := t.key.host
		if pat, ok := p.hostOf[host]; ok {
			host = pat
		}
		k := cellKey{kind: t.key.kind, host: host, class: t.class}
		p.cells[k] = append(p.cells[k], t)
	}
}

// groupParent is the parent a one-label wildcard over host would stand for, or "" when host cannot
// be grouped: an IP literal, a name of one label, or one whose parent is a public suffix.
func groupParent(host string) string {
	if _, err := netip.ParseAddr(host); err == nil {
		return ""
	}
	i := strings.IndexByte(host, '.')
	if i <= 0 || i == len(host)-1 {
		return ""
	}
	parent := host[i+1:]
	if suffix, _ := publicsuffix.PublicSuffix(parent); suffix == parent {
		return ""
	}
	return parent
}

// grants turns the cells into permits, generalizing the paths of HTTP cells.
func (s *Suggester) grants(p *plan) []*grant {
	var out []*grant
	for k, ts := range p.cells {
		if k.kind != intentHTTP {
			out = append(out, &grant{kind: k.kind, host: k.host, class: k.class, tuples: ts})
			continue
		}
		byPath := map[string][]*tuple{}
		for path, group := range generalize(ts, p.exact[k]) {
			byPath[path] = group
		}
		for path, group := range byPath {
			out = append(out, &grant{kind: k.kind, host: k.host, path: path, class: k.class, tuples: group})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].less(out[j]) })
	for _, g := range out {
		sort.Slice(g.tuples, func(i, j int) bool { return describeKey(g.tuples[i].key) < describeKey(g.tuples[j].key) })
	}
	return out
}

// generalize assigns every intent of a cell a path pattern: paths under one first segment, when
// two or more distinct ones were seen, share a glob at their longest common segment prefix; a path
// equal to that prefix, or alone under its first segment, stays exact.
func generalize(ts []*tuple, exact bool) map[string][]*tuple {
	out := map[string][]*tuple{}
	if exact {
		for _, t := range ts {
			out[t.key.path] = append(out[t.key.path], t)
		}
		return out
	}
	bySeg := map[string][]*tuple{}
	for _, t := range ts {
		seg, _, _ := strings.Cut(strings.TrimPrefix(t.key.path, "/"), "/")
		bySeg[seg] = append(bySeg[seg], t)
	}
	for seg, group := range bySeg {
		var paths []string
		for _, t := range group {
			if !slices.Contains(paths, t.key.path) {
				paths = append(paths, t.key.path)
			}
		}
		if seg == "" || len(paths) < 2 {
			for _, t := range group {
				out[t.key.path] = append(out[t.key.path], t)
			}
			continue
		}
		prefix := commonSegments(paths)
		for _, t := range group {
			if t.key.path == prefix {
				out[prefix] = append(out[prefix], t)
			} else {
				out[prefix+"/*"] = append(out[prefix+"/*"], t)
			}
		}
	}
	return out
}

// commonSegments is the longest common prefix of paths that ends at a segment boundary: "/v1" for
// /v1/items/1 and /v1/users.
func commonSegments(paths []string) string {
	split := func(p string) []string { return strings.Split(strings.TrimPrefix(p, "/"), "/") }
	common := split(paths[0])
	for _, p := range paths[1:] {
		segs := split(p)
		n := 0
		for n < len(common) && n < len(segs) && common[n] == segs[n] {
			n++
		}
		common = common[:n]
	}
	return "/" + strings.Join(common, "/")
}

func (g *grant) less(o *grant) bool {
	if a, b := hostSortKey(g.host), hostSortKey(o.host); a != b {
		return a < b
	}
	if g.kind != o.kind {
		return kindOrder(g.kind) < kindOrder(o.kind)
	}
	if g.path != o.path {
		return g.path < o.path
	}
	return g.class < o.class
}

// hostSortKey sorts names by their labels from the right, so that a domain's hosts stay together,
// and IP literals after names.
func hostSortKey(host string) string {
	if _, err := netip.ParseAddr(host); err == nil {
		return "\xff" + host
	}
	labels := strings.Split(host, ".")
	slices.Reverse(labels)
	return strings.Join(labels, ".")
}

func kindOrder(k intentKind) int {
	switch k {
	case intentDNS:
		return 0
	case intentConnect:
		return 1
	}
	return 2
}

// methods are the methods of a grant's intents, sorted.
func (g *grant) methods() []string {
	var out []string
	for _, t := range g.tuples {
		if !slices.Contains(out, t.key.method) {
			out = append(out, t.key.method)
		}
	}
	sort.Strings(out)
	return out
}

// ruleMethod is the method a rule for this grant and an intent method names.
func (g *grant) ruleMethod(method string) string {
	switch g.kind {
	case intentDNS:
		return MethodDNS
	case intentConnect:
		return MethodConnect
	}
	return method
}

// resolveCollisions finds two grants that would need the same rule (method, host, path) with
// different classes, and generalizes less: exact paths for their cells, else exact hosts. It
// reports whether it changed the plan.
func (s *Suggester) resolveCollisions(p *plan, grants []*grant) bool {
	type ruleKey struct{ method, host, path string }
	seen := map[ruleKey]*grant{}
	changed := false
	for _, g := range grants {
		for _, m := range g.methods() {
			k := ruleKey{g.ruleMethod(m), g.host, g.path}
			other, dup := seen[k]
			if !dup {
				seen[k] = g
				continue
			}
			if other.class == g.class {
				continue
			}
			for _, x := range []*grant{g, other} {
				changed = p.generalizeLess(x.kind, x.host, x.class) || changed
			}
		}
	}
	return changed
}

// resolveMisclassified classifies every covered intent with the suggested rules and, for one that
// gets another class than its own (a more specific rule of another cell took it), generalizes its
// cell less. It reports whether it changed the plan.
func (s *Suggester) resolveMisclassified(p *plan, rules *Rules) bool {
	changed := false
	for _, t := range s.tuples {
		n := t.key.normalized()
		r := rules.match(&n)
		if r != nil && r.ActionClass == t.class {
			continue
		}
		host := t.key.host
		if pat, ok := p.hostOf[host]; ok {
			host = pat
		}
		changed = p.generalizeLess(t.key.kind, host, t.class) || changed
	}
	return changed
}

// generalizeLess makes a cell's paths exact or, when they already are, its host's names exact.
func (p *plan) generalizeLess(kind intentKind, host, class string) bool {
	k := cellKey{kind: kind, host: host, class: class}
	if kind == intentHTTP && !p.exact[k] {
		p.exact[k] = true
		return true
	}
	if parent, ok := strings.CutPrefix(host, "*."); ok && !p.ungrouped[parent] {
		p.ungrouped[parent] = true
		return true
	}
	return false
}

// normalized is the intent of a key as Decide normalizes it.
func (k tupleKey) normalized() normalized {
	n := normalized{agent: "-", method: k.method, kind: k.kind, host: k.host, port: k.port, path: k.path, transport: k.transport}
	n.resource = n.host + n.path
	return n
}

func (k tupleKey) request(agent string) Request {
	return Request{AgentID: agent, Method: k.method, Host: k.host, Port: k.port, Path: k.path, Transport: k.transport}
}

func describeKey(k tupleKey) string {
	n := k.normalized()
	return describe(&n)
}

// check proves the suggestion: every covered intent is allowed under it, every excluded one denied.
func (s *Suggester) check(set *Set, rules *Rules) error {
	lim, err := Config{}.parse()
	if err != nil {
		return err
	}
	e := &Engine{mapping: MappingConfig{DefaultProtected: true}, lim: lim, sessions: NewSessions(1), log: zerolog.Nop(), now: time.Now}
	e.active.Store(e.newState(set, rules))
	ctx := context.Background()
	for _, t := range s.tuples {
		d, err := e.Decide(ctx, t.key.request(s.opt.AgentID))
		if err != nil {
			return err
		}
		if !d.Outcome.Allowed() {
			return fmt.Errorf("suggest: internal error: the suggestion does not allow %s (%s: %s)", describeKey(t.key), d.Outcome, d.Reason)
		}
	}
	for k := range s.exTuples {
		d, err := e.Decide(ctx, k.request(s.opt.AgentID))
		if err != nil {
			return err
		}
		if d.Outcome.Allowed() {
			return fmt.Errorf("suggest: internal error: the suggestion allows the excluded %s", describeKey(k))
		}
	}
	return nil
}

// notes are what the operator should look at before enforcing.
func (s *Suggester) notes(grants []*grant) []string {
	var out []string
	if s.records == 0 {
		out = append(out, fmt.Sprintf("no decision of agent %q in the records: the suggestion permits nothing", s.opt.AgentID))
	}
	if s.left > 0 {
		out = append(out, fmt.Sprintf("%d request(s) denied in enforce mode are not covered (--include-denied covers them)", s.left))
	}
	if s.malformed > 0 {
		out = append(out, fmt.Sprintf("%d malformed request(s) are not covered", s.malformed))
	}
	if s.oddMethods > 0 {
		out = append(out, fmt.Sprintf("%d request(s) with a method a rule cannot name are not covered", s.oddMethods))
	}
	for _, g := range grants {
		if ids := g.forbids(); len(ids) > 0 {
			out = append(out, fmt.Sprintf("the policy in force forbade some of what %s permits (%s): review it, or --exclude the host",
				g.id(s.opt.AgentID), strings.Join(ids, ", ")))
		}
	}
	return out
}

// forbids are the policies that refused some of a grant's intents when they were recorded.
func (g *grant) forbids() []string {
	var out []string
	for _, t := range g.tuples {
		for id := range t.forbidden {
			if !slices.Contains(out, id) {
				out = append(out, id)
			}
		}
	}
	sort.Strings(out)
	return out
}

// id is a grant's policy id: stable across runs, unique in a policy set.
func (g *grant) id(agent string) string {
	return fmt.Sprintf("%s: %s %s %s%s", agent, kindName(g.kind), g.class, g.host, g.path)
}

func kindName(k intentKind) string {
	switch k {
	case intentDNS:
		return "DNS"
	case intentConnect:
		return "CONNECT"
	}
	return "HTTP"
}
