// Package systemd holds firma's unit files; this test checks them with systemd-analyze verify.
package systemd

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/openfirma/firma/internal/testutil"
)

// units are every unit firma ships or shows.
func units(t *testing.T) []string {
	t.Helper()
	var files []string
	for _, pattern := range []string{"*.service", "*.slice", "../examples/systemd/*.service"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	if len(files) < 4 {
		t.Fatalf("found only %v", files)
	}
	return files
}

var execLine = regexp.MustCompile(`^(Exec[A-Za-z]+=)([-@:+!]*)(/\S+)(.*)$`)

// rewriteExec points every Exec*= command whose program does not exist on this machine at bin, so
// that verify checks the unit and not the machine it runs on.
func rewriteExec(unit []byte, bin string) []byte {
	var out []string
	for _, line := range strings.Split(string(unit), "\n") {
		if m := execLine.FindStringSubmatch(line); m != nil {
			if _, err := os.Stat(m[3]); err != nil {
				line = m[1] + m[2] + bin + m[4]
			}
		}
		out = append(out, line)
	}
	return []byte(strings.Join(out, "\n"))
}

// verify runs systemd-analyze verify on the units in dir; any output at all (verify reports many
// problems as warnings with exit status 0) is a failure.
func verify(t *testing.T, dir string, names []string) (string, error) {
	t.Helper()
	cmd := exec.Command("systemd-analyze", append([]string{"verify", "--man=no", "--generators=no"}, names...)...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return strings.TrimSpace(out.String()), err
}

func TestUnitsVerify(t *testing.T) {
	testutil.RequireTool(t, "systemd-analyze")
	dir := t.TempDir()
	bin := filepath.Join(dir, "firma")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/firma").CombinedOutput(); err != nil {
		t.Fatalf("building firma: %v\n%s", err, out)
	}

	// verify must really run: a unit with a mistake in it fails.
	if err := os.WriteFile(filepath.Join(dir, "broken.service"), []byte("[Service]\nExecStart="+bin+"\nNoSuchKey=1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := verify(t, dir, []string{"broken.service"}); err == nil && out == "" {
		t.Fatal("systemd-analyze verify accepted a unit with an unknown key: it is not checking anything")
	}
	os.Remove(filepath.Join(dir, "broken.service"))

	var names []string
	for _, f := range units(t) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Base(f)
		if err := os.WriteFile(filepath.Join(dir, name), rewriteExec(data, bin), 0o644); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	if out, err := verify(t, dir, names); err != nil || out != "" {
		t.Fatalf("systemd-analyze verify %s: %v\n%s", strings.Join(names, " "), err, out)
	}
}

func TestUnitsSayWhatTheIssueAsks(t *testing.T) {
	read := func(name string) string {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	sidecar := read("firma-sidecar.service")
	for _, want := range []string{"Type=notify", "WatchdogSec=", "Restart=on-failure",
		"ExecStart=/usr/local/bin/firma sidecar -c /etc/firma/firma.toml", "NoNewPrivileges=yes", "ProtectSystem=strict",
		"CapabilityBoundingSet=CAP_BPF"} {
		if !strings.Contains(sidecar, want) {
			t.Errorf("firma-sidecar.service lacks %q", want)
		}
	}
	if strings.Contains(sidecar, "\nExecStopPost=") || strings.Contains(sidecar, "--cleanup") {
		t.Error("firma-sidecar.service must not unpin the BPF programs when it stops")
	}
	authority := read("firma-authority.service")
	for _, want := range []string{"DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
		"RestrictAddressFamilies=", "SystemCallFilter=", "CapabilityBoundingSet=\n"} {
		if !strings.Contains(authority, want) {
			t.Errorf("firma-authority.service lacks %q", want)
		}
	}
	agent := read("../examples/systemd/claude-code-agent.service")
	for _, want := range []string{"Slice=firma-agents.slice", "[[sidecar.agents]]", `cgroup = "firma.slice/firma-agents.slice/claude-code-agent.service"`} {
		if !strings.Contains(agent, want) {
			t.Errorf("example agent unit lacks %q", want)
		}
	}
}
