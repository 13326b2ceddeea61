package main

import (
	"context"
	"crypto"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/openfirma/firma/daemon/audit"
)

const auditUsage = `usage:
  firma audit verify [--pubkey audit.pub] [--format auto|file|journal|syslog] [--host H] [--app A] [-c firma.toml | FILE… | -]
      Check the hash chain (and, with --pubkey, every signature) of the audit log, or of its lines as
      exported from journald or a syslog file: exit 0 when every line checks out, 1 naming the first
      altered, dropped or reordered line. "-" reads the export from stdin.
  firma audit tail [-c firma.toml | FILE] [--follow] [--deny] [--agent ID] [--since 15m] [-n N] [--json]
      Print records, human-readable unless --json; --follow keeps printing across rotations.
  firma audit keygen [--out audit.key | -c firma.toml]
      Create the ECDSA P-256 signing key (0600; refuses to overwrite) and its public key (.pub),
      and print the public key. Without --out: [sidecar.audit] signing_key_path.
Without FILE or -c, the log is [sidecar.audit] file_path of $` + configEnv + `, else ` + "/etc/firma/firma.toml" + `.`

// auditSubcommands are the subcommands of `firma audit`.
var auditSubcommands = map[string]func([]string, io.Writer, io.Writer) error{
	"verify": auditVerifyCmd,
	"tail":   auditTailCmd,
	"keygen": auditKeygenCmd,
}

// auditCmd is `firma audit verify|tail|keygen`.
func auditCmd(args []string, stdout, stderr io.Writer) error {
	return subcommands(args, stdout, stderr, auditUsage, auditSubcommands)
}

// auditVerifyCmd exits 0 when every line checks out, 1 naming the first bad line otherwise.
func auditVerifyCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("audit verify", "usage: firma audit verify [--pubkey audit.pub] [--format auto|file|journal|syslog] [--host H] [--app A] [-c firma.toml | FILE… | -]\n\n"+
		"Checks the hash chain of the audit files (the live file and its rotations, oldest first), or of\n"+
		"the records in a journald or syslog export, and, with --pubkey, every signature. Exit 0 when\n"+
		"every line checks out, 1 naming the first bad line. \"-\" reads the input from stdin.")
	pubPath := fs.String("pubkey", "", "PEM public key (openssl pkey -pubout); without it only the chain is checked")
	cfgPath := configFlag(fs)
	formatName := fs.String("format", "auto", "how the input carries the records: file (the log files), journal (journalctl -o cat|json|short), syslog (a syslog daemon's file), auto")
	host := fs.String("host", "", "journal/syslog: only records sent from this host name (one chain when a receiver holds several)")
	app := fs.String("app", "", "journal/syslog: only records with this APP-NAME / SYSLOG_IDENTIFIER")
	files, err := parseInterleaved(fs, args, stdout, stderr)
	if err != nil {
		return err
	}
	format, err := audit.ParseFormat(*formatName)
	if err != nil {
		return fmt.Errorf("%w: --format: %w", errUsage, err)
	}
	if *cfgPath != "" && len(files) > 0 {
		return fmt.Errorf("%w: give -c or files, not both", errUsage)
	}
	// "-" reads an export from stdin (journalctl … | firma audit verify -): it is spooled to a
	// temporary file, which verify rereads to tell a reordered line from a removed one.
	stdinFile, err := spoolDash(files)
	if err != nil {
		return err
	}
	if stdinFile != "" {
		defer os.Remove(stdinFile)
	}
	if len(files) == 0 {
		if files, err = configuredAuditFiles(*cfgPath); err != nil {
			return err
		}
	}
	var chain []string
	for _, f := range files {
		if audit.IsTornSave(f) { // audit.jsonl* matches them too
			fmt.Fprintf(stderr, "note: skipping %s: a torn tail cut off at a restart, not part of the chain\n", f)
			continue
		}
		chain = append(chain, f)
	}
	if files = chain; len(files) == 0 {
		return fmt.Errorf("%w: no files to verify\n%s", errUsage, auditUsage)
	}
	var pub crypto.PublicKey // stays a nil interface without --pubkey: chain only
	keyID := ""
	if *pubPath != "" {
		k, err := audit.LoadPublicKey(*pubPath)
		if err != nil {
			return err
		}
		pub, keyID = k, audit.KeyID(k)
	} else {
		fmt.Fprintln(stderr, "warning: no --pubkey: checking the hash chain only, not who wrote it")
	}
	rep, err := audit.VerifyWith(pub, audit.VerifyOptions{Format: format, Host: *host, App: *app}, files...)
	name := func(f string) string {
		if f == stdinFile && f != "" {
			return "-"
		}
		return f
	}
	if err != nil {
		if stdinFile != "" {
			return fmt.Errorf("%s", strings.ReplaceAll(err.Error(), stdinFile, "-"))
		}
		return err
	}
	for _, n := range rep.Notes {
		if stdinFile != "" {
			n = strings.ReplaceAll(n, stdinFile, "-")
		}
		fmt.Fprintf(stderr, "note: %s\n", n)
	}
	if p := rep.Problem; p != nil {
		fmt.Fprintf(stdout, "FAIL %s:%d: %s: %s\n", name(p.File), p.Line, p.Kind, p.Detail)
		if rep.Records > 0 {
			fmt.Fprintf(stdout, "  %d records before it verified (seq %d..%d)\n", rep.Records, rep.FirstSeq, rep.LastSeq)
		}
		return exitCode(1)
	}
	how := "chain verified, signatures NOT checked"
	if pub != nil {
		how = fmt.Sprintf("chain and signatures verified with key %.16s…", keyID)
	}
	if rep.Format != audit.FormatFile {
		how += fmt.Sprintf(", read as a %s export", rep.Format)
	}
	fmt.Fprintf(stdout, "OK %d records, seq %d..%d, %d file(s): %s\n", rep.Records, rep.FirstSeq, rep.LastSeq, len(rep.Files), how)
	fmt.Fprintf(stdout, "  last line: seq %d hash %s\n", rep.LastSeq, rep.LastHash)
	return nil
}

// auditStdin is what `firma audit verify -` reads.
var auditStdin io.Reader = os.Stdin

// spoolStdin copies stdin to a private temporary file and returns its path.
// spoolDash replaces a "-" among files with a spooled copy of stdin, whose name it returns (""
// when there was none): the caller removes it. "-" twice is a usage error.
func spoolDash(files []string) (string, error) {
	spooled := ""
	for i, f := range files {
		if f != "-" {
			continue
		}
		if spooled != "" {
			os.Remove(spooled)
			return "", fmt.Errorf("%w: - given twice", errUsage)
		}
		var err error
		if spooled, err = spoolStdin(); err != nil {
			return "", err
		}
		files[i] = spooled
	}
	return spooled, nil
}

func spoolStdin() (string, error) {
	f, err := os.CreateTemp("", "firma-audit-verify-stdin-")
	if err != nil {
		return "", fmt.Errorf("spooling stdin: %w", err)
	}
	_, err = io.Copy(f, auditStdin)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("spooling stdin: %w", err)
	}
	return f.Name(), nil
}

// auditTailCmd prints records, human-readable unless --json, and with --follow keeps printing them
// across rotations until interrupted.
func auditTailCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("audit tail", "usage: firma audit tail [-c firma.toml | FILE] [--follow] [--deny] [--agent ID] [--since 15m] [-n N] [--json]\n\n"+
		"Prints audit records, human-readable unless --json; with --follow keeps printing them across\n"+
		"rotations until interrupted.")
	cfgPath := configFlag(fs)
	follow := fs.Bool("follow", false, "keep printing new records, across rotations")
	fs.BoolVar(follow, "f", false, "short for --follow")
	deny := fs.Bool("deny", false, "only refusals (DENY, DEFER and STEP_UP decisions)")
	agent := fs.String("agent", "", "only records of this agent id")
	since := fs.String("since", "", "only records from this long ago (15m, 2h) or since this RFC 3339 time")
	last := fs.Int("n", 10, "how many of the newest records to print first (0 = all); ignored with --since")
	asJSON := fs.Bool("json", false, "print the records as written (JSON lines)")
	rest, err := parseInterleaved(fs, args, stdout, stderr)
	if err != nil {
		return err
	}
	var live string
	switch {
	case len(rest) == 0:
		if live, err = auditLivePath(configPath(*cfgPath)); err != nil {
			return err
		}
	case *cfgPath == "" && len(rest) == 1:
		live = rest[0]
	default:
		return fmt.Errorf("%w: give -c firma.toml or one audit FILE\n%s", errUsage, auditUsage)
	}
	if *last < 0 {
		return fmt.Errorf("%w: -n %d is negative", errUsage, *last)
	}
	opt := audit.TailOptions{Filter: audit.Filter{DenyOnly: *deny, AgentID: *agent}, Last: *last, Follow: *follow}
	if *since != "" {
		if opt.Since, err = auditParseSince(*since, time.Now()); err != nil {
			return fmt.Errorf("%w: --since: %w", errUsage, err)
		}
	}
	if _, err := os.Stat(live); err != nil && !*follow {
		if files, ferr := audit.Files(live); ferr != nil || len(files) == 0 {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return audit.Tail(ctx, live, opt, func(line []byte, ev *audit.Event) error {
		var err error
		if *asJSON {
			_, err = fmt.Fprintf(stdout, "%s\n", line)
		} else {
			_, err = fmt.Fprintln(stdout, audit.FormatHuman(ev, time.Local))
		}
		return err
	})
}

// auditParseSince reads "15m" (ago) or an RFC 3339 time.
func auditParseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("%q is negative", s)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither a duration (15m) nor an RFC 3339 time", s)
	}
	return t, nil
}

// auditLivePath is [sidecar.audit] file_path of the config at path.
// configuredAuditFiles are the files of the audit log firma.toml names (-c, else the default
// config): its rotations, oldest first, then the live file.
func configuredAuditFiles(cfgFlag string) ([]string, error) {
	live, err := auditLivePath(configPath(cfgFlag))
	if err != nil {
		return nil, err
	}
	files, err := audit.Files(live)
	if err == nil && len(files) == 0 {
		err = fmt.Errorf("no audit files at %s", live)
	}
	return files, err
}

func auditLivePath(path string) (string, error) {
	cfg, err := loadConfig(path)
	if err != nil {
		return "", err
	}
	if cfg.Sidecar.Audit.FilePath == "" {
		return "", fmt.Errorf("%s: sidecar.audit.file_path is not set", path)
	}
	return filepath.Clean(cfg.Sidecar.Audit.FilePath), nil
}

// auditKeygenCmd creates the audit signing key and prints its public key.
func auditKeygenCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("audit keygen", "usage: firma audit keygen [--out audit.key | -c firma.toml]\n\n"+
		"Creates an ECDSA P-256 signing key for [sidecar.audit] signing_key_path: the private key as\n"+
		"PKCS #8 PEM (0600, its directory created 0700 if missing) and the public key next to it (.pub,\n"+
		"0644), written atomically; an existing file is never overwritten. Prints the public key, which\n"+
		"is what `firma audit verify --pubkey` and `openssl dgst -verify` take.")
	out := fs.String("out", "", "private key file to create (default: [sidecar.audit] signing_key_path of -c)")
	fs.StringVar(out, "o", "", "same as --out")
	cfgPath := configFlag(fs)
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	if *out != "" && *cfgPath != "" {
		return fmt.Errorf("%w: give --out or -c, not both", errUsage)
	}
	path := *out
	if path == "" {
		cfg, err := loadConfig(configPath(*cfgPath))
		if err != nil {
			return fmt.Errorf("%w (or give --out FILE)", err)
		}
		if path = cfg.Sidecar.Audit.SigningKeyPath; path == "" {
			return fmt.Errorf("%s: sidecar.audit.signing_key_path is not set (or give --out FILE)", cfg.path)
		}
	}
	pub, err := audit.GenerateSigningKey(path)
	if err != nil {
		return err
	}
	pubPEM, err := audit.MarshalPublicKey(pub)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "wrote %s (0600) and %s; key id %s\n", path, audit.PublicKeyPath(path), audit.KeyID(pub))
	_, err = stdout.Write(pubPEM)
	return err
}
