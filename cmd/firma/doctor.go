package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/openfirma/firma/doctor"
)

const doctorUsage = `usage: firma doctor [-c firma.toml] [--json] [--timeout 3s]

Checks that this host can run firma (kernel, BPF, cgroup2, bpffs, BTF, socket storage, BPF LSM,
Landlock, seccomp, privileges, systemd), the files firma.toml names, and the sidecar it describes
as it runs now (pins, programs attached to the enforced cgroup, listeners, control socket, audit
log, CA, authority and bundle age, /healthz). Every check that is not ok says what to do.
Exit 0 when nothing failed (warnings do not fail), 1 otherwise. Run it as root.
Without -c, $` + configEnv + ` or /etc/firma/firma.toml is used when it exists; with none, only the
host is checked.`

func doctorCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("doctor", doctorUsage)
	path := configFlag(fs)
	asJSON := fs.Bool("json", false, "print the report as JSON: {config, ready, checks: [{name, status, detail, fix}]}")
	timeout := fs.Duration("timeout", 3*time.Second, "bound on each network probe")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var report doctor.Report
	cfgPath := optionalConfigPath(*path)
	if cfgPath == "" {
		checks := append(doctor.Host(), doctor.Check{Name: "config", Status: doctor.Warn,
			Detail: "no config ($" + configEnv + " unset, " + systemConfigPath + " missing): only the host was checked",
			Fix:    "firma doctor -c firma.toml"})
		report = doctor.NewReport("", checks)
	} else if cfg, configCheck := doctorConfig(cfgPath); cfg == nil {
		report = doctor.NewReport(cfgPath, append(doctor.Host(), configCheck))
	} else {
		report = doctor.Run(ctx, *cfg, doctor.Options{Timeout: *timeout})
		report = doctor.NewReport(cfgPath, append([]doctor.Check{configCheck}, report.Checks...))
	}
	var err error
	if *asJSON {
		err = report.WriteJSON(stdout)
	} else {
		err = report.WriteText(stdout)
	}
	if err != nil {
		return err
	}
	if !report.Ready {
		return exitCode(1)
	}
	return nil
}

// doctorConfig loads firma.toml for doctor, with the sections it has and every path resolved, and
// says whether it is valid. cfg is nil when the file cannot be read or decoded.
func doctorConfig(path string) (*doctor.Config, doctor.Check) {
	const name = "config"
	const fix = "fix the file and line named; `firma check config` checks it alone"
	fc, err := loadConfig(path)
	if err != nil {
		return nil, doctor.Check{Name: name, Status: doctor.Fail, Detail: err.Error(), Fix: fix}
	}
	cfg := &doctor.Config{Path: path}
	var errs []error
	var sections []string
	if fc.has["sidecar"] {
		sections = append(sections, "[sidecar]")
		errs = append(errs, fc.validateSidecar())
		cfg.Sidecar = &fc.Sidecar.Config
		cfg.MetricsAddr = fc.Sidecar.Metrics.ListenAddr
	}
	if fc.has["authority"] {
		sections = append(sections, "[authority]")
		errs = append(errs, fc.validateAuthority())
		cfg.Authority = &fc.Authority.Config
	}
	if err := errors.Join(errs...); err != nil {
		return cfg, doctor.Check{Name: name, Status: doctor.Fail, Detail: err.Error(), Fix: fix}
	}
	if len(sections) == 0 {
		return cfg, doctor.Check{Name: name, Status: doctor.Warn, Detail: path + ": no [sidecar] or [authority] section", Fix: fix}
	}
	return cfg, doctor.Check{Name: name, Status: doctor.OK, Detail: path + ": valid " + strings.Join(sections, " ")}
}
