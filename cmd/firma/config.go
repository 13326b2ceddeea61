package main

import (
	"bytes"
	"encoding"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"

	"github.com/openfirma/firma/authority"
	"github.com/openfirma/firma/daemon"
	"github.com/openfirma/firma/runner"
)

// configEnv names the config file every command reads when -c is not given.
const configEnv = "FIRMA_CONFIG"

// systemConfigPath is the config file of last resort: where the packaged units keep firma.toml.
// A variable so that tests can keep the host's file out of their way.
var systemConfigPath = "/etc/firma/firma.toml"

// configFlagUsage is the help of every command's -c.
var configFlagUsage = "config `FILE` (default $" + configEnv + ", else " + systemConfigPath + ")"

// configFlag adds -c and --config to fs. Pass its value to configPath or optionalConfigPath.
func configFlag(fs *flag.FlagSet) *string {
	p := new(string)
	fs.StringVar(p, "c", "", configFlagUsage)
	fs.StringVar(p, "config", "", "same as -c")
	return p
}

// configPath is the file a command that needs firma.toml reads: -c, else $FIRMA_CONFIG, else
// /etc/firma/firma.toml.
func configPath(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if p := os.Getenv(configEnv); p != "" {
		return p
	}
	return systemConfigPath
}

// optionalConfigPath is configPath for commands that can do without a config: "" when neither -c
// nor $FIRMA_CONFIG is given and /etc/firma/firma.toml does not exist.
func optionalConfigPath(flagValue string) string {
	p := configPath(flagValue)
	if flagValue == "" && os.Getenv(configEnv) == "" {
		if _, err := os.Stat(p); err != nil {
			return ""
		}
	}
	return p
}

// fileConfig is firma.toml: each package owns its section's type.
type fileConfig struct {
	Sidecar   sidecarSection   `toml:"sidecar"`
	Authority authoritySection `toml:"authority"`
	Run       runner.Config    `toml:"run"`

	path string
	// has records which top-level sections the file set, so that a command can say a section is
	// missing rather than run on defaults the user never asked for.
	has map[string]bool
}

// sidecarSection is [sidecar]: the daemon's keys and those of the process that runs it.
type sidecarSection struct {
	daemon.Config
	LogFormat string `toml:"log_format"` // "text" (default) or "json"; --log-format overrides
}

// authoritySection is [authority]: the authority's keys and those of the process that runs it.
type authoritySection struct {
	authority.Config
	LogFormat string `toml:"log_format"` // "text" (default) or "json"; --log-format overrides
}

// loadConfig decodes path strictly (an unknown key, or a duration given as a number, is an error
// naming the key, the file and the line) and makes every relative path in it relative to the file's
// directory. It validates nothing; call validate for the sections the command uses.
func loadConfig(path string) (*fileConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseConfig(path, data)
}

func parseConfig(path string, data []byte) (*fileConfig, error) {
	cfg := &fileConfig{
		Sidecar:   sidecarSection{Config: daemon.DefaultConfig()},
		Authority: authoritySection{Config: authority.DefaultConfig()},
		Run:       runner.DefaultConfig(),
		path:      path,
		has:       map[string]bool{},
	}
	if err := checkTextValues(path, data, reflect.TypeOf(cfg).Elem()); err != nil {
		return nil, err
	}
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		return nil, configError(path, err)
	}
	var top map[string]any
	if err := toml.Unmarshal(data, &top); err == nil {
		for k := range top {
			cfg.has[k] = true
		}
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	resolvePaths(reflect.ValueOf(cfg).Elem(), "", filepath.Dir(abs))
	return cfg, nil
}

// configError turns go-toml's errors into "file:line:col: message" lines.
func configError(path string, err error) error {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		var lines []string
		for _, e := range strict.Errors {
			row, col := e.Position()
			lines = append(lines, fmt.Sprintf("%s:%d:%d: unknown key %q", path, row, col, strings.Join(e.Key(), ".")))
		}
		return errors.New(strings.Join(lines, "\n"))
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, col := de.Position()
		msg := strings.TrimPrefix(de.Error(), "toml: ")
		if k := de.Key(); len(k) > 0 && !strings.Contains(msg, strings.Join(k, ".")) {
			msg = strings.Join(k, ".") + ": " + msg
		}
		return fmt.Errorf("%s:%d:%d: %s", path, row, col, msg)
	}
	return fmt.Errorf("%s: %w", path, err)
}

// validateSidecar runs the [sidecar] checks, naming the file in every error.
func (c *fileConfig) validateSidecar() error {
	return c.inFile(c.Sidecar.Validate(), checkLogFormat("sidecar.log_format", c.Sidecar.LogFormat))
}

// validateAuthority runs the [authority] checks, naming the file in every error.
func (c *fileConfig) validateAuthority() error {
	return c.inFile(c.Authority.Validate(), checkLogFormat("authority.log_format", c.Authority.LogFormat))
}

// inFile joins errs and names the config file in front of them.
func (c *fileConfig) inFile(errs ...error) error {
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%s: %w", c.path, err)
	}
	return nil
}

// Path keys. A string or []string key is a filesystem path, made relative to the config file's
// directory at load, when its name ends in one of pathSuffixes or is in pathKeys, unless
// notRelative lists it. A new key named like a path is resolved without further ado.
var (
	pathSuffixes = []string{"_path", "_file", "_dir", "dir", "socket"}
	pathKeys     = map[string]bool{
		"schema":      true, // [sidecar.policy] schema, [authority] schema
		"run.sidecar": true, // the control socket `firma run` dials
	}
	notRelative = map[string]string{
		"sidecar.transparent.pin_dir": "must be absolute and on bpffs; Validate says so rather than guess",
	}
)

// isPathKey reports whether key (dotted, with "[]" for list elements and "*" for map entries)
// names a filesystem path.
func isPathKey(key string) bool {
	if _, ok := notRelative[key]; ok {
		return false
	}
	if pathKeys[key] {
		return true
	}
	leaf := key[strings.LastIndex(key, ".")+1:]
	if pathKeys[leaf] {
		return true
	}
	for _, s := range pathSuffixes {
		if strings.HasSuffix(leaf, s) {
			return true
		}
	}
	return false
}

// resolvePaths makes every relative path key below v absolute against base.
func resolvePaths(v reflect.Value, key string, base string) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			resolvePaths(v.Elem(), key, base)
		}
	case reflect.Struct:
		t := v.Type()
		if isText(t) {
			return // a duration or another value read from text, not a table
		}
		for i := range t.NumField() {
			f := t.Field(i)
			name, ok := tomlName(f)
			switch {
			case !ok:
			case f.Anonymous && name == "":
				resolvePaths(v.Field(i), key, base)
			default:
				resolvePaths(v.Field(i), joinKey(key, name), base)
			}
		}
	case reflect.Slice, reflect.Array:
		if v.Type().Elem().Kind() == reflect.String {
			if isPathKey(key) {
				for i := range v.Len() {
					v.Index(i).SetString(resolvePath(base, v.Index(i).String()))
				}
			}
			return
		}
		for i := range v.Len() {
			resolvePaths(v.Index(i), key, base)
		}
	case reflect.Map:
		for _, k := range v.MapKeys() {
			e := reflect.New(v.Type().Elem()).Elem()
			e.Set(v.MapIndex(k))
			if e.Kind() == reflect.String {
				continue // map values are names and values ([sidecar.upstream] resolve, env), not paths
			}
			resolvePaths(e, key+".*", base)
			v.SetMapIndex(k, e)
		}
	case reflect.String:
		if isPathKey(key) && !isText(v.Type()) {
			v.SetString(resolvePath(base, v.String()))
		}
	}
}

func resolvePath(base, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(base, p)
}

// tomlName is the key of a struct field: ok is false for fields TOML never sets, name is "" for an
// embedded struct whose keys are its parent's.
func tomlName(f reflect.StructField) (name string, ok bool) {
	if !f.IsExported() {
		return "", false
	}
	tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
	switch {
	case tag == "-":
		return "", false
	case tag != "":
		return tag, true
	case f.Anonymous && f.Type.Kind() == reflect.Struct:
		return "", true
	}
	return f.Name, true
}

func joinKey(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

// isText reports whether t reads itself from a TOML string (durations, among others).
func isText(t reflect.Type) bool {
	return reflect.PointerTo(t).Implements(textUnmarshaler)
}

// checkTextValues refuses a number or boolean where the config type wants text: go-toml would store
// `dial_timeout = 10` in a Duration as 10 nanoseconds without a word. Errors name the file, line,
// column and key. A document that does not parse is left to the decoder to report.
func checkTextValues(path string, data []byte, root reflect.Type) error {
	var p unstable.Parser
	p.Reset(data)
	var errs []error
	table, tableKey := root, ""
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			table, tableKey = descend(root, "", keyParts(e))
		case unstable.KeyValue:
			t, key := descend(table, tableKey, keyParts(e))
			errs = append(errs, checkValue(&p, path, key, t, e.Value())...)
		}
	}
	if p.Error() != nil {
		return nil
	}
	return errors.Join(errs...)
}

func checkValue(p *unstable.Parser, path, key string, t reflect.Type, v *unstable.Node) []error {
	if t == nil {
		return nil // a key the decoder will call unknown
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch v.Kind {
	case unstable.Integer, unstable.Float, unstable.Bool:
		if !isText(t) {
			return nil
		}
		pos := p.Shape(v.Raw).Start
		want := "a string"
		if t.Name() == "Duration" {
			want = `a string with a unit, e.g. "10s", "1.5s", "500ms", "10m"`
		}
		kind := map[unstable.Kind]string{unstable.Integer: "an integer", unstable.Float: "a float", unstable.Bool: "a boolean"}[v.Kind]
		return []error{fmt.Errorf("%s:%d:%d: %s: %s is %s; want %s", path, pos.Line, pos.Column, key, p.Raw(v.Raw), kind, want)}
	case unstable.InlineTable:
		var errs []error
		it := v.Children()
		for it.Next() {
			kv := it.Node()
			ct, ckey := descend(t, key, keyParts(kv))
			errs = append(errs, checkValue(p, path, ckey, ct, kv.Value())...)
		}
		return errs
	case unstable.Array:
		if t.Kind() != reflect.Slice && t.Kind() != reflect.Array {
			return nil
		}
		var errs []error
		it := v.Children()
		for i := 0; it.Next(); i++ {
			errs = append(errs, checkValue(p, path, fmt.Sprintf("%s[%d]", key, i), t.Elem(), it.Node())...)
		}
		return errs
	}
	return nil
}

func keyParts(n *unstable.Node) []string {
	var parts []string
	it := n.Key()
	for it.Next() {
		parts = append(parts, string(it.Node().Data))
	}
	return parts
}

// descend follows keys from type t (a table's type): the struct field a key names, a map's or a
// list's element. It returns nil for a key t has no field for.
func descend(t reflect.Type, key string, parts []string) (reflect.Type, string) {
	for _, part := range parts {
		key = joinKey(key, part)
		for t != nil && (t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			t = t.Elem()
		}
		switch {
		case t == nil:
		case t.Kind() == reflect.Map:
			t = t.Elem()
		case t.Kind() == reflect.Struct:
			t = fieldType(t, part)
		default:
			t = nil
		}
	}
	return t, key
}

// fieldType is the type of the field of struct t whose TOML key is name, looking into embedded
// structs as go-toml does; nil when there is none.
func fieldType(t reflect.Type, name string) reflect.Type {
	for i := range t.NumField() {
		f := t.Field(i)
		n, ok := tomlName(f)
		switch {
		case !ok:
		case f.Anonymous && n == "":
			if ft := fieldType(f.Type, name); ft != nil {
				return ft
			}
		case n == name:
			return f.Type
		}
	}
	return nil
}
