package main

import (
	"bytes"
	"encoding"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// configField is one key of firma.toml, found by reflection on fileConfig.
type configField struct {
	key   string   // dotted, as the user writes it: "sidecar.audit.file_path"
	path  []string // the TOML tables and key, with "[]" for an array of tables, "*" for a map entry
	typ   reflect.Type
	index []int // to reach the field of a value: see fieldValue
}

// configFields lists every key of firma.toml below t, descending into embedded structs (whose
// keys are their parent's), tables, arrays of tables and tables of tables.
func configFields(t reflect.Type, path []string) []configField {
	var out []configField
	for i := range t.NumField() {
		f := t.Field(i)
		name, ok := tomlName(f)
		if !ok {
			continue
		}
		if f.Anonymous && name == "" {
			out = append(out, configFields(f.Type, path)...)
			continue
		}
		p := append(slices.Clone(path), name)
		ft := f.Type
		switch {
		case ft.Kind() == reflect.Struct && !isText(ft):
			out = append(out, configFields(ft, p)...)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			out = append(out, configFields(ft.Elem(), append(p, "[]"))...)
		case ft.Kind() == reflect.Map && ft.Elem().Kind() == reflect.Struct:
			out = append(out, configFields(ft.Elem(), append(p, "*"))...)
		default:
			var key []string
			for _, s := range p {
				if s != "[]" {
					key = append(key, s)
				}
			}
			out = append(out, configField{key: strings.Join(key, "."), path: p, typ: ft})
		}
	}
	return out
}

// tomlFor writes value at field f: the table header it needs ([a.b], [[a.b]], [a.b.x] for a map
// entry named x), then the key. It returns the document and the line of the key.
func tomlFor(f configField, value string) (string, int) {
	var header []string
	array := false
	for _, s := range f.path[:len(f.path)-1] {
		switch s {
		case "[]":
			array = true // one element; no firma.toml array of tables has tables inside (yet)
		case "*":
			header = append(header, "x")
		default:
			header = append(header, s)
		}
	}
	var b strings.Builder
	b.WriteString("# generated\n")
	switch {
	case len(header) == 0:
	case array:
		fmt.Fprintf(&b, "[[%s]]\n", strings.Join(header, "."))
	default:
		fmt.Fprintf(&b, "[%s]\n", strings.Join(header, "."))
	}
	fmt.Fprintf(&b, "%s = %s\n", f.path[len(f.path)-1], value)
	return b.String(), strings.Count(b.String(), "\n")
}

// TestEveryDurationKeyRefusesAnInteger: for every duration key of every section (found by
// reflection, so that a new key is covered without a word here), `key = 10` is an error naming
// the file, the line and the key, and `key = "1.5s"` decodes to 1.5 seconds.
func TestEveryDurationKeyRefusesAnInteger(t *testing.T) {
	dir := t.TempDir()
	var durations []configField
	for _, f := range configFields(reflect.TypeFor[fileConfig](), nil) {
		if f.typ.Name() == "Duration" && isText(f.typ) {
			durations = append(durations, f)
		}
	}
	// The keys there are today; more may come, fewer would mean the walk lost some.
	for _, want := range []string{"sidecar.transparent.sniff_timeout", "sidecar.upstream.dial_timeout",
		"sidecar.audit.fsync_interval", "sidecar.interceptor.https_mitm.handshake_timeout"} {
		if !slices.ContainsFunc(durations, func(f configField) bool { return f.key == want }) {
			t.Errorf("duration key %s not found by reflection", want)
		}
	}
	for _, f := range durations {
		t.Run(f.key, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(f.key, ".", "_")+".toml")
			for _, bad := range []string{"10", "1.5", "true"} {
				doc, line := tomlFor(f, bad)
				_, err := parseConfig(path, []byte(doc))
				want := fmt.Sprintf("%s:%d:", path, line)
				if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), f.key) {
					t.Errorf("%s = %s: err %v; want one naming %s and %s", f.key, bad, err, want, f.key)
				}
			}
			doc, _ := tomlFor(f, `"1.5s"`)
			cfg, err := parseConfig(path, []byte(doc))
			if err != nil {
				t.Fatalf("%s = \"1.5s\": %v", f.key, err)
			}
			v := fieldValue(reflect.ValueOf(cfg).Elem(), f.path)
			if !v.IsValid() {
				t.Fatalf("%s: not in the decoded config", f.key)
			}
			if text, err := v.Addr().Interface().(encoding.TextMarshaler).MarshalText(); err != nil || string(text) != "1.5s" {
				t.Errorf("%s = \"1.5s\" decoded to %s (%v)", f.key, text, err)
			}
			doc, line := tomlFor(f, `"10 parsecs"`)
			if _, err := parseConfig(path, []byte(doc)); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%s:%d:", path, line)) {
				t.Errorf("%s = \"10 parsecs\": %v", f.key, err)
			}
		})
	}
}

// fieldValue follows path in v: struct fields by TOML key (embedded structs included), the first
// element of a slice, the "x" entry of a map. Invalid when the path is not there.
func fieldValue(v reflect.Value, path []string) reflect.Value {
	for _, p := range path {
		switch p {
		case "[]":
			if v.Len() == 0 {
				return reflect.Value{}
			}
			v = v.Index(0)
		case "*":
			v = v.MapIndex(reflect.ValueOf("x"))
			if !v.IsValid() {
				return v
			}
		default:
			v = structField(v, p)
			if !v.IsValid() {
				return v
			}
		}
	}
	return v
}

func structField(v reflect.Value, key string) reflect.Value {
	t := v.Type()
	for i := range t.NumField() {
		name, ok := tomlName(t.Field(i))
		switch {
		case !ok:
		case t.Field(i).Anonymous && name == "":
			if f := structField(v.Field(i), key); f.IsValid() {
				return f
			}
		case name == key:
			return v.Field(i)
		}
	}
	return reflect.Value{}
}

// looksLikePath is the test's own, broader idea of a path key: any string key named like a file,
// directory, socket or schema. A key it matches must be resolved at load unless notRelative says
// why not; a key it does not match must be left alone.
func looksLikePath(key string) bool {
	leaf := key[strings.LastIndex(key, ".")+1:]
	for _, s := range []string{"_path", "_file", "_dir", "dir", "socket", "schema", "_cert", "_key", "_pem"} {
		if strings.HasSuffix(leaf, s) {
			return true
		}
	}
	return leaf == "file" || leaf == "path" || key == "run.sidecar"
}

// TestEveryPathKeyIsRelativeToTheFile sets every string and []string key of firma.toml (found by
// reflection) to a relative value, loads the file from a directory that is not the working
// directory, and checks that exactly the path keys now point below the file's directory.
func TestEveryPathKeyIsRelativeToTheFile(t *testing.T) {
	var fields []configField
	for _, f := range configFields(reflect.TypeFor[fileConfig](), nil) {
		isList := f.typ.Kind() == reflect.Slice && f.typ.Elem().Kind() == reflect.String
		if f.typ.Kind() != reflect.String && !isList || isText(f.typ) {
			continue
		}
		fields = append(fields, f)
	}
	// One document with every key: tables in the order configFields found them.
	cfg := parsedWithEvery(t, fields)
	dir := filepath.Dir(cfg.path)
	var resolved []string
	for _, f := range fields {
		v := fieldValue(reflect.ValueOf(cfg).Elem(), f.path)
		if !v.IsValid() {
			t.Errorf("%s: not set by the generated document", f.key)
			continue
		}
		rel := "rel/" + strings.ReplaceAll(f.key, ".", "_")
		got := v
		if v.Kind() == reflect.Slice {
			if v.Len() != 1 {
				t.Errorf("%s: %d elements", f.key, v.Len())
				continue
			}
			got = v.Index(0)
		}
		wantResolved := looksLikePath(f.key)
		if _, exempt := notRelative[f.key]; exempt {
			wantResolved = false
		}
		switch {
		case wantResolved && got.String() != filepath.Join(dir, rel):
			t.Errorf("%s = %q: not resolved against %s (a path key the loader does not know?)", f.key, got.String(), dir)
		case !wantResolved && got.String() != rel:
			t.Errorf("%s = %q: changed, but it is not a path", f.key, got.String())
		case wantResolved:
			resolved = append(resolved, f.key)
		}
	}
	for _, want := range []string{"sidecar.policy.dir", "sidecar.policy.schema", "sidecar.mapping.rules_path",
		"sidecar.audit.file_path", "sidecar.audit.signing_key_path", "sidecar.ca.dir", "sidecar.upstream.ca_file",
		"sidecar.control.socket", "sidecar.authority.public_key_path", "sidecar.authority.cache_dir",
		"sidecar.authority.revocation_file", "sidecar.agents.capability_file", "sidecar.credentials.value_from_file",
		"authority.policy_dir", "authority.issuance_policy_dir", "authority.revocation_file", "authority.key_file",
		"authority.schema", "run.sidecar"} {
		if !slices.Contains(resolved, want) {
			t.Errorf("%s is not among the resolved keys", want)
		}
	}
	for key := range notRelative {
		if !slices.ContainsFunc(fields, func(f configField) bool { return f.key == key }) {
			t.Errorf("notRelative names %s, which is not a key", key)
		}
	}
}

// parsedWithEvery writes a firma.toml setting every field to "rel/<key>" into a fresh directory
// and loads it from another working directory.
func parsedWithEvery(t *testing.T, fields []configField) *fileConfig {
	t.Helper()
	tables := map[string][]string{}
	var order []string
	for _, f := range fields {
		doc, _ := tomlFor(f, "")
		lines := strings.Split(strings.TrimSpace(doc), "\n")
		header := ""
		if len(lines) == 3 {
			header = lines[1]
		}
		value := fmt.Sprintf("%q", "rel/"+strings.ReplaceAll(f.key, ".", "_"))
		if f.typ.Kind() == reflect.Slice {
			value = "[" + value + "]"
		}
		if _, seen := tables[header]; !seen {
			order = append(order, header)
		}
		tables[header] = append(tables[header], fmt.Sprintf("%s = %s", f.path[len(f.path)-1], value))
	}
	var b bytes.Buffer
	for _, h := range order {
		if h != "" {
			b.WriteString(h + "\n")
		}
		b.WriteString(strings.Join(tables[h], "\n") + "\n\n")
	}
	dir := filepath.Join(t.TempDir(), "etc")
	os.Mkdir(dir, 0o755)
	path := filepath.Join(dir, "firma.toml")
	os.WriteFile(path, b.Bytes(), 0o600)
	t.Chdir(t.TempDir())
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	return cfg
}

// TestRelativeConfigPath: a relative -c resolves paths against the file's directory too, from any
// working directory.
func TestRelativeConfigPath(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "conf", "policies"), 0o755)
	os.WriteFile(filepath.Join(root, "conf", "firma.toml"), []byte("[sidecar.policy]\ndir = \"policies\"\n[sidecar.audit]\nfile_path = \"../log/audit.jsonl\"\n"), 0o600)
	t.Chdir(root)
	cfg, err := loadConfig("conf/firma.toml")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.Sidecar.Policy.Dir, filepath.Join(root, "conf", "policies"); got != want {
		t.Errorf("policy dir %q, want %q", got, want)
	}
	if got, want := cfg.Sidecar.Audit.FilePath, filepath.Join(root, "log", "audit.jsonl"); got != want {
		t.Errorf("audit file %q, want %q", got, want)
	}
	if got := cfg.Sidecar.Transparent.PinDir; got != "/sys/fs/bpf/firma" {
		t.Errorf("pin dir %q changed", got)
	}
}

// TestLogFormatKeys: [sidecar] and [authority] log_format take text or json; anything else is an
// error naming the key and the file.
func TestLogFormatKeys(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		doc, want string
	}{
		{"[sidecar]\nlog_format = \"json\"\n", ""},
		{"[sidecar]\nlog_format = \"text\"\n", ""},
		{"[sidecar]\nlog_format = \"yaml\"\n", `sidecar.log_format: "yaml": want text or json`},
		{"[authority]\nlog_format = \"logfmt\"\n", `authority.log_format: "logfmt": want text or json`},
	} {
		path := filepath.Join(dir, "firma.toml")
		os.WriteFile(path, []byte(tc.doc), 0o600)
		cfg, err := loadConfig(path)
		if err != nil {
			t.Fatal(err)
		}
		err = cfg.validateSidecar()
		if cfg.has["authority"] {
			err = cfg.validateAuthority()
		}
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v", tc.doc, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path)):
			t.Errorf("%q: err %v, want %q naming the file", tc.doc, err, tc.want)
		}
	}
	if got := logFormat("", "json"); got != "json" {
		t.Errorf("config json: %q", got)
	}
	if got := logFormat("text", "json"); got != "text" {
		t.Errorf("the flag overrides the config: %q", got)
	}
	if got := logFormat("", ""); got != "text" {
		t.Errorf("default: %q", got)
	}
}

// TestDefaultConfigPath: without -c, $FIRMA_CONFIG, else the system path.
func TestDefaultConfigPath(t *testing.T) {
	if got := configPath(""); got != systemConfigPath {
		t.Errorf("default %q", got)
	}
	if got := optionalConfigPath(""); got != "" {
		t.Errorf("optional without a file: %q", got)
	}
	t.Setenv(configEnv, "/somewhere/firma.toml")
	if got := configPath(""); got != "/somewhere/firma.toml" {
		t.Errorf("with $%s: %q", configEnv, got)
	}
	if got := optionalConfigPath(""); got != "/somewhere/firma.toml" {
		t.Errorf("optional with $%s (missing file: the command must say so): %q", configEnv, got)
	}
	if got := configPath("-c.toml"); got != "-c.toml" {
		t.Errorf("the flag: %q", got)
	}
	// Every command reads the same default: `firma ca show` names it when it is missing.
	var out, errb bytes.Buffer
	if code := run([]string{"ca", "show"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "/somewhere/firma.toml") {
		t.Errorf("ca show without -c: exit %d, %s", code, errb.String())
	}
	if code := run([]string{"check", "config"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "/somewhere/firma.toml") {
		t.Errorf("check config without FILE: exit %d, %s", code, errb.String())
	}
}
