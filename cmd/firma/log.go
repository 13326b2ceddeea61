package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// newLogger builds the process logger: human-readable lines ("INFO sidecar ready …") for format
// "text" (the default), JSON lines for "json".
func newLogger(w io.Writer, level, format, component string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(strings.ToLower(level))
	if err != nil || level == "" {
		return zerolog.Logger{}, fmt.Errorf("log level %q: want trace, debug, info, warn or error", level)
	}
	if format == "" {
		format = "text"
	}
	var out io.Writer
	switch format {
	case "json":
		out = w
	case "text":
		out = zerolog.ConsoleWriter{
			Out:        w,
			NoColor:    true,
			TimeFormat: time.RFC3339,
			FormatLevel: func(i any) string {
				s, _ := i.(string)
				return fmt.Sprintf("%-5s", strings.ToUpper(s))
			},
		}
	default:
		return zerolog.Logger{}, fmt.Errorf("log format %q: want text or json", format)
	}
	return zerolog.New(out).Level(lvl).With().Timestamp().Str("component", component).Logger(), nil
}
