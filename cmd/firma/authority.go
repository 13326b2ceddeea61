package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/openfirma/firma/authority"
	"github.com/openfirma/firma/policies"
)

const authorityUsage = `usage:
  firma authority generate-key -o FILE
  firma authority [-c firma.toml] [--log-format text|json] [serve]
  firma authority [-c firma.toml] issue --agent-id ID --session-id ID --action CLASS [--action CLASS…]
        --resource-scope GLOB --ttl-seconds N [--output FILE]
  firma authority [-c firma.toml] revoke TOKEN_ID [--reason TEXT]

Runs from the [authority] section; 'firma authority SUBCOMMAND --help' describes each.`

// authorityCmd is `firma authority …`: key generation, issuance, revocation, and the server.
func authorityCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("authority", authorityUsage)
	configFlagValue := configFlag(fs)
	logFormatFlag := fs.String("log-format", "", "serve: text or json (default [authority] log_format, else text)")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	sub, rest := "serve", fs.Args()
	if len(rest) > 0 {
		sub, rest = rest[0], rest[1:]
	}
	if sub == "generate-key" {
		if *configFlagValue != "" {
			return fmt.Errorf("%w: generate-key takes no -c", errUsage)
		}
		return authorityGenerateKey(rest, stdout, stderr)
	}
	if sub == "serve" {
		sfs := newFlagSet("authority serve", "usage: firma authority [-c firma.toml] [--log-format text|json] serve\n\n"+
			"Serves signed policy bundles and revocations on [authority] listen_addr until SIGTERM.")
		if err := parseFlags(sfs, rest, stdout, stderr); err != nil {
			return err
		}
		if sfs.NArg() > 0 {
			return fmt.Errorf("%w: unexpected arguments %q", errUsage, sfs.Args())
		}
	}
	if err := checkLogFormat("--log-format", *logFormatFlag); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	configPath := configPath(*configFlagValue)
	if sub == "issue" || sub == "revoke" {
		if err := helpOnly(sub, rest, stdout, stderr); err != nil {
			return err
		}
	}
	fc, err := loadAuthorityConfig(configPath)
	if err != nil {
		return err
	}
	cfg := &fc.Authority.Config
	switch sub {
	case "serve":
		return authorityServe(cfg, configPath, logFormat(*logFormatFlag, fc.Authority.LogFormat), stderr)
	case "issue":
		return authorityIssue(cfg, configPath, rest, stdout, stderr)
	case "revoke":
		return authorityRevoke(cfg, configPath, rest, stdout, stderr)
	}
	return fmt.Errorf("%w: unknown subcommand %q\n%s", errUsage, sub, authorityUsage)
}

// helpOnly lets `firma authority issue|revoke --help` answer before a config is read: both parse
// their flags before they use the config.
func helpOnly(sub string, args []string, stdout, stderr io.Writer) error {
	for _, a := range args {
		switch a {
		case "-h", "-help", "--help":
			if sub == "issue" {
				return authorityIssue(nil, "", []string{a}, stdout, stderr)
			}
			return authorityRevoke(nil, "", []string{a}, stdout, stderr)
		case "--":
			return nil
		}
	}
	return nil
}

// loadAuthorityConfig reads firma.toml and checks its [authority] section.
func loadAuthorityConfig(path string) (*fileConfig, error) {
	fc, err := loadConfig(path)
	if err != nil {
		return nil, err
	}
	if !fc.has["authority"] {
		return nil, fmt.Errorf("%s: no [authority] section", path)
	}
	if err := fc.validateAuthority(); err != nil {
		return nil, err
	}
	return fc, nil
}

func authorityGenerateKey(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("authority generate-key", "usage: firma authority generate-key -o FILE\n\n"+
		"Creates the authority's Ed25519 signing key (0600) and its public key (FILE.pub), which sidecars\n"+
		"name in [sidecar.authority] public_key_path. An existing file is never overwritten.")
	out := fs.String("o", "", "private key file to create (the public key goes to FILE.pub)")
	fs.StringVar(out, "output", "", "same as -o")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	if *out == "" || fs.NArg() > 0 {
		return fmt.Errorf("%w: generate-key -o FILE", errUsage)
	}
	pub, err := authority.GenerateKey(*out)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (0600) and %s; key id %s\n", *out, authority.PublicKeyPath(*out), authority.KeyID(pub))
	return nil
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func authorityIssue(cfg *authority.Config, configPath string, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("authority issue", "usage: firma authority [-c firma.toml] issue --agent-id ID --session-id ID --action CLASS [--action CLASS…]\n"+
		"        --resource-scope GLOB --ttl-seconds N [--output FILE]\n\n"+
		"Issues a capability if [authority] issuance_policy_dir permits it, signed with key_file.")
	agentID := fs.String("agent-id", "", "agent the capability is for")
	sessionID := fs.String("session-id", "", "session id (e.g. $(uuidgen))")
	var actions listFlag
	fs.Var(&actions, "action", "action class to grant (repeatable)")
	scope := fs.String("resource-scope", "", "host+path glob, e.g. '*.anthropic.com*'")
	ttl := fs.Int64("ttl-seconds", 0, "lifetime; clamped to max_ttl_seconds")
	output := fs.String("output", "", "capability file to write (0600); default: stdout")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	var missing []string
	for _, f := range []struct{ name, v string }{
		{"--agent-id", *agentID}, {"--session-id", *sessionID}, {"--resource-scope", *scope},
	} {
		if f.v == "" {
			missing = append(missing, f.name)
		}
	}
	if len(actions) == 0 {
		missing = append(missing, "--action")
	}
	if *ttl <= 0 {
		missing = append(missing, "--ttl-seconds (positive)")
	}
	if len(missing) > 0 || fs.NArg() > 0 {
		return fmt.Errorf("%w: issue needs %s", errUsage, strings.Join(missing, ", "))
	}
	if err := cfg.RequireIssue(); err != nil {
		return fmt.Errorf("%s: %w", configPath, err)
	}
	key, err := authority.LoadPrivateKey(cfg.KeyFile)
	if err != nil {
		return fmt.Errorf("authority key: %w", err)
	}
	var schema *policies.Schema
	if cfg.Schema != "" {
		if schema, err = policies.LoadSchema(cfg.Schema); err != nil {
			return err
		}
	}
	issuer, err := authority.NewIssuer(key, cfg.IssuancePolicyDir, schema, cfg.MaxTTL())
	if err != nil {
		return err
	}
	issued, err := issuer.Issue(authority.IssueRequest{
		AgentID:       *agentID,
		SessionID:     *sessionID,
		Actions:       actions,
		ResourceScope: *scope,
		TTL:           time.Duration(*ttl) * time.Second,
	})
	if err != nil {
		return err
	}
	c := issued.Claims
	if issued.Clamped {
		fmt.Fprintf(stderr, "firma authority: --ttl-seconds %d exceeds max_ttl_seconds %d; clamped to %d\n",
			*ttl, cfg.MaxTTLSeconds, cfg.MaxTTLSeconds)
	}
	if *output == "" || *output == "-" {
		data, err := issued.File().Marshal()
		if err != nil {
			return err
		}
		_, err = stdout.Write(data)
		return err
	}
	if err := authority.WriteCapabilityFile(*output, issued.File()); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "issued capability %s for %s (%s on %s), expires %s; wrote %s\n",
		c.TokenID, c.AgentID, strings.Join(c.ActionSet, ", "), c.ResourceScope,
		c.Expires.UTC().Format(time.RFC3339), *output)
	return nil
}

func authorityRevoke(cfg *authority.Config, configPath string, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("authority revoke", "usage: firma authority [-c firma.toml] revoke TOKEN_ID [--reason TEXT]\n\n"+
		"Appends the token id to [authority] revocation_file; the authority serves it to sidecars.")
	reason := fs.String("reason", "", "why (recorded in the revocation file)")
	// Accept the token id before or after --reason.
	var tokenID string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		tokenID, args = args[0], args[1:]
	}
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	if tokenID == "" && fs.NArg() == 1 {
		tokenID = fs.Arg(0)
	} else if fs.NArg() > 0 {
		return fmt.Errorf("%w: revoke TOKEN_ID [--reason TEXT]", errUsage)
	}
	if tokenID == "" {
		return fmt.Errorf("%w: revoke TOKEN_ID [--reason TEXT]", errUsage)
	}
	if !authority.ValidID(tokenID) {
		return fmt.Errorf("%w: %q is not a token id", errUsage, tokenID)
	}
	if err := cfg.RequireRevoke(); err != nil {
		return fmt.Errorf("%s: %w", configPath, err)
	}
	if err := authority.AppendRevocation(cfg.RevocationFile, authority.Revocation{TokenID: tokenID, Reason: *reason}); err != nil {
		return fmt.Errorf("revoking %s: %w", tokenID, err)
	}
	fmt.Fprintf(stdout, "revoked %s in %s\n", tokenID, cfg.RevocationFile)
	return nil
}

func authorityServe(cfg *authority.Config, configPath, logFormat string, stderr io.Writer) error {
	if err := cfg.RequireServe(); err != nil {
		return fmt.Errorf("%s: %w", configPath, err)
	}
	log, err := newLogger(stderr, cfg.LogLevel, logFormat, "authority")
	if err != nil {
		return fmt.Errorf("%s: authority.log_level: %w", configPath, err)
	}
	key, err := authority.LoadPrivateKey(cfg.KeyFile)
	if err != nil {
		return fmt.Errorf("authority key: %w", err)
	}
	srv, err := authority.NewServer(*cfg, key, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	return srv.ListenAndServe(ctx)
}
