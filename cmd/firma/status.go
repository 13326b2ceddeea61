package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/openfirma/firma/daemon/metrics"
)

const statusUsage = `usage: firma sidecar status [-c firma.toml | --addr ADDR] [--json] [--timeout 3s]

Asks the running sidecar how it is: reads /healthz and /metrics from [sidecar.metrics] listen_addr
and prints whether it is ready, each readiness check (programs, listeners, audit, bundle) with what
it found, then decisions by outcome and agent, flows and bytes, DNS queries, kernel refusals, the
policy bundle's age, audit appends and fsyncs. Exit 0 when ready, 1 when not ready or unreachable.`

// sidecarStatusCmd is `firma sidecar status`.
func sidecarStatusCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("sidecar status", statusUsage)
	path := configFlag(fs)
	addr := fs.String("addr", "", "the sidecar's listen_addr (host:port or unix:/path) instead of the config's")
	asJSON := fs.Bool("json", false, "print {endpoint, health: {ready, checks}, summary: {…}} as JSON")
	timeout := fs.Duration("timeout", 3*time.Second, "bound on reading both endpoints")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	listen := *addr
	if listen == "" {
		cfg, err := loadConfig(configPath(*path))
		if err != nil {
			return err
		}
		if listen = cfg.Sidecar.Metrics.ListenAddr; listen == "" {
			return fmt.Errorf("%s: [sidecar.metrics] listen_addr is not set: the sidecar serves no /healthz or /metrics "+
				"(set it, e.g. listen_addr = \"127.0.0.1:9090\", and restart the sidecar)", cfg.path)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	st, err := metrics.Fetch(ctx, listen, *timeout)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(st)
	} else {
		err = st.WriteText(stdout)
	}
	if err != nil {
		return err
	}
	if !st.Health.Ready {
		return exitCode(1)
	}
	return nil
}
