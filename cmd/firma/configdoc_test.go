package main

import (
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// configKey is one key of firma.toml: its section ("sidecar.transparent", "sidecar.agents[]",
// "run.profiles.<name>") and its name.
type configKey struct{ section, name string }

func (k configKey) String() string { return k.section + "." + k.name }

// configKeys walks a config type and returns every key it decodes, by section. A struct field
// whose type is itself a section (a struct that is not decoded from text) opens a section; a slice
// of such structs is an array of tables (section "x[]"); a map of structs is a table per name
// (section "x.<name>").
func configKeys(t reflect.Type, section string) []configKey {
	var keys []configKey
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := strings.Split(f.Tag.Get("toml"), ",")[0]
		if tag == "-" {
			continue
		}
		if f.Anonymous && tag == "" {
			keys = append(keys, configKeys(f.Type, section)...)
			continue
		}
		if tag == "" {
			continue
		}
		sub := tag
		if section != "" {
			sub = section + "." + tag
		}
		ft := f.Type
		switch {
		case isSection(ft):
			keys = append(keys, configKeys(ft, sub)...)
		case ft.Kind() == reflect.Slice && isSection(ft.Elem()):
			keys = append(keys, configKeys(ft.Elem(), sub+"[]")...)
		case ft.Kind() == reflect.Map && isSection(ft.Elem()):
			keys = append(keys, configKeys(ft.Elem(), sub+".<name>")...)
		default:
			keys = append(keys, configKey{section, tag})
		}
	}
	return keys
}

// isSection: a struct decoded key by key, not from one value (durations are text).
func isSection(t reflect.Type) bool {
	return t.Kind() == reflect.Struct && !reflect.PointerTo(t).Implements(textUnmarshaler)
}

// TestConfigurationDocumented fails when firma.toml gains a key docs/configuration.md does not
// document: every section has a heading "## [section]" (or "### …"), and every key a table row
// "| `key` |" under it.
func TestConfigurationDocumented(t *testing.T) {
	data, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]map[string]bool{}
	heading := regexp.MustCompile("^#{2,4} `?\\[\\[?([a-z0-9_.<>]+)\\]?\\]`?")
	row := regexp.MustCompile("^\\| `([a-z0-9_]+)` \\|")
	current := ""
	for _, line := range strings.Split(string(data), "\n") {
		if m := heading.FindStringSubmatch(line); m != nil {
			current = m[1]
			if strings.HasPrefix(line, "#") && strings.Contains(line, "[[") {
				current += "[]"
			}
			if documented[current] == nil {
				documented[current] = map[string]bool{}
			}
			continue
		}
		if m := row.FindStringSubmatch(line); m != nil && current != "" {
			documented[current][m[1]] = true
		}
	}
	keys := configKeys(reflect.TypeFor[fileConfig](), "")
	if len(keys) < 100 {
		t.Fatalf("found only %d keys: the walk is broken", len(keys))
	}
	var missing []string
	for _, k := range keys {
		if !documented[k.section][k.name] {
			missing = append(missing, k.String())
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("docs/configuration.md does not document %d key(s) (a heading `## [section]`, a row \"| `key` |\"):\n  %s",
			len(missing), strings.Join(missing, "\n  "))
	}
	// And nothing documented that does not exist.
	known := map[string]bool{}
	for _, k := range keys {
		known[k.String()] = true
	}
	var stale []string
	for section, names := range documented {
		for name := range names {
			if !known[section+"."+name] {
				stale = append(stale, section+"."+name)
			}
		}
	}
	sort.Strings(stale)
	if len(stale) > 0 {
		t.Errorf("docs/configuration.md documents keys firma.toml does not have:\n  %s", strings.Join(stale, "\n  "))
	}
}

// TestConfigurationExamplesParse fails when an example of docs/configuration.md (a ```toml block)
// would not be read: a misspelled or removed key, a wrong type, a bare number for a duration.
func TestConfigurationExamplesParse(t *testing.T) {
	data, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	var block []string
	in, start, n := false, 0, 0
	for i, line := range strings.Split(string(data), "\n") {
		switch {
		case !in && strings.TrimSpace(line) == "```toml":
			in, start, block = true, i+1, nil
		case in && strings.TrimSpace(line) == "```":
			in = false
			n++
			if _, err := parseConfig("configuration.md", []byte(strings.Join(block, "\n"))); err != nil {
				t.Errorf("docs/configuration.md:%d: the example does not parse: %v", start, err)
			}
		case in:
			block = append(block, line)
		}
	}
	if n < 15 {
		t.Fatalf("found only %d toml examples: the scan is broken", n)
	}
}
