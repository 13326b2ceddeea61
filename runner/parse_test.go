package runner

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const hybridMountinfo = `22 28 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 master:2 - cgroup2 cgroup2 rw
90 28 0:50 / /mnt/with\040space rw - tmpfs none rw
`

func TestConfigValidate(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	cfg.Sidecar = "control.sock"
	cfg.Cgroup = "a/../b"
	cfg.Profile = "nope"
	cfg.StopTimeoutSeconds = -1
	cfg.Profiles["bad"] = Profile{
		ReadOnly: []string{"relative"},
		Mask:     []string{"~user/x"},
		UnsetEnv: []string{"["},
		Env:      map[string]string{"HTTPS_PROXY": "x", "SSL_CERT_FILE": "y", "1BAD": "z"},
		Devices:  []string{"/dev/dri", "/etc/shadow", "/dev/../etc/shadow", "/dev/", "dev/kvm"},
	}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, want := range []string{
		`run.sidecar: "control.sock" is not an absolute path`,
		`run.cgroup: "a/../b"`,
		`run.profile: no profile named "nope"`,
		`run.stop_timeout_seconds`,
		`run.profiles.bad.read_only[0]`,
		`run.profiles.bad.mask[0]`,
		`run.profiles.bad.unset_env[0]`,
		`HTTPS_PROXY: firma run never sets proxy variables`,
		`SSL_CERT_FILE is set by firma run`,
		`"1BAD" is not a variable name`,
		`run.profiles.bad.devices[1]: "/etc/shadow" is not a path below /dev/`,
		`run.profiles.bad.devices[2]`,
		`run.profiles.bad.devices[3]`,
		`run.profiles.bad.devices[4]`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "devices[0]") {
		t.Errorf("/dev/dri refused: %v", err)
	}
}

func TestBuiltinProfiles(t *testing.T) {
	cfg := DefaultConfig()
	for name, wantID := range map[string]string{"": "generic", "generic": "generic", "codex": "codex", "claude-code": "claude-code"} {
		got, p, err := cfg.profile(name)
		if err != nil || p.AgentID != wantID || (name != "" && got != name) {
			t.Errorf("profile(%q) = %q %+v %v", name, got, p, err)
		}
	}
	_, codex, _ := cfg.profile("codex")
	if !codex.Workspace || !contains2(codex.Mask, "~/.ssh") || !contains2(codex.Mask, "~/.aws") || !contains2(codex.ReadOnly, "/etc") {
		t.Errorf("codex profile %+v", codex)
	}
	if _, _, err := cfg.profile("nope"); err == nil || !strings.Contains(err.Error(), "claude-code, codex, generic") {
		t.Errorf("unknown profile: %v", err)
	}
	// A configured profile with no agent_id falls back to its name (see resolveIdentity).
	id, err := resolveIdentity("", "", "mine", Profile{})
	if err != nil || id.AgentID != "mine" || len(id.SessionID) != 36 {
		t.Errorf("identity %+v %v", id, err)
	}
}

func contains2(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestResolveIdentityFromCapability(t *testing.T) {
	dir := t.TempDir()
	capFile := filepath.Join(dir, "cap.toml")
	os.WriteFile(capFile, []byte(`# firma capability
raw_token = "v4.public.xxx"
token_id = "t1"
agent_id = "claude-code"
session_id = "5f0c"
actions = ["communication.external.send"]
`), 0o600)
	wd, _ := os.Getwd()
	os.Chdir(dir)
	defer os.Chdir(wd)

	id, err := resolveIdentity("", "cap.toml", "codex", Profile{AgentID: "codex"})
	if err != nil {
		t.Fatal(err)
	}
	if id != (identity{AgentID: "claude-code", SessionID: "5f0c", CapabilityFile: capFile}) {
		t.Fatalf("identity %+v", id)
	}
	if _, err := resolveIdentity("codex", capFile, "codex", Profile{}); err == nil || !strings.Contains(err.Error(), "contradicts") {
		t.Fatalf("contradicting --agent-id: %v", err)
	}
	id, _ = resolveIdentity("claude-code", capFile, "codex", Profile{})
	if id.AgentID != "claude-code" {
		t.Fatalf("matching --agent-id: %+v", id)
	}

	os.WriteFile(capFile, []byte("agent_id = \"x\"\n"), 0o600)
	if _, err := resolveIdentity("", capFile, "codex", Profile{}); err == nil || !strings.Contains(err.Error(), "no raw_token") {
		t.Fatalf("no token: %v", err)
	}
	os.WriteFile(capFile, []byte("raw_token = \"x\"\nagent_id = \n"), 0o600)
	if _, err := resolveIdentity("", capFile, "codex", Profile{}); err == nil || !strings.Contains(err.Error(), capFile+":2:") {
		t.Fatalf("bad TOML: %v", err)
	}
	if _, err := resolveIdentity("", filepath.Join(dir, "missing.toml"), "codex", Profile{}); err == nil {
		t.Fatal("missing capability file accepted")
	}
}

func TestChildEnv(t *testing.T) {
	base := []string{
		"PATH=/usr/bin", "HTTPS_PROXY=http://p:3128", "http_proxy=http://p", "No_Proxy=x", "ALL_PROXY=socks5://p",
		"ANTHROPIC_API_KEY=sk-ant", "OPENAI_API_KEY=sk", "SSL_CERT_FILE=/mine.pem", "HOME=/root", "PATH=/dup",
		"broken",
	}
	got := childEnv(base, envChange{
		Unset: []string{"*_API_KEY"},
		Set:   map[string]string{"SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt", "HOME": "/home/a", "EDITOR": "vi", "AAA": "1"},
	})
	want := []string{"PATH=/usr/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt", "HOME=/home/a", "AAA=1", "EDITOR=vi"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("childEnv:\n got %q\nwant %q", got, want)
	}
}

func TestNameserverAndResolvConf(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:15053": "127.0.0.1", "[::1]:15053": "::1", "0.0.0.0:53": "127.0.0.53", "": "127.0.0.53",
		"10.0.0.2": "10.0.0.2", "[::ffff:127.0.0.1]:53": "127.0.0.1",
	} {
		if got := nameserverFor(in); got != want {
			t.Errorf("nameserverFor(%q) = %q, want %q", in, got, want)
		}
	}
	got := string(newResolvConf([]byte("nameserver 8.8.8.8\nsearch corp.example\noptions  edns0 trust-ad\n#nameserver 1.1.1.1\n"), "127.0.0.1"))
	want := "# written by firma run: DNS goes to the firma sidecar\nnameserver 127.0.0.1\nsearch corp.example\noptions edns0 trust-ad\n"
	if got != want {
		t.Fatalf("resolv.conf:\n%s\nwant:\n%s", got, want)
	}
}

func TestSliceCgroup(t *testing.T) {
	for in, want := range map[string]string{
		"firma-agents.slice": "/firma.slice/firma-agents.slice",
		"agents.slice":       "/agents.slice",
		"a-b-c.slice":        "/a.slice/a-b.slice/a-b-c.slice",
		"-.slice":            "",
		"x.service":          "",
	} {
		if got := sliceCgroup(in); got != want {
			t.Errorf("sliceCgroup(%q) = %q, want %q", in, got, want)
		}
	}
}
