package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"syscall"

	"github.com/openfirma/firma/internal/demo"
)

// demoCmd runs the embedded demo: `sudo firma demo [--keep]`.
func demoCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	keep := fs.Bool("keep", false, "keep the work dir (config, audit log, sidecar log)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	// The demo attaches programs and makes a cgroup: it must get to its cleanup even when its
	// output goes to a reader that quits early (firma demo | head).
	signal.Ignore(syscall.SIGPIPE)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return demo.Run(ctx, stdout, *keep)
}
