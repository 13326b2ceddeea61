package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	pol := filepath.Join(dir, "policies")
	os.Mkdir(pol, 0o755)
	os.WriteFile(filepath.Join(pol, "ok.cedar"), []byte(`permit (principal, action == Firma::Action::"network.connect", resource);`+"\n"), 0o644)
	for _, tc := range []struct {
		name, toml string
		code       int
		want       string
	}{
		{"good", "[sidecar.policy]\ndir = \"" + pol + "\"\n", 0, "ok ([sidecar])"},
		{"unknown key", "[sidecar]\nlog_levl = \"info\"\n", 1, ":2:1: unknown key \"sidecar.log_levl\""},
		{"bad value", "[sidecar.transparent]\nport = 0\n", 1, "sidecar.transparent.port: must be set"},
		{"bad policy", "[sidecar.policy]\ndir = \"" + dir + "/missing\"\n", 1, "missing"},
		{"syntax", "[sidecar\n", 1, ":1:"},
		{"empty", "", 1, "no [sidecar], [authority] or [run] section"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name+".toml")
			os.WriteFile(path, []byte(tc.toml), 0o600)
			var out, errOut bytes.Buffer
			code := run([]string{"check", "config", path}, &out, &errOut)
			got := out.String() + errOut.String()
			if code != tc.code || !strings.Contains(got, tc.want) {
				t.Fatalf("exit %d, output %q; want exit %d containing %q", code, got, tc.code, tc.want)
			}
			if tc.code != 0 && !strings.Contains(got, path) {
				t.Fatalf("error does not name the file: %q", got)
			}
		})
	}
}

// TestCheckConfigFiles: check config resolves the file's paths against its own directory (from any
// working directory) and checks every file it names; it warns about a policy dir with no .cedar
// file (which denies everything) and fails on an unusable key, naming the key.
func TestCheckConfigFiles(t *testing.T) {
	root := t.TempDir()
	etc := filepath.Join(root, "etc")
	os.MkdirAll(filepath.Join(etc, "policies"), 0o755)
	os.MkdirAll(filepath.Join(etc, "empty"), 0o755)
	os.WriteFile(filepath.Join(etc, "policies", "ok.cedar"), []byte(`permit (principal, action == Firma::Action::"network.connect", resource);`+"\n"), 0o644)
	var out, errb bytes.Buffer
	if code := run([]string{"audit", "keygen", "--out", filepath.Join(etc, "audit.key")}, &out, &errb); code != 0 {
		t.Fatalf("keygen: %s", errb.String())
	}
	if code := run([]string{"authority", "generate-key", "-o", filepath.Join(etc, "authority.key")}, &out, &errb); code != 0 {
		t.Fatalf("generate-key: %s", errb.String())
	}
	base := `[sidecar.policy]
dir = "policies"
[sidecar.audit]
file_path = "../log/audit.jsonl"
signing_key_path = "audit.key"
[sidecar.control]
socket = "../run/control.sock"
[authority]
policy_dir = "policies"
issuance_policy_dir = "policies"
revocation_file = "revocations.txt"
key_file = "authority.key"
`
	t.Chdir(t.TempDir()) // nowhere near the config
	for _, tc := range []struct {
		name    string
		edit    func(string) string
		prepare func()
		code    int
		stdout  []string
		stderr  []string
	}{
		{name: "good", code: 0, stdout: []string{
			"config.policy: 1 policies from " + filepath.Join(etc, "policies"),
			"config.audit_key: " + filepath.Join(etc, "audit.key") + ": ECDSA P-256",
			"config.audit_dir: " + filepath.Join(root, "log", "audit.jsonl") + ": created under " + root,
			"authority.key: " + filepath.Join(etc, "authority.key") + ": Ed25519",
			"config.control_socket: " + filepath.Join(root, "run", "control.sock"),
			"ok ([sidecar] [authority])",
		}},
		{name: "no cedar files", edit: func(s string) string { return strings.Replace(s, `dir = "policies"`, `dir = "empty"`, 1) },
			code: 0, stderr: []string{"warning: ", "sidecar.policy.dir: " + filepath.Join(etc, "empty") + " holds no .cedar file: every request is denied"}},
		{name: "audit key readable by others", prepare: func() { os.Chmod(filepath.Join(etc, "audit.key"), 0o644) },
			code: 1, stderr: []string{"config.audit_key", "readable by group or others"}},
		{name: "missing authority key", edit: func(s string) string {
			return strings.Replace(s, `key_file = "authority.key"`, `key_file = "nope.key"`, 1)
		},
			code: 1, stderr: []string{"authority.key", filepath.Join(etc, "nope.key")}},
		{name: "missing policy dir", edit: func(s string) string { return strings.Replace(s, `dir = "policies"`, `dir = "gone"`, 1) },
			code: 1, stderr: []string{"config.policy", filepath.Join(etc, "gone")}},
		{name: "credential file missing", edit: func(s string) string {
			return s + "[[sidecar.credentials]]\nhost = \"api.example.com\"\nmode = \"bearer\"\nvalue_from_file = \"secret\"\n"
		}, code: 1, stderr: []string{"config.credentials[0]", filepath.Join(etc, "secret")}},
		{name: "unsafe socket dir", prepare: func() {
			os.MkdirAll(filepath.Join(root, "run"), 0o755)
			os.Chmod(filepath.Join(root, "run"), 0o777)
		}, code: 1, stderr: []string{"config.control_socket", "writable by group or others without the sticky bit"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Chmod(filepath.Join(etc, "audit.key"), 0o600)
			os.RemoveAll(filepath.Join(root, "run"))
			if tc.prepare != nil {
				tc.prepare()
			}
			doc := base
			if tc.edit != nil {
				doc = tc.edit(doc)
			}
			path := filepath.Join(etc, "firma.toml")
			os.WriteFile(path, []byte(doc), 0o600)
			var out, errb bytes.Buffer
			code := run([]string{"check", "config", path}, &out, &errb)
			if code != tc.code {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, out.String(), errb.String())
			}
			for _, w := range tc.stdout {
				if !strings.Contains(out.String(), w) {
					t.Errorf("stdout lacks %q:\n%s", w, out.String())
				}
			}
			for _, w := range tc.stderr {
				if !strings.Contains(errb.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, errb.String())
				}
			}
			if _, err := os.Stat(filepath.Join(root, "log")); err == nil {
				t.Error("check config created the audit log's directory")
			}
		})
	}
}
