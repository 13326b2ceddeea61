package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/daemon"
)

const sidecarUsage = `usage: firma sidecar [-c firma.toml] [--log-format text|json]
       firma sidecar [-c firma.toml] --cleanup [--force]
       firma sidecar status [-c firma.toml] [--json]   (see firma sidecar status --help)

Runs the sidecar of [sidecar]: attaches the kernel programs to the enforced cgroup, then serves the
transparent listener, the DNS resolver, the explicit proxy and the control socket until SIGTERM or
SIGINT. SIGHUP reloads policy. The programs stay pinned when it exits, so agents' connections are
refused, never let through, until a sidecar is back; --cleanup detaches them and ends enforcement.
One sidecar runs per pin dir: a second one exits 1 naming the first's pid, and --cleanup refuses
while a sidecar runs (--force detaches under it; it repairs what it finds detached). Logs go to
stderr. With [sidecar.metrics] listen_addr it serves /healthz and Prometheus /metrics there;
firma sidecar status reads them. FIRMA_PPROF=127.0.0.1:PORT serves net/http/pprof there, as
[sidecar.debug] listen_addr does.`

// sidecarCmd runs the sidecar: `firma sidecar -c firma.toml [--cleanup]`, or reports on a running
// one: `firma sidecar status`.
func sidecarCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "status" {
		return sidecarStatusCmd(args[1:], stdout, stderr)
	}
	fs := newFlagSet("sidecar", sidecarUsage)
	path := configFlag(fs)
	cleanup := fs.Bool("cleanup", false, "detach and unpin the kernel programs, then exit (ends enforcement)")
	force := fs.Bool("force", false, "with --cleanup: detach even while a sidecar runs")
	logFormatFlag := fs.String("log-format", "", "text or json (default [sidecar] log_format, else text)")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	if err := checkLogFormat("--log-format", *logFormatFlag); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	cfg, err := loadConfig(configPath(*path))
	if err != nil {
		return err
	}
	if v := os.Getenv("FIRMA_PPROF"); v != "" && cfg.Sidecar.Debug.ListenAddr == "" {
		cfg.Sidecar.Debug.ListenAddr = v // [sidecar.debug] listen_addr, validated with the file's keys
	}
	if err := cfg.validateSidecar(); err != nil {
		return err
	}
	if cfg.has["authority"] {
		// One firma.toml often serves both (the guide's .local/firma.toml): keep agents away from
		// the authority's key and from what it signs.
		a := cfg.Authority
		cfg.Sidecar.AgentHidden = append(cfg.Sidecar.AgentHidden, a.KeyFile)
		cfg.Sidecar.AgentProtected = append(cfg.Sidecar.AgentProtected, a.PolicyDir, a.IssuancePolicyDir, a.RevocationFile, a.Schema)
	}
	if *force && !*cleanup {
		return fmt.Errorf("%w: --force goes with --cleanup", errUsage)
	}
	if *cleanup {
		return cleanupPins(cfg.Sidecar.Transparent.PinDir, *force, stdout, stderr)
	}
	log, err := newLogger(stderr, cfg.Sidecar.LogLevel, logFormat(*logFormatFlag, cfg.Sidecar.LogFormat), "sidecar")
	if err != nil {
		return fmt.Errorf("%s: sidecar.log_level: %w", cfg.path, err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP, syscall.SIGUSR1)
	defer signal.Stop(hup)
	reload := make(chan struct{}, 1)
	go func() {
		for range hup {
			select {
			case reload <- struct{}{}:
			default:
			}
		}
	}()
	err = daemon.Run(ctx, cfg.Sidecar.Config, log, daemon.RunOptions{Reload: reload, Notifier: daemon.NewNotifier(log)})
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// cleanupPins detaches and unpins the programs of pinDir, ending enforcement. It refuses while a
// sidecar holds the pin dir's lock, unless force.
func cleanupPins(pinDir string, force bool, stdout, stderr io.Writer) error {
	lock, err := daemon.Lock(pinDir)
	switch {
	case errors.Is(err, daemon.ErrLocked) && !force:
		return fmt.Errorf("cleanup refused: %w; stop the sidecar first (systemctl stop firma-sidecar), or --force", err)
	case errors.Is(err, daemon.ErrLocked):
		fmt.Fprintf(stderr, "WARNING: %v\nWARNING: --force: detaching under a running sidecar ends enforcement until it notices and re-attaches\n", err)
	case err != nil:
		return err
	default:
		defer lock.Close()
	}
	if err := bpf.Cleanup(pinDir); err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	fmt.Fprintf(stdout, "detached and unpinned %s\n", pinDir)
	return nil
}
