package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/authority"
	"github.com/openfirma/firma/internal/logfields"
	"github.com/openfirma/firma/policies"
)

const authorityUsage = `usage:
  firma authority generate-key -o FILE
  firma authority -c firma.toml [serve]
  firma authority -c firma.toml issue --agent-id ID --session-id ID --action CLASS [--action CLASS…]
        --resource-scope GLOB --ttl-seconds N [--output FILE]
  firma authority -c firma.toml revoke TOKEN_ID [--reason TEXT]`

// authorityCmd is `firma authority …`: key generation, issuance, revocation, and the server.
func authorityCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("authority", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintln(stderr, authorityUsage) }
	var configPath string
	fs.StringVar(&configPath, "c", "", "firma.toml")
	fs.StringVar(&configPath, "config", "", "firma.toml")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	sub, rest := "serve", fs.Args()
	if len(rest) > 0 {
		sub, rest = rest[0], rest[1:]
	}
	if sub == "generate-key" {
		if configPath != "" {
			return fmt.Errorf("%w: generate-key takes no -c", errUsage)
		}
		return authorityGenerateKey(rest, stdout, stderr)
	}
	if configPath == "" {
		return fmt.Errorf("%w: -c firma.toml is required\n%s", errUsage, authorityUsage)
	}
	cfg, err := loadAuthorityConfig(configPath)
	if err != nil {
		return err
	}
	switch sub {
	case "serve":
		if len(rest) > 0 {
			return fmt.Errorf("%w: unexpected arguments %q", errUsage, rest)
		}
		return authorityServe(cfg, configPath, stderr)
	case "issue":
		return authorityIssue(cfg, configPath, rest, stdout, stderr)
	case "revoke":
		return authorityRevoke(cfg, configPath, rest, stdout, stderr)
	}
	return fmt.Errorf("%w: unknown subcommand %q\n%s", errUsage, sub, authorityUsage)
}

// loadAuthorityConfig reads firma.toml and checks its [authority] section.
func loadAuthorityConfig(path string) (*authority.Config, error) {
	fc, err := loadConfig(path)
	if err != nil {
		return nil, err
	}
	if !fc.has["authority"] {
		return nil, fmt.Errorf("%s: no [authority] section", path)
	}
	if err := fc.Authority.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &fc.Authority, nil
}

func authorityGenerateKey(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("authority generate-key", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "", "private key file to create (the public key goes to FILE.pub)")
	fs.StringVar(out, "output", "", "same as -o")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("%w: %v", errUsage, err)
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
	fs := flag.NewFlagSet("authority issue", flag.ContinueOnError)
	fs.SetOutput(stderr)
	agentID := fs.String("agent-id", "", "agent the capability is for")
	sessionID := fs.String("session-id", "", "session id (e.g. $(uuidgen))")
	var actions listFlag
	fs.Var(&actions, "action", "action class to grant (repeatable)")
	scope := fs.String("resource-scope", "", "host+path glob, e.g. '*.anthropic.com*'")
	ttl := fs.Int64("ttl-seconds", 0, "lifetime; clamped to max_ttl_seconds")
	output := fs.String("output", "", "capability file to write (0600); default: stdout")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("%w: %v", errUsage, err)
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
	fs := flag.NewFlagSet("authority revoke", flag.ContinueOnError)
	fs.SetOutput(stderr)
	reason := fs.String("reason", "", "why (recorded in the revocation file)")
	// Accept the token id before or after --reason.
	var tokenID string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		tokenID, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("%w: %v", errUsage, err)
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

func authorityServe(cfg *authority.Config, configPath string, stderr io.Writer) error {
	if err := cfg.RequireServe(); err != nil {
		return fmt.Errorf("%s: %w", configPath, err)
	}
	level, _ := zerolog.ParseLevel(cfg.LogLevel) // Validate checked it
	log := zerolog.New(stderr).Level(level).With().Timestamp().Str(logfields.Component, "authority").Logger()
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
