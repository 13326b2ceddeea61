package version

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	bi := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/openfirma/firma", Version: "(devel)"},
		Settings: []debug.BuildSetting{
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
			{Key: "vcs.time", Value: "2026-01-02T03:04:05Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	for _, tc := range []struct {
		name, linked, module string
		settings             bool
		want                 string
	}{
		{"linked", "v0.2.0-3-gabc", "(devel)", true, "firma v0.2.0-3-gabc (commit 0123456789ab, modified, 2026-01-02T03:04:05Z, go1.26.8)"},
		{"go install", "", "v0.2.0", true, "firma v0.2.0 (commit 0123456789ab, modified, 2026-01-02T03:04:05Z, go1.26.8)"},
		{"devel", "", "(devel)", true, "firma dev (commit 0123456789ab, modified, 2026-01-02T03:04:05Z, go1.26.8)"},
		{"no vcs", "", "(devel)", false, "firma dev (commit unknown, go1.26.8)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := *bi
			b.Main.Version = tc.module
			if !tc.settings {
				b.Settings = nil
			}
			if got := fromBuildInfo(Info{Version: tc.linked}, &b).String(); got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
	if got := fromBuildInfo(Info{}, nil); got.Version != "dev" || !strings.HasPrefix(got.Go, "go") {
		t.Errorf("no build info: %+v", got)
	}
	// Not stamped by the toolchain (a git worktree, -buildvcs=false): the linked commit stands.
	b := *bi
	b.Settings = nil
	linked := Info{Commit: "fedcba9876543210fedcba9876543210fedcba98", Modified: true}
	if got := fromBuildInfo(linked, &b).String(); !strings.HasPrefix(got, "firma dev (commit fedcba987654, modified, go") {
		t.Errorf("linked commit: %q", got)
	}
}
