// Package systemd holds firma's unit files; these tests check them with systemd-analyze verify and
// systemd-analyze security.
package systemd

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
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

// newerKeys are keys firma's units use that older systemd does not know, with the version that
// added them. Older systemd ignores them with an "Unknown key" warning; each unit says in a comment
// what stands in for them there.
var newerKeys = map[string]int{"PrivatePIDs": 257}

var unknownKey = regexp.MustCompile(`Unknown key(?: name)? '([A-Za-z]+)' in section`)

// systemdVersion is the major version of the systemd-analyze on this machine.
func systemdVersion(t *testing.T) int {
	t.Helper()
	out, err := exec.Command("systemd-analyze", "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(out))
	if len(f) < 2 || f[0] != "systemd" {
		t.Fatalf("systemd-analyze --version: %q", out)
	}
	v, err := strconv.Atoi(f[1])
	if err != nil {
		t.Fatalf("systemd-analyze --version: %q", out)
	}
	return v
}

// withoutNewerKeyWarnings drops the warnings about keys this systemd is too old to know, and only
// those: an unknown key of any other name is still a failure.
func withoutNewerKeyWarnings(out string, version int) string {
	var keep []string
	for _, line := range strings.Split(out, "\n") {
		if m := unknownKey.FindStringSubmatch(line); m != nil {
			if since, ok := newerKeys[m[1]]; ok && version < since {
				continue
			}
		}
		keep = append(keep, line)
	}
	return strings.TrimSpace(strings.Join(keep, "\n"))
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
	return withoutNewerKeyWarnings(out.String(), systemdVersion(t)), err
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// firmaBinary builds cmd/firma once for the tests that need a real program in Exec lines.
func firmaBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if binDir, buildErr = os.MkdirTemp("", "firma-systemd-test-"); buildErr != nil {
			return
		}
		if out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, "firma"), "../cmd/firma").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building firma: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, "firma")
}

// stageUnits copies every unit into a fresh directory with its Exec lines pointing at a real binary.
func stageUnits(t *testing.T) (dir string, names []string) {
	t.Helper()
	dir = t.TempDir()
	bin := firmaBinary(t)
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
	return dir, names
}

func TestUnitsVerify(t *testing.T) {
	testutil.RequireTool(t, "systemd-analyze")
	dir, names := stageUnits(t)

	// verify must really run: a unit with a mistake in it fails.
	if err := os.WriteFile(filepath.Join(dir, "broken.service"), []byte("[Service]\nExecStart="+firmaBinary(t)+"\nNoSuchKey=1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := verify(t, dir, []string{"broken.service"}); err == nil && out == "" {
		t.Fatal("systemd-analyze verify accepted a unit with an unknown key: it is not checking anything")
	}
	os.Remove(filepath.Join(dir, "broken.service"))

	if out, err := verify(t, dir, names); err != nil || out != "" {
		t.Fatalf("systemd-analyze verify %s: %v\n%s", strings.Join(names, " "), err, out)
	}
}

// maxExposure is the highest `systemd-analyze security` exposure (0.0 safest … 10.0) each service may
// have. The sidecar is a root BPF daemon and cannot go much lower; the others must stay near the
// floor.
var maxExposure = map[string]float64{
	"firma-sidecar.service":     4.0,
	"firma-authority.service":   1.5,
	"claude-code-agent.service": 1.5,
}

var exposureLine = regexp.MustCompile(`Overall exposure level for (\S+): (\d+\.\d+)`)

func TestUnitsSecurityExposure(t *testing.T) {
	testutil.RequireTool(t, "systemd-analyze")
	dir, names := stageUnits(t)
	seen := 0
	for _, name := range names {
		if !strings.HasSuffix(name, ".service") {
			continue
		}
		limit, ok := maxExposure[name]
		if !ok {
			t.Errorf("%s has no exposure limit in maxExposure", name)
			continue
		}
		cmd := exec.Command("systemd-analyze", "security", "--offline=true", "--no-pager", name)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		m := exposureLine.FindSubmatch(out)
		if m == nil {
			t.Errorf("systemd-analyze security %s: %v\n%s", name, err, out)
			continue
		}
		seen++
		got, _ := strconv.ParseFloat(string(m[2]), 64)
		if got > limit {
			t.Errorf("%s: exposure %.1f, above %.1f:\n%s", name, got, limit, out)
		} else {
			t.Logf("%s: exposure %.1f (limit %.1f)", name, got, limit)
		}
	}
	if seen != len(maxExposure) {
		t.Errorf("scored %d services, want %d", seen, len(maxExposure))
	}
}

func TestWithoutNewerKeyWarnings(t *testing.T) {
	out := "x.service:85: Unknown key 'PrivatePIDs' in section [Service], ignoring.\n" +
		"x.service:86: Unknown key 'NoSuchKey' in section [Service], ignoring.\n" +
		"x.service:87: Unknown key name 'PrivatePIDs' in section 'Service', ignoring."
	if got := withoutNewerKeyWarnings(out, 252); got != "x.service:86: Unknown key 'NoSuchKey' in section [Service], ignoring." {
		t.Errorf("systemd 252: %q", got)
	}
	if got := withoutNewerKeyWarnings(out, 257); got != out {
		t.Errorf("systemd 257 knows PrivatePIDs, so a warning about it is real: %q", got)
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
	for _, want := range []string{"Slice=firma-agents.slice", "[[sidecar.agents]]", `cgroup = "firma.slice/firma-agents.slice/claude-code-agent.service"`,
		// The same doors firma run closes.
		"\nUser=", "\nNoNewPrivileges=yes\n", "\nCapabilityBoundingSet=\n", "\nRestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n",
		"\nProtectControlGroups=yes\n", "\nPrivatePIDs=yes\n", "\nProtectProc=invisible\n", "\nProcSubset=pid\n",
		"\nSystemCallArchitectures=native\n", "\nLockPersonality=yes\n", "\nRestrictNamespaces=yes\n", "\nPrivateTmp=yes\n",
		"\nProtectSystem=strict\n", "\nIPAddressDeny=any\n", "SystemCallFilter=~@privileged @debug", "ptrace", "pidfd_getfd", "process_vm_readv", "bpf", "io_uring_setup",
		// The CA for this service only, by its real name, for each TLS stack.
		"LoadCredential=firma-ca.crt:/var/lib/firma/ca/firma-ca.crt", "NODE_EXTRA_CA_CERTS=", "SSL_CERT_FILE=", "REQUESTS_CA_BUNDLE=",
		// What docs need: leaving the cgroup, and V8 against MemoryDenyWriteExecute.
		"can write its pid into another cgroup's cgroup.procs", "V8"} {
		if !strings.Contains(agent, want) {
			t.Errorf("example agent unit lacks %q", want)
		}
	}
	for _, bad := range []string{"update-ca-certificates", "/usr/local/share/ca-certificates", "firma-ca.pem", "\nMemoryDenyWriteExecute="} {
		if strings.Contains(agent, bad) {
			t.Errorf("example agent unit has %q: firma's CA must not be trusted system-wide, and V8 needs W^X memory", bad)
		}
	}
}
