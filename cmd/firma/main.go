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

	"github.com/openfirma/firma/version"
)

// command is one subcommand: args are what follows its name on the command line.
type command struct {
	summary string
	run     func(args []string, stdout, stderr io.Writer) error
}

var (
	// errUsage marks a command-line mistake: exit 2 rather than 1.
	errUsage = errors.New("usage")
	// errHelp means the command printed its help, as asked: exit 0.
	errHelp = errors.New("help requested")
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help":
		usage(stdout)
		return 0
	case "help": // firma help [COMMAND [SUBCOMMAND]] is COMMAND [SUBCOMMAND] --help
		if len(args) == 1 {
			usage(stdout)
			return 0
		}
		args = append(args[1:], "--help")
	case "-version", "--version":
		fmt.Fprintln(stdout, version.String())
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
	case err == nil, errors.Is(err, errHelp):
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
	fmt.Fprintf(w, `
Every command that reads firma.toml takes -c FILE; without it, $%s, else %s.
Relative paths in the file are relative to the file's own directory.
'firma COMMAND --help' describes a command; 'firma --version' prints the version and commit.
`, configEnv, systemConfigPath)
}

// subcommands runs the subcommand args[0] names, for commands that only group others
// (firma audit verify|tail|keygen, firma policy validate|test, firma ca show).
func subcommands(args []string, stdout, stderr io.Writer, usage string, subs map[string]func([]string, io.Writer, io.Writer) error) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: missing subcommand\n%s", errUsage, usage)
	}
	if run, ok := subs[args[0]]; ok {
		return run(args[1:], stdout, stderr)
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(stdout, usage)
		return errHelp
	}
	return fmt.Errorf("%w: unknown subcommand %q\n%s", errUsage, args[0], usage)
}

// newFlagSet returns a flag set whose help is usage (the synopsis and what the command does)
// followed by the flags. Parse it with parseFlags or parseInterleaved, which print that help on
// stdout for -h/--help.
func newFlagSet(name, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintln(w, strings.TrimRight(usage, "\n"))
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprintln(w, "\nflags:")
			fs.PrintDefaults()
		}
	}
	return fs
}

// parseFlags parses args: -h/--help prints fs's help on stdout and returns errHelp (exit 0); a bad
// flag is an errUsage naming it (exit 2) with the help on stderr.
func parseFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	fs.SetOutput(io.Discard) // the flag package would print the help itself, to the wrong stream
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(stdout)
		fs.Usage()
		return errHelp
	case err != nil:
		fs.SetOutput(stderr)
		fs.Usage()
		fmt.Fprintln(stderr)
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	fs.SetOutput(stderr)
	return nil
}

// parseInterleaved parses flags that may come before, between or after the positional arguments
// ("validate dir -v"); everything after "--" is positional. Help and errors are as in parseFlags.
func parseInterleaved(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) ([]string, error) {
	var pos []string
	for {
		if err := parseFlags(fs, args, stdout, stderr); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" || len(rest) == 0 {
			return append(pos, rest...), nil
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
}
