package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/openfirma/firma/internal/demo"
)

const demoUsage = `usage: sudo firma demo [--keep]

Shows enforcement end to end on this machine: fake upstreams on loopback addresses, the sidecar
(this binary, as firma sidecar -c firma.toml) with the built-in default policy attached to a fresh
cgroup, and unmodified curl inside it as an unprivileged user. Allowed and denied requests, HTTPS
MITM with an API key only the sidecar holds, firma sidecar status, the sidecar killed (the agent is
refused, never let through) and restarted, the audit log and firma audit verify on it. Nothing
leaves the machine; everything it creates is removed at the end (unless --keep). Needs root.`

// demoCmd runs the embedded demo: `sudo firma demo [--keep]`.
func demoCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", demoUsage)
	keep := fs.Bool("keep", false, "keep the work dir (config, audit log, sidecar log)")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	// The demo attaches programs and makes a cgroup: it must get to its cleanup even when its
	// output goes to a reader that quits early (firma demo | head).
	signal.Ignore(syscall.SIGPIPE)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding this binary to run the sidecar with: %w", err)
	}
	return demo.Run(ctx, stdout, demo.Options{Firma: self, Keep: *keep})
}
