package main

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/openfirma/firma/daemon/l7"
)

const caUsage = `usage:
  firma ca show [-c firma.toml] [--pem]
      Where the sidecar's MITM CA ([sidecar.ca] dir) is, its SHA-256 fingerprint and validity; --pem
      prints the certificate itself, for agents and clients to trust. It never creates a CA: the
      sidecar creates one on its first start.`

// caCmd is `firma ca show`: where the sidecar's MITM CA is and its fingerprint. It never creates a
// CA; the sidecar bootstraps one on its first start.
func caCmd(args []string, stdout, stderr io.Writer) error {
	return subcommands(args, stdout, stderr, caUsage, caSubcommands)
}

// caSubcommands are the subcommands of `firma ca`.
var caSubcommands = map[string]func([]string, io.Writer, io.Writer) error{
	"show": caShowCmd,
}

func caShowCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("ca show", caUsage)
	path := configFlag(fs)
	pemOut := fs.Bool("pem", false, "print the CA certificate (PEM) instead of its summary")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	cfg, err := loadConfig(configPath(*path))
	if err != nil {
		return err
	}
	dir := cfg.Sidecar.CA.Dir
	if dir == "" {
		return fmt.Errorf("%s: [sidecar.ca] dir is not set", cfg.path)
	}
	ca, err := l7.LoadCA(dir)
	if errors.Is(err, l7.ErrNoCA) {
		return fmt.Errorf("%w (the sidecar creates it on its first start)", err)
	}
	if err != nil {
		return err
	}
	if *pemOut {
		_, err := stdout.Write(ca.CertPEM())
		return err
	}
	cert := ca.Certificate()
	fmt.Fprintf(stdout, "path:        %s\n", ca.CertPath())
	fmt.Fprintf(stdout, "fingerprint: SHA256 %s\n", ca.Fingerprint())
	fmt.Fprintf(stdout, "subject:     %s\n", cert.Subject)
	fmt.Fprintf(stdout, "valid:       %s to %s\n", cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339))
	return nil
}
