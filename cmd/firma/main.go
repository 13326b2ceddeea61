// Command firma is the one binary: it picks a subcommand, loads firma.toml when the subcommand needs
// it, calls into a package, and maps the returned error to an exit code. It holds no logic of its own.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// command is one subcommand: args are what follows its name on the command line.
type command struct {
	summary string
	run     func(args []string, stdout, stderr io.Writer) error
}

// errUsage marks a command-line mistake: exit 2 rather than 1.
var errUsage = errors.New("usage")

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "firma: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	err := cmd.run(args[1:], stdout, stderr)
	var code exitCode
	switch {
	case err == nil:
		return 0
	case errors.As(err, &code):
		return int(code)
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "firma %s: %v\n", args[0], err)
		return 2
	default:
		fmt.Fprintf(stderr, "firma %s: %v\n", args[0], err)
		return 1
	}
}

// exitCode lets a command return a specific status (firma run passes its child's through).
type exitCode int

func (c exitCode) Error() string { return fmt.Sprintf("exit status %d", int(c)) }

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: firma <command> [flags]")
	fmt.Fprintln(w)
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	width := 0
	for _, n := range names {
		width = max(width, len(n))
	}
	for _, n := range names {
		fmt.Fprintf(w, "  %s%s  %s\n", n, strings.Repeat(" ", width-len(n)), commands[n].summary)
	}
}

// subcommands runs the subcommand args[0] names, for commands that only group others
// (firma audit verify|tail, firma policy validate|test, firma ca show).
func subcommands(args []string, stdout, stderr io.Writer, usage string, subs map[string]func([]string, io.Writer, io.Writer) error) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: missing subcommand\n%s", errUsage, usage)
	}
	if run, ok := subs[args[0]]; ok {
		return run(args[1:], stdout, stderr)
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprintln(stdout, usage)
		return nil
	}
	return fmt.Errorf("%w: unknown subcommand %q\n%s", errUsage, args[0], usage)
}

// parseInterleaved parses flags that may come before, between or after the positional arguments
// ("validate dir -v"); everything after "--" is positional.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, fmt.Errorf("%w: %w", errUsage, err)
		}
		rest := fs.Args()
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" || len(rest) == 0 {
			return append(pos, rest...), nil
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
}
