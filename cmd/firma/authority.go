package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/openfirma/firma/authority"
	"github.com/openfirma/firma/policies"
)

const authorityUsage = `usage:
  firma authority generate-key -o FILE
  firma authority init-tls --dir DIR [--hosts NAME,ADDR,…] [--sidecars NAME,…] [--auth cert|token|both]
        [--valid-days N]
  firma authority [-c firma.toml] [--log-format text|json] [serve]
  firma authority [-c firma.toml] issue --agent-id ID --session-id ID --action CLASS [--action CLASS…]
        --resource-scope GLOB --ttl-seconds N [--output FILE]
  firma authority [-c firma.toml] revoke TOKEN_ID [--reason TEXT] [--force]

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
	switch sub {
	case "generate-key", "init-tls":
		if *configFlagValue != "" {
			return fmt.Errorf("%w: %s takes no -c", errUsage, sub)
		}
		if sub == "init-tls" {
			return authorityInitTLS(rest, stdout, stderr)
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
	// Record it before handing it out: a token revoke cannot find is a token revoke refuses.
	if path := cfg.IssuedPath(); path != "" {
		if err := authority.RecordIssued(path, issued); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(stderr, "firma authority: warning: neither issued_file nor revocation_file is set; %s is not recorded, and revoking it will need --force\n", c.TokenID)
	}
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
	fs := newFlagSet("authority revoke", "usage: firma authority [-c firma.toml] revoke TOKEN_ID [--reason TEXT] [--force]\n\n"+
		"Appends the token id to [authority] revocation_file; the authority serves it to sidecars. An id\n"+
		"that [authority] issued_file does not record is refused unless --force.")
	reason := fs.String("reason", "", "why (recorded in the revocation file)")
	force := fs.Bool("force", false, "revoke even an id this authority has no record of issuing")
	pos, err := parseInterleaved(fs, args, stdout, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: revoke TOKEN_ID [--reason TEXT] [--force]", errUsage)
	}
	tokenID := pos[0]
	if !authority.ValidID(tokenID) {
		return fmt.Errorf("%w: %q is not a token id", errUsage, tokenID)
	}
	if err := cfg.RequireRevoke(); err != nil {
		return fmt.Errorf("%s: %w", configPath, err)
	}
	recs, _, err := authority.ReadRevocations(cfg.RevocationFile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("reading %s: %w", cfg.RevocationFile, err)
	}
	for _, r := range recs {
		if r.TokenID == tokenID {
			when := ""
			if !r.RevokedAt.IsZero() {
				when = " since " + r.RevokedAt.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(stdout, "%s is already revoked%s in %s\n", tokenID, when, cfg.RevocationFile)
			return nil
		}
	}
	// A mistyped id would otherwise be "revoked" while the real token stays valid.
	issuedPath := cfg.IssuedPath()
	rec, err := authority.FindIssued(issuedPath, tokenID)
	switch {
	case err == nil:
	case !*force && errors.Is(err, authority.ErrNotIssued):
		return fmt.Errorf("token id %s: %w (not in %s); check the id, or pass --force to revoke it anyway", tokenID, err, issuedPath)
	case !*force:
		return fmt.Errorf("token id %s: cannot check that this authority issued it: %w; pass --force to revoke it anyway", tokenID, err)
	default:
		fmt.Fprintf(stderr, "firma authority: warning: %s is not a token this authority recorded issuing (%v); revoking it anyway (--force)\n", tokenID, err)
	}
	if err := authority.AppendRevocation(cfg.RevocationFile, authority.Revocation{TokenID: tokenID, Reason: *reason}); err != nil {
		return fmt.Errorf("revoking %s: %w", tokenID, err)
	}
	if rec != nil {
		fmt.Fprintf(stdout, "revoked %s (agent %s, session %s, expires %s) in %s\n", tokenID, rec.AgentID, rec.SessionID,
			rec.ExpiresAt.UTC().Format(time.RFC3339), cfg.RevocationFile)
	} else {
		fmt.Fprintf(stdout, "revoked %s in %s\n", tokenID, cfg.RevocationFile)
	}
	return nil
}

func authorityInitTLS(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("authority init-tls", "usage: firma authority init-tls --dir DIR [--hosts NAME,ADDR,…] [--sidecars NAME,…]\n"+
		"        [--auth cert|token|both] [--valid-days N]\n\n"+
		"Writes a CA, the authority's TLS certificate and, for each sidecar, a client certificate and/or a\n"+
		"bearer token (its hash added to tokens.toml); keys and tokens 0600 in 0700 directories. Run it\n"+
		"again with new names to add sidecars under the same CA: nothing that exists is overwritten.")
	dir := fs.String("dir", "", "directory for the CA, the authority's certificate and the sidecars' credentials (created 0700)")
	hosts := fs.String("hosts", defaultTLSHosts(), "names and addresses the authority's certificate covers")
	sidecars := fs.String("sidecars", "", "sidecar names to make credentials for (comma-separated)")
	auth := fs.String("auth", "cert", "how sidecars authenticate: cert, token or both")
	days := fs.Int("valid-days", 365, "validity of the authority's and the sidecars' certificates")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	if *dir == "" || fs.NArg() > 0 {
		return fmt.Errorf("%w: init-tls --dir DIR [--hosts …] [--sidecars …]", errUsage)
	}
	opts := authority.InitTLSOptions{
		Dir:      *dir,
		Hosts:    splitList(*hosts),
		Sidecars: splitList(*sidecars),
		Validity: time.Duration(*days) * 24 * time.Hour,
	}
	switch *auth {
	case "cert":
		opts.Certs = true
	case "token":
		opts.Tokens = true
	case "both":
		opts.Certs, opts.Tokens = true, true
	default:
		return fmt.Errorf("%w: --auth %q: want cert, token or both", errUsage, *auth)
	}
	if *days <= 0 {
		return fmt.Errorf("%w: --valid-days must be positive", errUsage)
	}
	res, err := authority.InitTLS(opts)
	if err != nil {
		return err
	}
	for _, f := range res.Written {
		fmt.Fprintf(stdout, "wrote %s\n", f)
	}
	for _, f := range res.Kept {
		fmt.Fprintf(stdout, "kept  %s (already there)\n", f)
	}
	path := func(name string) string { return filepath.Join(*dir, name) }
	fmt.Fprintf(stdout, "\n# firma.toml on the authority (every replica):\n[authority]\nlisten_addr = \"[::]:50051\"\n")
	fmt.Fprintf(stdout, "tls_cert_file = %q\ntls_key_file = %q\n", path(authority.TLSServerCert), path(authority.TLSServerKey))
	if opts.Certs {
		fmt.Fprintf(stdout, "client_ca_file = %q\n", path(authority.TLSCACert))
	}
	if opts.Tokens {
		fmt.Fprintf(stdout, "tokens_file = %q\n", path(authority.TLSTokens))
	}
	for _, name := range opts.Sidecars {
		cert, key, token := authority.SidecarFiles(*dir, name)
		fmt.Fprintf(stdout, "\n# firma.toml on sidecar %s (copy these files there; keys and tokens stay 0600):\n", name)
		fmt.Fprintf(stdout, "[sidecar.authority]\nurls = [\"https://%s:50051\"]\nca_file = %q\n", opts.Hosts[0], path(authority.TLSCACert))
		if opts.Certs {
			fmt.Fprintf(stdout, "client_cert_file = %q\nclient_key_file = %q\n", cert, key)
		}
		if opts.Tokens {
			fmt.Fprintf(stdout, "token_file = %q\n", token)
		}
	}
	fmt.Fprintf(stdout, "\nKeep %s offline once every certificate you need is made.\n", path(authority.TLSCAKey))
	return nil
}

// defaultTLSHosts is what the authority's certificate covers unless --hosts says otherwise: this
// host's name and loopback.
func defaultTLSHosts() string {
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if h, err := os.Hostname(); err == nil && h != "" && h != "localhost" {
		hosts = append([]string{h}, hosts...)
	}
	return strings.Join(hosts, ",")
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
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
