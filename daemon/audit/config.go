package audit

import (
	"errors"
	"fmt"
	"slices"
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
	// Sinks are [[sidecar.audit.sinks]]: where each line is forwarded after it is in the file.
	Sinks []SinkConfig `toml:"sinks"`
	// RefusalRate and RefusalBurst bound the records of one class (kernel refusals, malformed
	// requests…) that one agent can put in the log: a token bucket per agent and class, refilled
	// at RefusalRate records/s up to RefusalBurst. Records beyond it are counted, and a "suppressed"
	// record says how many, for which agent and class, over which window. 0 ⇒ the defaults.
	RefusalRate  float64 `toml:"refusal_rate"`
	RefusalBurst int     `toml:"refusal_burst"`
	// RefusalWindow is the longest a run of suppressed records waits for its summary record.
	// 0 ⇒ DefaultRefusalWindow.
	RefusalWindow duration.Duration `toml:"refusal_window"`
}

const (
	DefaultFsyncInterval = time.Second
	DefaultMaxSizeBytes  = 100 << 20
	DefaultRefusalRate   = 10.0
	DefaultRefusalBurst  = 100
	DefaultRefusalWindow = 10 * time.Second
)

// DefaultConfig is [sidecar.audit] when the file leaves it out.
func DefaultConfig() Config {
	return Config{
		FilePath:      "audit.jsonl",
		FsyncInterval: duration.Of(DefaultFsyncInterval),
		MaxSizeBytes:  DefaultMaxSizeBytes,
		RefusalRate:   DefaultRefusalRate,
		RefusalBurst:  DefaultRefusalBurst,
		RefusalWindow: duration.Of(DefaultRefusalWindow),
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
	if c.RefusalRate < 0 || c.RefusalRate != c.RefusalRate || c.RefusalRate > 1e6 {
		errs = append(errs, fmt.Errorf("audit.refusal_rate: %v is not between 0 and 1e6 records/s", c.RefusalRate))
	}
	if c.RefusalBurst < 0 || c.RefusalBurst > 1_000_000 {
		errs = append(errs, fmt.Errorf("audit.refusal_burst: %d is not between 0 and 1000000", c.RefusalBurst))
	}
	if d := c.RefusalWindow.Duration; d != 0 && (d < 100*time.Millisecond || d > time.Hour) {
		errs = append(errs, fmt.Errorf("audit.refusal_window: %v is not between 100ms and 1h", d))
	}
	for i, s := range c.Sinks {
		errs = append(errs, s.validate(fmt.Sprintf("audit.sinks[%d].", i))...)
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
	if c.RefusalRate == 0 {
		c.RefusalRate = DefaultRefusalRate
	}
	if c.RefusalBurst == 0 {
		c.RefusalBurst = DefaultRefusalBurst
	}
	if c.RefusalWindow.Duration == 0 {
		c.RefusalWindow = duration.Of(DefaultRefusalWindow)
	}
	c.Sinks = slices.Clone(c.Sinks)
	for i := range c.Sinks {
		c.Sinks[i] = c.Sinks[i].withDefaults()
	}
	return c
}
