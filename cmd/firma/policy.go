package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/policies"
)

const policyUsage = `usage:
  firma policy validate [-c firma.toml] [--schema FILE] [-v] [DIR|FILE…]
      Parse and validate policy dirs, .cedar files (one set), mapping-rules .toml files and
      .cedarschema files. No arguments: the policy dir, schema and rules of -c, or the embedded
      defaults. Exit 1 naming file:line:col of every problem.
  firma policy test [-c firma.toml] [--policy-dir DIR] [--schema FILE] [--rules FILE]
                    [--default-protected true|false] [-v] FIXTURE…
      Decide every [[case]] of the fixture files and compare with its expectation (outcome,
      reason, action class, policy ids, the fields that decided). Cases carry request content
      (body, body_file, context.json, context.headers, context.body_size) and session state; the
      cases of a file run in order, each seeing what the earlier ones did in its session. The
      policy set is the fixture file's own setup unless -c or a flag names another. Exit 1 on a
      mismatch, printing the decision and the policy ids.
  firma policy schema
      Print the embedded firma.cedarschema: every action class and context attribute a policy
      may use, and the starting point of a replacement schema.
  firma policy suggest --agent ID [--exclude HOST]… [--out DIR] [-c firma.toml] [AUDIT…]
      Turn what an agent did (in monitor mode, or allowed) into a reviewable mapping-rules.toml
      and <agent>.cedar that allow exactly that, generalized where the records support it.
  firma policy replay --policy DIR --rules FILE [--baseline-policy DIR] [--json] [AUDIT…]
      Judge the recorded decisions again under a candidate policy and print what would change,
      by host and action class. Exit 1 when something would change, 0 when nothing does.`

// policySubcommands are the subcommands of `firma policy`.
var policySubcommands = map[string]func([]string, io.Writer, io.Writer) error{
	"validate": policyValidateCmd,
	"test":     policyTestCmd,
	"schema":   policySchemaCmd,
	"suggest":  policySuggestCmd,
	"replay":   policyReplayCmd,
}

// policyCmd is `firma policy validate|test|schema|suggest|replay`.
func policyCmd(args []string, stdout, stderr io.Writer) error {
	return subcommands(args, stdout, stderr, policyUsage, policySubcommands)
}

// policyConfig reads [sidecar.policy] and [sidecar.mapping] from firma.toml.
func policyConfig(path string) (policies.Config, policies.MappingConfig, error) {
	cfg, err := loadConfig(path)
	if err != nil {
		return policies.Config{}, policies.MappingConfig{}, err
	}
	return cfg.Sidecar.PolicyConfig(), cfg.Sidecar.Mapping, nil
}

// printProblems writes a load error one problem per line, so each names its file and position.
func printProblems(w io.Writer, err error) {
	var le *policies.LoadError
	if errors.As(err, &le) {
		for _, p := range le.Problems {
			fmt.Fprintln(w, p.String())
		}
		return
	}
	fmt.Fprintln(w, err)
}

func policyValidateCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("policy validate", policyUsage)
	cfgPath := fs.String("c", "", "firma.toml: validate its [sidecar.policy] and [sidecar.mapping] files (default $"+configEnv+", else "+systemConfigPath+" when it exists)")
	schemaPath := fs.String("schema", "", "schema to validate against (default: -c's, else the embedded one)")
	verbose := fs.Bool("v", false, "list every policy and rule")
	targets, err := parseInterleaved(fs, args, stdout, stderr)
	if err != nil {
		return err
	}
	var cfg policies.Config
	var mapping policies.MappingConfig
	if len(targets) == 0 {
		*cfgPath = optionalConfigPath(*cfgPath)
	}
	if *cfgPath != "" {
		if cfg, mapping, err = policyConfig(*cfgPath); err != nil {
			return err
		}
	}
	if *schemaPath != "" {
		cfg.Schema = *schemaPath
	}
	schema := policies.EmbeddedSchema()
	if cfg.Schema != "" {
		if schema, err = policies.LoadSchema(cfg.Schema); err != nil {
			printProblems(stderr, err)
			return exitCode(1)
		}
		fmt.Fprintf(stdout, "ok  %s: schema, %d action classes\n", cfg.Schema, len(schema.ActionClasses()))
	}
	if len(targets) == 0 {
		targets = []string{cfg.Dir, mapping.RulesPath}
		if cfg.Dir == "" {
			targets[0] = "(embedded policies)"
		}
		if mapping.RulesPath == "" {
			targets[1] = "(embedded rules)"
		}
	}

	failed := false
	report := func(name string, err error, ok string) {
		if err != nil {
			failed = true
			printProblems(stderr, err)
			return
		}
		fmt.Fprintf(stdout, "ok  %s: %s\n", name, ok)
	}
	showSet := func(set *policies.Set) {
		if *verbose {
			for _, p := range set.Policies() {
				fmt.Fprintf(stdout, "    %-40s %s %s:%d:%d\n", p.ID, p.Effect, p.File, p.Line, p.Column)
			}
		}
	}
	showRules := func(rs *policies.Rules) {
		if *verbose {
			for _, r := range rs.All() {
				fmt.Fprintf(stdout, "    %s\n", r)
			}
		}
	}
	var cedarFiles []string
	for _, t := range targets {
		switch {
		case t == "(embedded policies)":
			set, err := policies.ParseFiles(policies.EmbeddedPolicyFiles(), schema)
			if err == nil {
				report(t, nil, fmt.Sprintf("%d policies, version %s", set.Len(), short(set.Version())))
				showSet(set)
			} else {
				report(t, err, "")
			}
		case t == "(embedded rules)":
			rs, err := policies.ParseRules("mapping-rules.toml (embedded)", policies.EmbeddedRulesText(), schema)
			if err == nil {
				report(t, nil, fmt.Sprintf("%d mapping rules", len(rs.All())))
				showRules(rs)
			} else {
				report(t, err, "")
			}
		case strings.HasSuffix(t, ".cedar"):
			cedarFiles = append(cedarFiles, t)
		case strings.HasSuffix(t, ".toml"):
			rs, err := policies.LoadRules(t, schema)
			if err == nil {
				report(t, nil, fmt.Sprintf("%d mapping rules", len(rs.All())))
				showRules(rs)
			} else {
				report(t, err, "")
			}
		case strings.HasSuffix(t, ".cedarschema"):
			s, err := policies.LoadSchema(t)
			if err == nil {
				report(t, nil, fmt.Sprintf("schema, %d action classes", len(s.ActionClasses())))
			} else {
				report(t, err, "")
			}
		default:
			info, err := os.Stat(t)
			if err != nil {
				report(t, err, "")
				continue
			}
			if !info.IsDir() {
				report(t, fmt.Errorf("%s: not a directory, .cedar, .toml or .cedarschema file", t), "")
				continue
			}
			set, err := policies.LoadDir(t, schema)
			if err == nil {
				report(t, nil, fmt.Sprintf("%d policies, version %s", set.Len(), short(set.Version())))
				showSet(set)
			} else {
				report(t, err, "")
			}
		}
	}
	if len(cedarFiles) > 0 {
		set, err := policies.LoadFiles(cedarFiles, schema)
		if err == nil {
			report(strings.Join(cedarFiles, " "), nil, fmt.Sprintf("%d policies, version %s", set.Len(), short(set.Version())))
			showSet(set)
		} else {
			report(strings.Join(cedarFiles, " "), err, "")
		}
	}
	if failed {
		return exitCode(1)
	}
	return nil
}

func short(version string) string {
	if len(version) > 12 {
		return version[:12]
	}
	return version
}

func policyTestCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("policy test", policyUsage)
	cfgPath := fs.String("c", "", "firma.toml: test its [sidecar.policy] and [sidecar.mapping] instead of the fixtures' setup")
	dir := fs.String("policy-dir", "", "policy directory (overrides the fixture and -c)")
	schema := fs.String("schema", "", "schema file (overrides the fixture and -c)")
	rules := fs.String("rules", "", "mapping rules file (overrides the fixture and -c)")
	protected := fs.String("default-protected", "", "true or false (overrides the fixture and -c)")
	verbose := fs.Bool("v", false, "print every case, not only failures")
	files, err := parseInterleaved(fs, args, stdout, stderr)
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return fmt.Errorf("%w: no fixture files\n%s", errUsage, policyUsage)
	}
	var protectedVal *bool
	if *protected != "" {
		v, err := strconv.ParseBool(*protected)
		if err != nil {
			return fmt.Errorf("%w: --default-protected %q: want true or false", errUsage, *protected)
		}
		protectedVal = &v
	}
	var fromConfig *struct {
		cfg     policies.Config
		mapping policies.MappingConfig
	}
	if *cfgPath != "" {
		c, m, err := policyConfig(*cfgPath)
		if err != nil {
			return err
		}
		fromConfig = &struct {
			cfg     policies.Config
			mapping policies.MappingConfig
		}{c, m}
	}

	total, failed := 0, 0
	for _, path := range files {
		f, err := policies.LoadFixtures(path)
		if err != nil {
			printProblems(stderr, err)
			return exitCode(1)
		}
		cfg, mapping := f.Setup()
		if fromConfig != nil {
			cfg, mapping = fromConfig.cfg, fromConfig.mapping
		}
		if *dir != "" {
			cfg.Dir = *dir
		}
		if *schema != "" {
			cfg.Schema = *schema
		}
		if *rules != "" {
			mapping.RulesPath = *rules
		}
		if protectedVal != nil {
			mapping.DefaultProtected = *protectedVal
		}
		e, err := policies.New(cfg, mapping, zerolog.Nop())
		if err != nil {
			fmt.Fprintf(stderr, "%s: setting up the policy set:\n", path)
			printProblems(stderr, err)
			return exitCode(1)
		}
		results, err := f.Run(context.Background(), e)
		if err != nil {
			return err
		}
		for _, r := range results {
			total++
			loc := fmt.Sprintf("%s:%d", filepath.Clean(path), r.Case.Line)
			if r.OK() {
				if *verbose {
					fmt.Fprintf(stdout, "PASS %s: %s\n", loc, r.Case.Name)
				}
				continue
			}
			failed++
			fmt.Fprintf(stdout, "FAIL %s: %s: %s\n     got %s\n", loc, r.Case.Name, strings.Join(r.Mismatch, "; "), r.Describe())
		}
	}
	fmt.Fprintf(stdout, "%d cases, %d failed\n", total, failed)
	if failed > 0 {
		return exitCode(1)
	}
	return nil
}

func policySchemaCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("policy schema", policyUsage)
	rest, err := parseInterleaved(fs, args, stdout, stderr)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return fmt.Errorf("%w: policy schema takes no arguments\n%s", errUsage, policyUsage)
	}
	_, err = stdout.Write(policies.EmbeddedSchema().Source())
	return err
}
