package main

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/openfirma/firma/internal/testutil"
)

// TestMain keeps the host's firma.toml out of the tests: $FIRMA_CONFIG is unset and the system
// path points nowhere, so a command without -c sees no config unless a test sets one.
func TestMain(m *testing.M) {
	os.Unsetenv(configEnv)
	dir, err := os.MkdirTemp("", "firma-cmd-test-")
	if err != nil {
		panic(err)
	}
	systemConfigPath = filepath.Join(dir, "etc-firma", "firma.toml")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// helpCases is every command and subcommand; TestHelp checks that it lists them all.
var helpCases = [][]string{
	{"audit"}, {"audit", "verify"}, {"audit", "tail"}, {"audit", "keygen"},
	{"authority"}, {"authority", "generate-key"}, {"authority", "init-tls"}, {"authority", "serve"}, {"authority", "issue"}, {"authority", "revoke"},
	{"ca"}, {"ca", "show"},
	{"check"}, {"check", "config"},
	{"demo"},
	{"doctor"},
	{"policy"}, {"policy", "validate"}, {"policy", "test"}, {"policy", "schema"}, {"policy", "suggest"}, {"policy", "replay"},
	{"run"},
	{"sidecar"},
	{"version"},
}

// TestHelp: --help and -h exit 0 with the usage on stdout and nothing on stderr, for every command
// and subcommand, before anything reads a config or touches the system.
func TestHelp(t *testing.T) {
	for name := range commands {
		if !slices.ContainsFunc(helpCases, func(c []string) bool { return len(c) == 1 && c[0] == name }) {
			t.Errorf("command %q is missing from helpCases", name)
		}
	}
	for group, subs := range map[string]map[string]func([]string, io.Writer, io.Writer) error{
		"audit": auditSubcommands, "ca": caSubcommands, "policy": policySubcommands,
	} {
		for sub := range subs {
			if !slices.ContainsFunc(helpCases, func(c []string) bool { return slices.Equal(c, []string{group, sub}) }) {
				t.Errorf("subcommand %q %q is missing from helpCases", group, sub)
			}
		}
	}
	// Subcommands a group's usage names (firma authority issue …) must be in the table too.
	subLine := regexp.MustCompile(`(?m)^\s*(?:usage: )?firma ([a-z]+) (?:\[-c firma\.toml\] )?(?:\[--log-format text\|json\] )?\[?([a-z][-a-z]+)`)
	for _, c := range helpCases {
		args := append(slices.Clone(c), "--help")
		for _, flag := range []string{"--help", "-h"} {
			args[len(args)-1] = flag
			var out, errb bytes.Buffer
			code := run(args, &out, &errb)
			if code != 0 || errb.Len() != 0 || !strings.Contains(out.String(), "usage") {
				t.Errorf("firma %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out.String(), errb.String())
			}
			if len(c) == 1 {
				for _, m := range subLine.FindAllStringSubmatch(out.String(), -1) {
					if m[1] == c[0] && m[2] != "flags" && !slices.ContainsFunc(helpCases, func(h []string) bool { return slices.Equal(h, []string{m[1], m[2]}) }) {
						t.Errorf("firma %s --help names subcommand %q, missing from helpCases", c[0], m[2])
					}
				}
			}
		}
	}
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}, {"help", "audit", "tail"}} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 0 || errb.Len() != 0 || !strings.Contains(out.String(), "usage") {
			t.Errorf("firma %s: exit %d, stderr %q", strings.Join(args, " "), code, errb.String())
		}
	}
	var out, errb bytes.Buffer
	if code := run(nil, &out, &errb); code != 2 || !strings.Contains(errb.String(), "usage") {
		t.Errorf("firma without a command: exit %d", code)
	}
	if code := run([]string{"check", "--bogus"}, &out, &errb); code != 2 {
		t.Errorf("a bad flag: exit %d", code)
	}
}

// TestVersion builds the binary from this checkout as `make build` does and checks that it names
// the commit HEAD is at, whether the tree was modified, and the version make build links in.
func TestVersion(t *testing.T) {
	git := testutil.RequireTool(t, "git")
	makeBin := testutil.RequireTool(t, "make")
	root := moduleRoot(t)
	head, err := exec.Command(git, "-C", root, "rev-parse", "HEAD").Output()
	if err != nil {
		t.Skipf("not a git checkout: %v", err) // a source tarball has no commit to report
	}
	status, err := exec.Command(git, "-C", root, "status", "--porcelain", "--untracked-files=no").Output()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "firma")
	build := exec.Command(makeBin, "-C", root, "build", "BIN="+bin, "VERSION=v9.8.7-test")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	want := "firma v9.8.7-test (commit " + strings.TrimSpace(string(head))[:12]
	if len(bytes.TrimSpace(status)) > 0 {
		want += ", modified"
	}
	for _, args := range [][]string{{"version"}, {"--version"}} {
		out, err := exec.Command(bin, args...).Output()
		if err != nil || !strings.HasPrefix(string(out), want) {
			t.Errorf("firma %s: %v\n%s\nwant prefix %q", args[0], err, out, want)
		}
	}
	out, err := exec.Command(bin, "version", "--json").Output()
	if err != nil || !strings.Contains(string(out), `"commit":"`+strings.TrimSpace(string(head))+`"`) {
		t.Errorf("firma version --json: %v\n%s", err, out)
	}
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}
