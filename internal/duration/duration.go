// Package duration is the one Duration type of firma.toml: every duration key is a string with a
// unit ("1.5s", "250ms", "10m"). A bare number is an error, not a count of nanoseconds or seconds:
// `dial_timeout = 10` is refused with a message that says how to write it.
package duration

import (
	"fmt"
	"strings"
	"time"
)

// Duration is a time.Duration in a config file. It is a struct, not a named integer, so that the
// TOML decoder hands every value — numbers too — to UnmarshalText instead of storing an integer
// as nanoseconds.
type Duration struct{ time.Duration }

// Of returns d as a config Duration.
func Of(d time.Duration) Duration { return Duration{d} }

// UnmarshalText accepts Go duration syntax with a unit on every number.
func (d *Duration) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	v, err := time.ParseDuration(s)
	if err != nil {
		if isNumber(s) {
			return fmt.Errorf("duration %s has no unit: write it as a string with one, e.g. \"%ss\"", s, s)
		}
		return fmt.Errorf("duration %q: %w", s, err)
	}
	d.Duration = v
	return nil
}

// MarshalText writes the form UnmarshalText reads.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }

func isNumber(s string) bool {
	s = strings.TrimLeft(s, "+-")
	if s == "" {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && c != '.' && c != '_' && c != 'e' && c != 'E' {
			return false
		}
	}
	return true
}
