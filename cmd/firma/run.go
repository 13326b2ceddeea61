package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/runner"
)

const runUsage = `usage: firma run [flags] -- COMMAND [ARGS...]

Runs COMMAND under enforcement: in a fresh cgroup below the sidecar's enforced parent from its
first instruction, registered with the sidecar as an agent, in a mount namespace that trusts
firma's CA and hides firma's own files, without dangerous capabilities and with no_new_privs.
No proxy variable is set. The exit status is COMMAND's (128+n if signal n killed it).
[run] settings come from -c, else $` + configEnv + `, else /etc/firma/firma.toml when it exists.`

// runCmd is `firma run`. It needs root; the agent runs as root (with reduced capabilities) unless
// --user names another user.
func runCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case runner.InitArg:
			// The agent's status; 1 when the setup failed (the reason went to firma run).
			if code := runner.Init(); code != 0 {
				return exitCode(code)
			}
			return nil
		case runner.ExecArg:
			if runner.ExecAgent() != nil {
				return exitCode(1) // the reason went to firma run, which reports it
			}
			return nil
		case runner.HoldArg:
			return runner.Hold()
		}
	}
	fs := newFlagSet("run", runUsage)
	var opts runner.Options
	configPath := configFlag(fs)
	fs.StringVar(&opts.Profile, "profile", "", "profile: generic, codex, claude-code, or one from [run.profiles] (default [run] profile, else generic)")
	fs.StringVar(&opts.AgentID, "agent-id", "", "agent id (default: the capability's agent_id, else the profile's)")
	fs.StringVar(&opts.CapabilityFile, "capability-file", "", "capability TOML from `firma authority issue --output`")
	fs.StringVar(&opts.Sidecar, "sidecar", "", "sidecar control socket (default [run] sidecar, else [sidecar.control] socket, else /run/firma/control.sock)")
	fs.StringVar(&opts.Cgroup, "cgroup", "", "parent cgroup for the agent, relative to the cgroup2 mount; must be at or below the sidecar's enforced parent")
	fs.StringVar(&opts.User, "user", "", "run the agent as this user (name, uid or uid:gid)")
	fs.BoolVar(&opts.Monitor, "monitor", false, "monitor mode: the sidecar records what policy would deny but lets it through")
	logLevel := fs.String("log-level", "warn", "firma run's own log level (debug, info, warn, error)")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	opts.Command = fs.Args()
	if len(opts.Command) == 0 {
		fs.Usage()
		return fmt.Errorf("%w: no command given", errUsage)
	}
	level, err := zerolog.ParseLevel(*logLevel)
	if err != nil {
		return fmt.Errorf("%w: --log-level: %v", errUsage, err)
	}
	log, err := newLogger(stderr, level.String(), "text", "run")
	if err != nil {
		return fmt.Errorf("%w: --log-level: %v", errUsage, err)
	}

	cfg := runner.DefaultConfig()
	path := optionalConfigPath(*configPath)
	if path != "" {
		fc, err := loadConfig(path)
		if err != nil {
			return err
		}
		cfg = fc.Run
		if cfg.Sidecar == "" {
			cfg.Sidecar = fc.Sidecar.Control.Socket // the socket the same file tells the sidecar to serve
		}
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%s: %w", configName(path), err)
	}

	opts.Stdin, opts.Stdout, opts.Stderr = os.Stdin, stdout, stderr
	status, err := runner.Run(context.Background(), cfg, opts, log)
	if err != nil {
		fmt.Fprintf(stderr, "firma run: %v\n", err)
		return exitCode(max(status, 1))
	}
	if status != 0 {
		return exitCode(status)
	}
	return nil
}

func configName(path string) string {
	if path == "" {
		return "built-in [run] defaults"
	}
	return path
}
