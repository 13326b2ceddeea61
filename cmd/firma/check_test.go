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
