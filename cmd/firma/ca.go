package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/openfirma/firma/daemon/l7"
)

const caUsage = `usage:
  firma ca show [-c firma.toml] [--pem]
      Where the sidecar's MITM CA ([sidecar.ca] dir) is, its SHA-256 fingerprint and validity; --pem
      prints the certificate itself, for agents and clients to trust. It never creates a CA: the
      sidecar creates one on its first start, in a 0755 directory with the certificate 0644 and the
      key 0600, so that any user can read (and run this on) the certificate while only root can
      read the key. As root it also checks that the key matches the certificate.`

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
	c, err := readCA(dir)
	if errors.Is(err, l7.ErrNoCA) {
		return fmt.Errorf("%w (the sidecar creates it on its first start)", err)
	}
	if err != nil {
		return err
	}
	if *pemOut {
		_, err := stdout.Write(c.PEM)
		return err
	}
	cert := c.Cert
	fmt.Fprintf(stdout, "path:        %s\n", c.Path)
	fmt.Fprintf(stdout, "fingerprint: SHA256 %s\n", c.Fingerprint())
	fmt.Fprintf(stdout, "subject:     %s\n", cert.Subject)
	fmt.Fprintf(stdout, "valid:       %s to %s\n", cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// geteuid is os.Geteuid; tests replace it.
var geteuid = os.Geteuid

// readCA reads the CA in dir as this user may: root loads it whole (the key must match the
// certificate), anyone else reads the certificate alone, which is all an agent needs.
func readCA(dir string) (*l7.CACert, error) {
	if geteuid() != 0 {
		return l7.ReadCACert(dir)
	}
	ca, err := l7.LoadCA(dir)
	if err != nil {
		return nil, err
	}
	return &l7.CACert{Path: ca.CertPath(), Cert: ca.Certificate(), PEM: ca.CertPEM()}, nil
}
