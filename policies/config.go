package policies

// Config is [sidecar.policy]: where the local policy set lives when no authority serves bundles.
type Config struct {
	Dir    string `toml:"dir"`    // directory of *.cedar files; "" = the embedded default set
	Schema string `toml:"schema"` // a user schema replacing the embedded firma.cedarschema; "" = embedded
}

// MappingConfig is [sidecar.mapping]: how raw intents are classified into action classes.
type MappingConfig struct {
	RulesPath        string `toml:"rules_path"`        // mapping-rules.toml; "" = the embedded default rules
	DefaultProtected bool   `toml:"default_protected"` // unmatched intent: true ⇒ DENY, false ⇒ PASSTHROUGH
}

// DefaultMappingConfig fails closed: an intent no rule classifies is denied.
func DefaultMappingConfig() MappingConfig { return MappingConfig{DefaultProtected: true} }
