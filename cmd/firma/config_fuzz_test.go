package main

import (
	"strings"
	"testing"
)

// FuzzParseConfig: any document either loads or is an error naming the file; nothing panics, and
// a loaded file's paths are absolute.
func FuzzParseConfig(f *testing.F) {
	f.Add("[sidecar.upstream]\ndial_timeout = 10\n")
	f.Add("[sidecar.upstream]\ndial_timeout = \"1.5s\"\nresolve = { \"a.test\" = \"127.0.0.2\" }\n")
	f.Add("[[sidecar.agents]]\ncgroup = \"a\"\nagent_id = \"x\"\ncapability_file = \"cap.toml\"\n")
	f.Add("sidecar.interceptor.https_mitm = { idle_timeout = 5, intercept_hosts = [\"a\"] }\n")
	f.Add("[run.profiles.x]\nread_only = [\"/etc\"]\n[authority]\nkey_file = \"k\"\n")
	f.Add("[sidecar\n")
	f.Fuzz(func(t *testing.T, doc string) {
		cfg, err := parseConfig("/etc/firma/firma.toml", []byte(doc))
		if err != nil {
			if !strings.Contains(err.Error(), "/etc/firma/firma.toml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		for _, p := range []string{cfg.Sidecar.Audit.FilePath, cfg.Sidecar.Policy.Dir, cfg.Authority.KeyFile} {
			if p != "" && !strings.HasPrefix(p, "/") {
				t.Fatalf("relative path %q survived the load of %q", p, doc)
			}
		}
	})
}
