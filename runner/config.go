package runner

// Config is the [run] section of firma.toml.
type Config struct {
	Sidecar string `toml:"sidecar"` // control socket path; "" = /run/firma/control.sock
}

// DefaultConfig returns the defaults that apply to keys a file leaves out.
func DefaultConfig() Config { return Config{} }
