package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/openfirma/firma/policies"
)

// checkCmd is `firma check config FILE`: decode strictly and validate every section the file has,
// including the policy and mapping files the sidecar would load, without touching the kernel.
func checkCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() != 2 || fs.Arg(0) != "config" {
		return fmt.Errorf("%w: firma check config FILE", errUsage)
	}
	path := fs.Arg(1)
	cfg, err := loadConfig(path)
	if err != nil {
		return err
	}
	var errs []error
	var checked []string
	if cfg.has["sidecar"] {
		checked = append(checked, "sidecar")
		if err := cfg.validateSidecar(); err != nil {
			errs = append(errs, err)
		} else if err := policies.CheckConfig(cfg.Sidecar.Policy, cfg.Sidecar.Mapping); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", path, err))
		}
	}
	if cfg.has["authority"] {
		checked = append(checked, "authority")
		if err := cfg.Authority.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", path, err))
		}
	}
	if cfg.has["run"] {
		checked = append(checked, "run")
		if err := cfg.Run.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", path, err))
		}
	}
	if len(checked) == 0 {
		errs = append(errs, fmt.Errorf("%s: no [sidecar], [authority] or [run] section", path))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: ok (%v)\n", path, checked)
	return nil
}
