package policies

import (
	"embed"
	"io/fs"
	"path"
	"sync"
)

// The embedded defaults: the schema, the default policy set (default/*.cedar) and the default
// mapping rules. Their tests guarantee they load; a failure here is a build defect, so it panics.
var (
	//go:embed firma.cedarschema
	embeddedSchemaText []byte
	//go:embed default/*.cedar
	embeddedPolicyFS embed.FS
	//go:embed default/mapping-rules.toml
	embeddedRulesText []byte
)

const (
	embeddedSchemaName = "firma.cedarschema"
	embeddedRulesName  = "mapping-rules.toml (embedded)"
)

type embeddedDefaults struct {
	schema *Schema
	files  map[string][]byte
	set    *Set
	rules  *Rules
}

// loadEmbedded parses the defaults once, on first use. It is set in init because the loaders it
// calls fall back to the embedded schema themselves.
var loadEmbedded func() *embeddedDefaults

func init() { loadEmbedded = sync.OnceValue(parseEmbedded) }

func parseEmbedded() *embeddedDefaults {
	s, err := ParseSchema(embeddedSchemaName, embeddedSchemaText)
	if err != nil {
		panic("policies: embedded schema: " + err.Error())
	}
	d := &embeddedDefaults{schema: s, files: EmbeddedPolicyFiles()}
	if d.set, err = ParseFiles(d.files, s); err != nil {
		panic("policies: embedded policy set: " + err.Error())
	}
	if d.rules, err = ParseRules(embeddedRulesName, embeddedRulesText, s); err != nil {
		panic("policies: embedded mapping rules: " + err.Error())
	}
	return d
}

// EmbeddedPolicyFiles returns a copy of the default policy set's files, keyed by file name.
func EmbeddedPolicyFiles() map[string][]byte {
	out := map[string][]byte{}
	entries, _ := fs.ReadDir(embeddedPolicyFS, "default")
	for _, e := range entries {
		data, err := embeddedPolicyFS.ReadFile(path.Join("default", e.Name()))
		if err == nil {
			out[e.Name()] = data
		}
	}
	return out
}

// EmbeddedSet returns the default policy set, validated against the embedded schema.
func EmbeddedSet() *Set { return loadEmbedded().set }

// EmbeddedRules returns the default mapping rules.
func EmbeddedRules() *Rules { return loadEmbedded().rules }

// EmbeddedRulesText returns the default mapping rules file, e.g. for `firma policy` to print.
func EmbeddedRulesText() []byte { return append([]byte(nil), embeddedRulesText...) }
