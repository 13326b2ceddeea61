package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/daemon/judge"
	"github.com/openfirma/firma/internal/keyfile"
	"github.com/openfirma/firma/policies"
)

// multiFlag is a flag that may be given several times.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// auditSource is how the learn commands read audit records: the files given (any order, rotated
// ones too; "-" is stdin), else the log of -c; in any format `firma audit verify` reads.
type auditSource struct {
	cfg       *string
	format    *string
	host, app *string
}

func addAuditSource(fs *flag.FlagSet) *auditSource {
	return &auditSource{
		cfg:    configFlag(fs),
		format: fs.String("format", "auto", "how the input carries the records: file (the log files), journal (journalctl -o cat|json|short), syslog, auto"),
		host:   fs.String("host", "", "journal/syslog: only records sent from this host name"),
		app:    fs.String("app", "", "journal/syslog: only records with this APP-NAME / SYSLOG_IDENTIFIER"),
	}
}

// read calls fn with every record of the source, in chain order.
func (s *auditSource) read(args []string, fn func(audit.Record) error) error {
	format, err := audit.ParseFormat(*s.format)
	if err != nil {
		return fmt.Errorf("%w: --format: %w", errUsage, err)
	}
	files := append([]string(nil), args...)
	if len(files) == 0 {
		if files, err = configuredAuditFiles(*s.cfg); err != nil {
			return err
		}
	}
	spooled, err := spoolDash(files)
	if err != nil {
		return err
	}
	if spooled != "" {
		defer os.Remove(spooled)
	}
	return audit.Read(audit.VerifyOptions{Format: format, Host: *s.host, App: *s.app}, files, fn)
}

const suggestUsage = `usage: firma policy suggest --agent ID [--exclude HOST]… [--out DIR] [--include-denied]
                            [--schema FILE] [-c firma.toml] [--format F] [--host H] [--app A] [AUDIT…]

Reads the agent's decision records — what it did in monitor mode, allowed or not, and what enforce
mode allowed — and writes a reviewable policy for it into DIR: mapping-rules.toml (classifies what
the agent did) and <agent>.cedar (permits it), every rule and permit commented with how many requests
it covers and an example. Hosts seen two or more under one parent become "*.parent" (never over a
public suffix), paths two or more under one prefix "prefix/*"; classes are the ones the records
carry, else chosen from the schema's registry and marked for review. --exclude HOST (a name or
"*.domain") leaves a host's records out and forbids it. The files validate, and allow every covered
record; suggest checks that before writing them. It replaces files it wrote before, never others.

AUDIT is the audit log: its files in any order (the live file and its rotations), or a journal or
syslog export ("-" reads stdin). Without AUDIT, the log of -c. Check it with firma audit verify
first: suggest trusts what it reads.`

// policySuggestCmd is `firma policy suggest`.
func policySuggestCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("policy suggest", suggestUsage)
	src := addAuditSource(fs)
	agent := fs.String("agent", "", "the agent whose records to read (required)")
	var exclude multiFlag
	fs.Var(&exclude, "exclude", "a host (or *.domain) the agent must not reach: its records are not covered, and it is forbidden (repeatable)")
	out := fs.String("out", ".", "directory to write mapping-rules.toml and <agent>.cedar into (created if missing)")
	schemaPath := fs.String("schema", "", "schema the action classes come from (default: -c's, else the embedded one)")
	includeDenied := fs.Bool("include-denied", false, "also cover what enforce mode denied")
	files, err := parseInterleaved(fs, args, stdout, stderr)
	if err != nil {
		return err
	}
	if *agent == "" {
		return fmt.Errorf("%w: --agent is required\n%s", errUsage, suggestUsage)
	}
	schema, err := learnSchema(*schemaPath, *src.cfg, len(files) == 0)
	if err != nil {
		return err
	}
	s, err := policies.NewSuggester(policies.SuggestOptions{AgentID: *agent, Exclude: exclude, Schema: schema, IncludeDenied: *includeDenied})
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	err = src.read(files, func(r audit.Record) error {
		if o, skip, ok := judge.Observed(r); ok && skip == "" {
			s.Add(o)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sug, err := s.Suggest()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	written := map[string][]byte{policies.RulesFileName: sug.Rules, sug.PolicyFile: sug.Policy}
	for _, name := range []string{policies.RulesFileName, sug.PolicyFile} {
		path := filepath.Join(*out, name)
		old, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		switch by, ok := policies.SuggestedFor(old); {
		case !ok:
			return fmt.Errorf("%s exists and was not written by firma policy suggest: not replacing it (choose another --out)", path)
		case by != *agent:
			return fmt.Errorf("%s was suggested for agent %q: not replacing it with agent %q's (choose another --out)", path, by, *agent)
		}
	}
	for _, name := range []string{policies.RulesFileName, sug.PolicyFile} {
		if err := keyfile.WriteAtomic(filepath.Join(*out, name), written[name], 0o644); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "wrote %s and %s: %d of agent %s's %d decision records covered, %d excluded\n",
		filepath.Join(*out, policies.RulesFileName), filepath.Join(*out, sug.PolicyFile), sug.Covered, *agent, sug.Records, sug.Excluded)
	for _, n := range sug.Notes {
		fmt.Fprintf(stderr, "note: %s\n", n)
	}
	fmt.Fprintf(stdout, "review them, then: firma policy validate %s %s\n", *out, filepath.Join(*out, policies.RulesFileName))
	return nil
}

// learnSchema is --schema, else -c's [sidecar.policy] schema (when -c or $FIRMA_CONFIG names a
// file, or the audit log comes from it), else nil: the embedded schema.
func learnSchema(flagValue, cfgFlag string, needConfig bool) (*policies.Schema, error) {
	path := flagValue
	if path == "" {
		cfgPath := optionalConfigPath(cfgFlag)
		if needConfig {
			cfgPath = configPath(cfgFlag)
		}
		if cfgPath != "" {
			cfg, _, err := policyConfig(cfgPath)
			if err != nil {
				return nil, err
			}
			path = cfg.Schema
		}
	}
	if path == "" {
		return nil, nil
	}
	return policies.LoadSchema(path)
}

const replayUsage = `usage: firma policy replay --policy DIR --rules FILE [--schema FILE] [--default-protected true|false]
                           [--baseline-policy DIR --baseline-rules FILE] [--agent ID] [--json] [--strict]
                           [-c firma.toml] [--format F] [--host H] [--app A] [AUDIT…]

Judges every recorded decision again under the candidate policy (DIR's .cedar files and the rules
FILE), as the sidecar would with capabilities (Stage 1) off, in chain order so that session state
is rebuilt, and prints what would change — newly denied, newly allowed, outcome changed — by host
and action class, with a count and an example each. It compares with the recorded outcome (in
monitor mode, what enforce mode would have done), or with --baseline-policy/--baseline-rules
judged the same way. Records it cannot judge again are listed with why: the sidecar's own and the
kernel's refusals, and decisions whose policies read content a record does not carry (the body,
headers). -c supplies [sidecar.policy] (git hosts, max_body_bytes…), [sidecar.mapping]
default_protected and, without flags, the policy dir and rules; AUDIT is read as by policy suggest.

Exit status: 0 nothing would change, 1 something would (or, with --strict, a record could not be
replayed), 2 the replay could not run (usage, unreadable log, invalid policy).`

// policyReplayCmd is `firma policy replay`.
func policyReplayCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("policy replay", replayUsage)
	src := addAuditSource(fs)
	dir := fs.String("policy", "", "candidate policy directory (default: -c's [sidecar.policy] dir)")
	rules := fs.String("rules", "", "candidate mapping rules (default: -c's [sidecar.mapping] rules_path)")
	schema := fs.String("schema", "", "schema file (default: -c's, else the embedded one)")
	protected := fs.String("default-protected", "", "true or false (default: -c's, else true)")
	baseDir := fs.String("baseline-policy", "", "compare with this policy directory instead of the recorded outcomes")
	baseRules := fs.String("baseline-rules", "", "the baseline's mapping rules (default: the candidate's)")
	agent := fs.String("agent", "", "replay only this agent's records")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	strict := fs.Bool("strict", false, "exit 1 when a record cannot be replayed, too")
	files, err := parseInterleaved(fs, args, stdout, stderr)
	if err != nil {
		return err
	}
	cfg, mapping := policies.Config{}, policies.DefaultMappingConfig()
	cfgPath := optionalConfigPath(*src.cfg)
	if *dir == "" || *rules == "" || len(files) == 0 {
		cfgPath = configPath(*src.cfg)
	}
	if cfgPath != "" {
		if cfg, mapping, err = policyConfig(cfgPath); err != nil {
			return cannotRun(stderr, err)
		}
	}
	if *dir != "" {
		cfg.Dir = *dir
	}
	if *rules != "" {
		mapping.RulesPath = *rules
	}
	if *schema != "" {
		cfg.Schema = *schema
	}
	if *protected != "" {
		v, err := strconv.ParseBool(*protected)
		if err != nil {
			return fmt.Errorf("%w: --default-protected %q: want true or false", errUsage, *protected)
		}
		mapping.DefaultProtected = v
	}
	if cfg.Dir == "" || mapping.RulesPath == "" {
		return fmt.Errorf("%w: give --policy and --rules (or -c with [sidecar.policy] dir and [sidecar.mapping] rules_path)\n%s", errUsage, replayUsage)
	}
	candidate, err := policies.New(cfg, mapping, zerolog.Nop())
	if err != nil {
		printProblems(stderr, err)
		return exitCode(2)
	}
	var opt policies.ReplayOptions
	if *baseDir != "" || *baseRules != "" {
		bcfg, bmapping := cfg, mapping
		if *baseDir != "" {
			bcfg.Dir = *baseDir
		}
		if *baseRules != "" {
			bmapping.RulesPath = *baseRules
		}
		if opt.Baseline, err = policies.New(bcfg, bmapping, zerolog.Nop()); err != nil {
			fmt.Fprintln(stderr, "baseline:")
			printProblems(stderr, err)
			return exitCode(2)
		}
	}
	r := policies.NewReplayer(candidate, opt)
	ctx := context.Background()
	err = src.read(files, func(rec audit.Record) error {
		o, skip, ok := judge.Observed(rec)
		switch {
		case !ok:
		case *agent != "" && rec.Event.Envelope.Agent.AgentID != *agent:
		case skip != "":
			r.Skip(rec.Where(), skip)
		default:
			return r.Add(ctx, o)
		}
		return nil
	})
	if err != nil {
		return cannotRun(stderr, err)
	}
	rep := r.Report()
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		writeReplay(stdout, rep, cfg.Dir, mapping.RulesPath)
	}
	if rep.Changed() > 0 || *strict && len(rep.NotReplayed) > 0 {
		return exitCode(1)
	}
	return nil
}

// cannotRun reports why the replay could not run, and exits 2 (exit 1 means a change).
func cannotRun(stderr io.Writer, err error) error {
	fmt.Fprintf(stderr, "firma policy replay: %v\n", err)
	return exitCode(2)
}

// writeReplay prints a replay report for people.
func writeReplay(w io.Writer, rep *policies.ReplayReport, dir, rules string) {
	fmt.Fprintf(w, "replayed %d of %d decision records under %s and %s, against the %s\n",
		rep.Replayed, rep.Decisions, dir, rules, rep.Against)
	var current policies.Change
	for _, g := range rep.Changes {
		if g.Change != current {
			current = g.Change
			n := 0
			for _, h := range rep.Changes {
				if h.Change == current {
					n += h.Count
				}
			}
			fmt.Fprintf(w, "\n%s: %d %s\n", current, n, plural("decision", n))
		}
		class := g.ActionClass
		if class == "" {
			class = "(unclassified)"
		}
		ex := g.Example
		fmt.Fprintf(w, "  %-6d %s  %s  (agents: %s)\n", g.Count, g.Host, class, strings.Join(g.Agents, ", "))
		fmt.Fprintf(w, "         e.g. %s (seq %d), agent %s: %s\n", ex.Where, ex.Seq, ex.Agent, ex.Request)
		now := ex.NowReason
		if len(ex.NowPolicies) > 0 {
			now += " [" + strings.Join(ex.NowPolicies, ", ") + "]"
		}
		fmt.Fprintf(w, "         was %s (%s), now %s (%s)\n", ex.Was, ex.WasReason, ex.Now, now)
	}
	if len(rep.NotReplayed) > 0 {
		n := 0
		for _, s := range rep.NotReplayed {
			n += s.Count
		}
		fmt.Fprintf(w, "\nnot replayed: %d %s\n", n, plural("decision", n))
		for _, s := range rep.NotReplayed {
			fmt.Fprintf(w, "  %-6d %s (e.g. %s)\n", s.Count, s.Reason, s.Example)
		}
	}
	if c := rep.Changed(); c > 0 {
		fmt.Fprintf(w, "\n%d %s would change\n", c, plural("decision", c))
	} else {
		fmt.Fprintln(w, "\nnothing would change")
	}
}

func plural(word string, n int) string {
	if n == 1 {
		return word
	}
	return word + "s"
}
