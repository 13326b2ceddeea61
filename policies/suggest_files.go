package policies

// The text Suggest writes: the mapping-rules file and the Cedar file, with their comments.

import (
	"bytes"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// summary is a comment's first line: how many requests, how many monitor mode let through, and an
// example (the most frequent intent).
func summary(ts []*tuple) string {
	count, wouldDeny, denied := 0, 0, 0
	var top *tuple
	for _, t := range ts {
		count += t.count
		wouldDeny += t.wouldDeny
		denied += t.denied
		if top == nil || t.count > top.count || t.count == top.count && describeKey(t.key) < describeKey(top.key) {
			top = t
		}
	}
	what := "request"
	switch top.key.kind {
	case intentDNS:
		what = "lookup"
	case intentConnect:
		what = "connection"
	}
	line := fmt.Sprintf("%d %s", count, plural(what, count))
	switch {
	case wouldDeny > 0 && denied > 0:
		line += fmt.Sprintf(" (%d let through by monitor mode, %d denied)", wouldDeny, denied)
	case wouldDeny > 0:
		line += fmt.Sprintf(" (%d let through by monitor mode)", wouldDeny)
	case denied > 0:
		line += fmt.Sprintf(" (%d denied)", denied)
	}
	return line + ", e.g. " + describeKey(top.key)
}

func plural(word string, n int) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

// exes names the programs behind some intents, most frequent first.
func exes(ts []*tuple) string {
	count := map[string]int{}
	for _, t := range ts {
		for e, n := range t.exes {
			count[e] += n
		}
	}
	names := make([]string, 0, len(count))
	for e := range count {
		names = append(names, e)
	}
	sort.Slice(names, func(i, j int) bool {
		if count[names[i]] != count[names[j]] {
			return count[names[i]] > count[names[j]]
		}
		return names[i] < names[j]
	})
	var parts []string
	for i, e := range names {
		if i == 3 {
			parts = append(parts, fmt.Sprintf("and %d more", len(names)-3))
			break
		}
		if e == "" {
			e = "(unknown)"
		}
		parts = append(parts, fmt.Sprintf("%s (%d)", e, count[e]))
	}
	return strings.Join(parts, ", ")
}

// classNote says where a grant's class came from.
func classNote(ts []*tuple) string {
	if ts[0].why == "" {
		return "action class as the rules in force classified it"
	}
	return fmt.Sprintf("action class chosen by suggest (%s): no rule in force classified it; review it", ts[0].why)
}

// comment writes text as comment lines with prefix, every character that could end the comment
// or confuse a reader escaped: the agent names its hosts, paths and programs.
func comment(b *bytes.Buffer, prefix string, lines ...string) {
	for _, l := range lines {
		b.WriteString(prefix)
		b.WriteString(printable(l))
		b.WriteByte('\n')
	}
}

// printable escapes control characters, invalid UTF-8 and non-ASCII (which could render as
// something else, or reorder the line), keeping the rest.
func printable(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r > 0x7e:
			fmt.Fprintf(&b, `\u{%x}`, r)
		default:
			b.WriteRune(r)
		}
		i += size
	}
	return b.String()
}

// rulesFile writes the mapping rules of grants, and of the excluded hosts.
func (s *Suggester) rulesFile(grants []*grant) []byte {
	var b bytes.Buffer
	comment(&b, "# ", s.header(RulesFileName)...)
	comment(&b, "# ",
		"It classifies what the agent was seen doing and nothing else: use it as [sidecar.mapping] rules_path,",
		"with default_protected = true, so that every other intent is denied as unclassified. On a sidecar",
		"that other agents share, merge it into their rules (two rules with the same method, host and path",
		"are an error).")
	for _, g := range grants {
		for _, m := range g.methods() {
			var ts []*tuple
			for _, t := range g.tuples {
				if t.key.method == m {
					ts = append(ts, t)
				}
			}
			b.WriteByte('\n')
			comment(&b, "# ", summary(ts), classNote(ts))
			b.WriteString("[[rules]]\n")
			fmt.Fprintf(&b, "method = %s\n", tomlString(g.ruleMethod(m)))
			fmt.Fprintf(&b, "host = %s\n", tomlString(g.host))
			if g.path != "" {
				fmt.Fprintf(&b, "path = %s\n", tomlString(g.path))
			}
			fmt.Fprintf(&b, "action_class = %s\n", tomlString(g.class))
			if p := provider(ts); p != "" {
				fmt.Fprintf(&b, "provider = %s\n", tomlString(p))
			}
		}
	}
	for _, pat := range s.excludedPatterns() {
		b.WriteByte('\n')
		comment(&b, "# ", s.excludeNote(pat), "Classified for every kind of intent, so that the forbid in the policy file applies to it.")
		b.WriteString("[[rules]]\nmethod = \"*\"\n")
		fmt.Fprintf(&b, "host = %s\n", tomlString(pat))
		fmt.Fprintf(&b, "action_class = %s\n", tomlString(s.excludeClass()))
	}
	return b.Bytes()
}

// excludedPatterns are the --exclude patterns, sorted.
func (s *Suggester) excludedPatterns() []string {
	out := make([]string, len(s.exclude))
	for i, p := range s.exclude {
		out[i] = p.String()
	}
	sort.Slice(out, func(i, j int) bool { return hostSortKey(out[i]) < hostSortKey(out[j]) })
	return out
}

func (s *Suggester) excludeNote(pat string) string {
	x := s.excluded[pat]
	if x == nil {
		return fmt.Sprintf("Excluded by the operator (--exclude %s): not seen in the records.", pat)
	}
	return fmt.Sprintf("Excluded by the operator (--exclude %s): %d %s seen, e.g. %s.", pat, x.count, plural("intent", x.count), describeKey(x.key))
}

// excludeClass is the class excluded hosts are classified as: any will do, the forbid names no
// action.
func (s *Suggester) excludeClass() string {
	if s.schema.HasActionClass("communication.external.send") {
		return "communication.external.send"
	}
	return s.schema.ActionClasses()[0]
}

// provider is the provider the records of ts name, when they all name the same one.
func provider(ts []*tuple) string {
	p := ""
	for _, t := range ts {
		if len(t.providers) != 1 {
			return ""
		}
		for name, n := range t.providers {
			if n != t.count || p != "" && p != name {
				return ""
			}
			p = name
		}
	}
	return p
}

// header is the first comment lines of both files.
func (s *Suggester) header(file string) []string {
	lines := []string{file + suggestedMark + strconv.QuoteToASCII(s.opt.AgentID)}
	if s.records == 0 {
		return append(lines, "from no decision records.")
	}
	span := fmt.Sprintf("from %d decision %s", s.records, plural("record", s.records))
	if s.firstSeq != 0 {
		span += fmt.Sprintf(", seq %d to %d", s.firstSeq, s.lastSeq)
	}
	if !s.first.IsZero() {
		span += fmt.Sprintf(", %s to %s", s.first.UTC().Format(time.RFC3339), s.last.UTC().Format(time.RFC3339))
	}
	return append(lines, span+".")
}

// policyFile writes the Cedar file: a permit per grant, a forbid per excluded host pattern.
func (s *Suggester) policyFile(name string, grants []*grant) []byte {
	var b bytes.Buffer
	agent := cedarString(s.opt.AgentID)
	comment(&b, "// ", s.header(name)...)
	comment(&b, "// ",
		"Review every permit before you enforce it: each allows what the agent was seen doing, generalized",
		"as its comment says; this file permits the agent nothing else. Names seen two or more under one",
		"parent became \"*.parent\" (exactly one more label), paths seen two or more under one prefix",
		"became \"prefix/*\". Use it with the mapping-rules.toml written beside it.")
	for _, g := range grants {
		b.WriteByte('\n')
		lines := []string{summary(g.tuples), "from " + exes(g.tuples), classNote(g.tuples)}
		if ids := g.forbids(); len(ids) > 0 {
			lines = append(lines, "WARNING: the policy in force forbade some of these ("+strings.Join(ids, ", ")+"): review, or --exclude the host")
		}
		comment(&b, "// ", lines...)
		fmt.Fprintf(&b, "@id(%s)\n", cedarString(g.id(s.opt.AgentID)))
		fmt.Fprintf(&b, "permit (\n    principal == Firma::Agent::%s,\n    action == Firma::Action::%s,\n    resource\n) when {\n", agent, cedarString(g.class))
		conds := []string{hostCondition(g.host, false)}
		switch g.kind {
		case intentDNS:
			conds = append(conds, `resource.method == "DNS"`)
		case intentConnect:
			conds = append(conds, `resource.method == "CONNECT"`)
		default:
			conds = append(conds, pathCondition(g.path), oneOf("resource.method", g.methods(), cedarString))
		}
		if g.kind != intentDNS {
			var ports []string
			for _, t := range g.tuples {
				p := fmt.Sprint(t.key.port)
				if !slices.Contains(ports, p) {
					ports = append(ports, p)
				}
			}
			sort.Slice(ports, func(i, j int) bool {
				return len(ports[i]) < len(ports[j]) || len(ports[i]) == len(ports[j]) && ports[i] < ports[j]
			})
			conds = append(conds, oneOf("resource.port", ports, func(p string) string { return p }))
		}
		b.WriteString("    " + strings.Join(conds, " &&\n    ") + "\n};\n")
	}
	for _, pat := range s.excludedPatterns() {
		b.WriteByte('\n')
		lines := []string{s.excludeNote(pat)}
		if strings.HasPrefix(pat, "*.") {
			lines = append(lines, "Forbids every name below "+pat[2:]+", however deep.")
		}
		comment(&b, "// ", lines...)
		fmt.Fprintf(&b, "@id(%s)\n", cedarString(s.opt.AgentID+": excluded "+pat))
		fmt.Fprintf(&b, "forbid (principal == Firma::Agent::%s, action, resource)\nwhen { %s };\n", agent, hostCondition(pat, true))
	}
	return b.Bytes()
}

// hostCondition is the Cedar condition a host pattern stands for. A one-label wildcard matches
// exactly one more label, as in the rules; deep (for a forbid) matches any number.
func hostCondition(pattern string, deep bool) string {
	suffix, wild := strings.CutPrefix(pattern, "*.")
	if !wild {
		return "resource.host == " + cedarString(pattern)
	}
	one := "resource.host like " + cedarLike("*.", suffix, "")
	if deep {
		return one
	}
	return one + " && !(resource.host like " + cedarLike("*.*.", suffix, "") + ")"
}

// pathCondition is the Cedar condition of a rule's path: exact, or a glob "prefix/*".
func pathCondition(path string) string {
	if prefix, ok := strings.CutSuffix(path, "/*"); ok {
		return "resource.path like " + cedarLike("", prefix+"/", "*")
	}
	return "resource.path == " + cedarString(path)
}

// oneOf is "attr == v" for one value, "[v1, v2].contains(attr)" for more.
func oneOf(attr string, values []string, lit func(string) string) string {
	if len(values) == 1 {
		return attr + " == " + lit(values[0])
	}
	lits := make([]string, len(values))
	for i, v := range values {
		lits[i] = lit(v)
	}
	return "[" + strings.Join(lits, ", ") + "].contains(" + attr + ")"
}

// cedarString is a Cedar string literal.
func cedarString(s string) string {
	return quoted(s, func(r rune) string { return fmt.Sprintf(`\u{%x}`, r) })
}

// tomlString is a TOML basic string.
func tomlString(s string) string {
	return quoted(s, func(r rune) string { return fmt.Sprintf(`\u%04x`, r) })
}

// quoted is s in double quotes with '"' and '\' escaped by a backslash and control characters by
// escape.
func quoted(s string, escape func(rune) string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			b.WriteString(escape(r))
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// cedarLike is a Cedar `like` pattern: the wildcards of pre and post, and lit matched literally
// (its '*'s escaped).
func cedarLike(pre, lit, post string) string {
	q := cedarString(lit)
	return `"` + pre + strings.ReplaceAll(q[1:len(q)-1], "*", `\*`) + post + `"`
}
