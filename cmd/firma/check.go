package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/openfirma/firma/doctor"
)

const checkUsage = `usage: firma check config [-q] [FILE]

Decodes FILE strictly (an unknown key, or a duration written as a number, is an error naming the
key, the file and the line), validates every section it has, resolves every path in it against
FILE's own directory, and checks every file it names as the sidecar and the authority would use
them: policy dir, schema and mapping rules, audit log directory (writable) and signing key (0600),
CA, upstream roots, credential and capability files, authority keys and revocation lists, the
control socket's directory. Nothing is created and the kernel is not touched.
It prints what it found, a "warning:" line for anything that works but is likely a mistake (a
policy dir without a .cedar file denies everything), and exits 1 when anything is wrong.
Without FILE: $` + configEnv + `, else /etc/firma/firma.toml.`

// checkCmd is `firma check config [FILE]`.
func checkCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("check", checkUsage)
	quiet := fs.Bool("q", false, "print only warnings, errors and the verdict")
	pos, err := parseInterleaved(fs, args, stdout, stderr)
	if err != nil {
		return err
	}
	if len(pos) == 0 || pos[0] != "config" || len(pos) > 2 {
		return fmt.Errorf("%w: firma check config [FILE]", errUsage)
	}
	path := configPath("")
	if len(pos) == 2 {
		path = pos[1]
	}
	cfg, err := loadConfig(path)
	if err != nil {
		return err
	}
	var errs []error
	var checked []string
	dc := doctor.Config{Path: path}
	if cfg.has["sidecar"] {
		checked = append(checked, "[sidecar]")
		if err := cfg.validateSidecar(); err != nil {
			errs = append(errs, err)
		} else {
			dc.Sidecar = &cfg.Sidecar.Config
		}
	}
	if cfg.has["authority"] {
		checked = append(checked, "[authority]")
		if err := cfg.validateAuthority(); err != nil {
			errs = append(errs, err)
		} else {
			dc.Authority = &cfg.Authority.Config
		}
	}
	if cfg.has["run"] {
		checked = append(checked, "[run]")
		if err := cfg.Run.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", path, err))
		}
	}
	if len(checked) == 0 {
		errs = append(errs, fmt.Errorf("%s: no [sidecar], [authority] or [run] section", path))
	}
	for _, c := range doctor.Files(dc) {
		switch c.Status {
		case doctor.OK:
			if !*quiet {
				fmt.Fprintf(stdout, "ok       %s: %s\n", c.Name, c.Detail)
			}
		case doctor.Warn:
			fmt.Fprintf(stderr, "warning: %s: %s: %s%s\n", path, c.Name, c.Detail, fixSuffix(c.Fix))
		case doctor.Fail:
			errs = append(errs, fmt.Errorf("%s: %s: %s%s", path, c.Name, c.Detail, fixSuffix(c.Fix)))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: ok (%s)\n", path, strings.Join(checked, " "))
	return nil
}

func fixSuffix(fix string) string {
	if fix == "" {
		return ""
	}
	return " (fix: " + fix + ")"
}
