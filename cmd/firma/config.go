package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/pelletier/go-toml/v2"

	"github.com/openfirma/firma/authority"
	"github.com/openfirma/firma/daemon"
	"github.com/openfirma/firma/runner"
)

// fileConfig is firma.toml: each package owns its section's type.
type fileConfig struct {
	Sidecar   daemon.Config    `toml:"sidecar"`
	Authority authority.Config `toml:"authority"`
	Run       runner.Config    `toml:"run"`

	path string
	// has records which top-level sections the file set, so that a command can say a section is
	// missing rather than run on defaults the user never asked for.
	has map[string]bool
}

// loadConfig decodes path strictly: an unknown key is an error naming the key, the file and the line.
// It validates nothing; call validate for the sections the command uses.
func loadConfig(path string) (*fileConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseConfig(path, data)
}

func parseConfig(path string, data []byte) (*fileConfig, error) {
	cfg := &fileConfig{
		Sidecar:   daemon.DefaultConfig(),
		Authority: authority.DefaultConfig(),
		Run:       runner.DefaultConfig(),
		path:      path,
		has:       map[string]bool{},
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
		return fmt.Errorf("%s:%d:%d: %s", path, row, col, strings.TrimPrefix(de.Error(), "toml: "))
	}
	return fmt.Errorf("%s: %w", path, err)
}

// validateSidecar runs the [sidecar] checks, naming the file in every error.
func (c *fileConfig) validateSidecar() error {
	if err := c.Sidecar.Validate(); err != nil {
		return fmt.Errorf("%s: %w", c.path, err)
	}
	return nil
}
