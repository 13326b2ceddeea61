package main

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/openfirma/firma/version"
)

const versionUsage = `usage: firma version [--json]

Prints the release, the git commit the binary was built from ("modified" when the tree had
uncommitted changes), the commit's time and the Go toolchain. Same as firma --version.`

func versionCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("version", versionUsage)
	asJSON := fs.Bool("json", false, "print a JSON object: version, commit, modified, time, go")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	info := version.Get()
	if !*asJSON {
		_, err := fmt.Fprintln(stdout, info)
		return err
	}
	return json.NewEncoder(stdout).Encode(struct {
		Version  string `json:"version"`
		Commit   string `json:"commit"`
		Modified bool   `json:"modified"`
		Time     string `json:"time,omitempty"`
		Go       string `json:"go"`
	}{info.Version, info.Commit, info.Modified, info.Time, info.Go})
}
