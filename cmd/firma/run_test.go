package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/openfirma/firma/internal/testutil"
)

func TestRunFlags(t *testing.T) {
	dir := t.TempDir()
	badProfile := filepath.Join(dir, "bad.toml")
	os.WriteFile(badProfile, []byte("[run]\nprofile = \"nope\"\n"), 0o600)
	unknownKey := filepath.Join(dir, "unknown.toml")
	os.WriteFile(unknownKey, []byte("[run.profiles.codex]\nworkspaces = true\n"), 0o600)
	for _, tc := range []struct {
		args  []string
		usage bool
		want  string
	}{
		{[]string{}, true, "no command given"},
		{[]string{"--profile", "codex"}, true, "no command given"},
		{[]string{"--nope", "--", "true"}, true, "flag provided but not defined"},
		{[]string{"--log-level", "loud", "--", "true"}, true, "--log-level"},
		{[]string{"-c", badProfile, "--", "true"}, false, `run.profile: no profile named "nope"`},
		{[]string{"-c", unknownKey, "--", "true"}, false, unknownKey + `:2:1: unknown key "run.profiles.codex.workspaces"`},
		{[]string{"-c", filepath.Join(dir, "missing.toml"), "--", "true"}, false, "missing.toml"},
	} {
		var stderr bytes.Buffer
		err := runCmd(tc.args, &bytes.Buffer{}, &stderr)
		if err == nil || errors.Is(err, errUsage) != tc.usage || !strings.Contains(err.Error()+stderr.String(), tc.want) {
			t.Errorf("firma run %q: err %v (usage=%v), stderr %q; want %q", tc.args, err, errors.Is(err, errUsage), stderr.String(), tc.want)
		}
	}
}

// TestRunUsesTheSidecarSocketFromTheSameFile: with -c, firma run dials the socket [sidecar.control]
// names unless [run] sidecar says otherwise, and an absent sidecar is reported as such.
func TestRunUsesTheSidecarSocketFromTheSameFile(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "elsewhere.sock")
	cfg := filepath.Join(dir, "firma.toml")
	os.WriteFile(cfg, []byte("[sidecar.control]\nsocket = \""+sock+"\"\n"), 0o600)
	var stderr bytes.Buffer
	err := runCmd([]string{"-c", cfg, "--", "true"}, &bytes.Buffer{}, &stderr)
	var code exitCode
	if !errors.As(err, &code) || code == 0 {
		t.Fatalf("err = %v", err)
	}
	if !strings.Contains(stderr.String(), "firma sidecar is not running") || !strings.Contains(stderr.String(), sock) {
		t.Fatalf("stderr %q does not say the sidecar at %s is not running", stderr.String(), sock)
	}
}
