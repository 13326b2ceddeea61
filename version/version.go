// Package version says which firma this is: the release (set at link time by `make build`) and the
// git commit the binary was built from (recorded by the Go toolchain). It owns nothing else and
// imports nothing of firma's, so that every package may report it.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// Set at link time by `make build` (-ldflags "-X github.com/openfirma/firma/version.Version=…"):
// the release (git describe; empty without a tag), and the commit and whether the tree had
// uncommitted changes ("true"), for builds the Go toolchain does not stamp itself (git worktrees,
// -buildvcs=false).
var (
	Version  string
	Commit   string
	Modified string
)

// Info is what a binary knows about how it was built.
type Info struct {
	Version  string // Version, else the module version (`go install …@v1.2.3`), else "dev"
	Commit   string // vcs.revision: the full git commit, "" when built outside a checkout
	Modified bool   // vcs.modified: built from a tree with uncommitted changes
	Time     string // vcs.time: the commit's time (RFC 3339), "" when unknown
	Go       string // the toolchain, e.g. go1.26.8
}

// Get reads the build information of the running binary.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return fromBuildInfo(Info{Version: Version, Commit: Commit, Modified: Modified == "true"}, bi)
}

// fromBuildInfo completes what was linked in with what the toolchain recorded, which wins.
func fromBuildInfo(linked Info, bi *debug.BuildInfo) Info {
	info := linked
	info.Go = runtime.Version()
	if bi == nil {
		if info.Version == "" {
			info.Version = "dev"
		}
		return info
	}
	if bi.GoVersion != "" {
		info.Go = bi.GoVersion
	}
	if info.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		info.Version = bi.Main.Version
	}
	if info.Version == "" {
		info.Version = "dev"
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if rev := settings["vcs.revision"]; rev != "" {
		info.Commit, info.Modified, info.Time = rev, settings["vcs.modified"] == "true", settings["vcs.time"]
	}
	return info
}

// String is one line: "firma v0.2.0 (commit 0123456789ab, modified, 2026-01-02T03:04:05Z, go1.26.8)".
func (i Info) String() string {
	var parts []string
	if i.Commit != "" {
		c := i.Commit
		if len(c) > 12 {
			c = c[:12]
		}
		parts = append(parts, "commit "+c)
		if i.Modified {
			parts = append(parts, "modified")
		}
	} else {
		parts = append(parts, "commit unknown")
	}
	if i.Time != "" {
		parts = append(parts, i.Time)
	}
	parts = append(parts, i.Go)
	return fmt.Sprintf("firma %s (%s)", i.Version, strings.Join(parts, ", "))
}

// String is Get().String().
func String() string { return Get().String() }
