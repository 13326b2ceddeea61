package authority

// Config is the [authority] section of firma.toml, as the guide writes it.
type Config struct {
	ListenAddr        string `toml:"listen_addr"`
	PolicyDir         string `toml:"policy_dir"`
	IssuancePolicyDir string `toml:"issuance_policy_dir"`
	RevocationFile    string `toml:"revocation_file"`
	KeyFile           string `toml:"key_file"`
	MaxTTLSeconds     int64  `toml:"max_ttl_seconds"`
	BundleTTLSeconds  int64  `toml:"bundle_ttl_seconds"`
	LogLevel          string `toml:"log_level"`
}

// DefaultConfig returns the defaults that apply to keys a file leaves out.
func DefaultConfig() Config {
	return Config{
		ListenAddr:       "[::1]:50051",
		MaxTTLSeconds:    28800,
		BundleTTLSeconds: 60,
		LogLevel:         "info",
	}
}
