package audit

import (
	"errors"
	"fmt"
	"time"

	"github.com/openfirma/firma/internal/duration"
)

// Config is [sidecar.audit].
type Config struct {
	FilePath       string `toml:"file_path"`
	SigningKeyPath string `toml:"signing_key_path"` // ECDSA P-256 PEM; "" ⇒ chained but unsigned
	// FsyncInterval bounds how much a power failure can lose: written lines are fsynced at most this
	// long after write(2). 0 ⇒ DefaultFsyncInterval. Write it as a string: "1s", "200ms".
	FsyncInterval duration.Duration `toml:"fsync_interval"`
	// MaxSizeBytes rotates the live file before a write once it has reached this size.
	// 0 ⇒ DefaultMaxSizeBytes.
	MaxSizeBytes int64 `toml:"max_size_bytes"`
	// MaxFiles keeps at most this many files, the live one included, deleting the oldest rotated
	// files after a rotation. 0 keeps every file.
	MaxFiles int `toml:"max_files"`
}

const (
	DefaultFsyncInterval = time.Second
	DefaultMaxSizeBytes  = 100 << 20
)

// DefaultConfig is [sidecar.audit] when the file leaves it out.
func DefaultConfig() Config {
	return Config{
		FilePath:      "audit.jsonl",
		FsyncInterval: duration.Of(DefaultFsyncInterval),
		MaxSizeBytes:  DefaultMaxSizeBytes,
	}
}

// Validate checks the section without touching the filesystem. Keys are named as in firma.toml.
func (c Config) Validate() error {
	var errs []error
	if c.FilePath == "" {
		errs = append(errs, errors.New("audit.file_path: must be set"))
	}
	if d := c.FsyncInterval.Duration; d != 0 && (d < time.Millisecond || d > time.Minute) {
		errs = append(errs, fmt.Errorf("audit.fsync_interval: %v is not between 1ms and 1m (write it as a string, e.g. \"1s\")", d))
	}
	if c.MaxSizeBytes < 0 {
		errs = append(errs, fmt.Errorf("audit.max_size_bytes: %d is negative", c.MaxSizeBytes))
	} else if c.MaxSizeBytes > 0 && c.MaxSizeBytes < 4096 {
		errs = append(errs, fmt.Errorf("audit.max_size_bytes: %d is below 4096", c.MaxSizeBytes))
	}
	if c.MaxFiles < 0 {
		errs = append(errs, fmt.Errorf("audit.max_files: %d is negative", c.MaxFiles))
	}
	return errors.Join(errs...)
}

// withDefaults fills the keys left at zero, so that a Config built by hand (or by a caller's own
// defaults that predate a key) still gets the documented behaviour.
func (c Config) withDefaults() Config {
	if c.FsyncInterval.Duration == 0 {
		c.FsyncInterval = duration.Of(DefaultFsyncInterval)
	}
	if c.MaxSizeBytes == 0 {
		c.MaxSizeBytes = DefaultMaxSizeBytes
	}
	return c
}
