package audit

// Config is [sidecar.audit].
type Config struct {
	FilePath       string `toml:"file_path"`
	SigningKeyPath string `toml:"signing_key_path"` // ECDSA P-256 PEM; "" ⇒ chained but unsigned
}
