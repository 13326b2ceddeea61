package main

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/rs/zerolog"

	"github.com/openfirma/firma/internal/logfields"
)

// logFormats are the values of log_format and --log-format.
var logFormats = []string{"text", "json"}

// checkLogFormat validates a log_format key ("" is the default, text).
func checkLogFormat(key, format string) error {
	if format == "" {
		return nil
	}
	for _, f := range logFormats {
		if format == f {
			return nil
		}
	}
	return fmt.Errorf("%s: %q: want %s", key, format, strings.Join(logFormats, " or "))
}

// logFormat picks the format: the flag when given, else the config key, else text.
func logFormat(flagValue, configValue string) string {
	switch {
	case flagValue != "":
		return flagValue
	case configValue != "":
		return configValue
	}
	return "text"
}

// newLogger builds a process logger, the same shape for every command: human-readable lines
// ("2026-01-02T03:04:05Z INFO  sidecar ready component=sidecar …") for format "text", JSON lines for
// "json" — one object per line with "time" (RFC 3339), "level", "message" and "component", and no key
// twice: a package that sets a field its caller already set (a sub-logger's "component") replaces
// it rather than repeating it.
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
		out = uniqueKeys{w}
	case "text":
		// ConsoleWriter reads each event into a map, so a repeated key is printed once (the last).
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
		return zerolog.Logger{}, checkLogFormat("log format", format)
	}
	return zerolog.New(out).Level(lvl).With().Timestamp().Str(logfields.Component, component).Logger(), nil
}

// uniqueKeys writes zerolog's JSON lines (one event per Write) with each top-level key once: a
// repeated key keeps its first position and takes its last value. A line with no repeated key (the
// common case, checked by jsontext's RFC 7493 validation) and a line that is not a JSON object are
// written as they are.
type uniqueKeys struct{ w io.Writer }

func (u uniqueKeys) Write(p []byte) (int, error) {
	line := p
	if !jsontext.Value(bytes.TrimRight(p, "\n")).IsValid() {
		if out, ok := dedupKeys(p); ok {
			line = out
		}
	}
	if _, err := u.w.Write(line); err != nil {
		return 0, err
	}
	return len(p), nil
}

type lineDecoder struct {
	r   bytes.Reader
	dec jsontext.Decoder
}

// decoders are reused: a fresh jsontext.Decoder costs more than the line it reads.
var decoders = sync.Pool{New: func() any { return new(lineDecoder) }}

// dedupKeys returns p with repeated top-level keys merged, or ok=false when p is not one JSON
// object or repeats no key.
func dedupKeys(p []byte) (out []byte, ok bool) {
	d := decoders.Get().(*lineDecoder)
	defer decoders.Put(d)
	d.r.Reset(p)
	d.dec.Reset(&d.r, jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))
	dec := &d.dec
	if tok, err := dec.ReadToken(); err != nil || tok.Kind() != '{' {
		return nil, false
	}
	type field struct {
		name  string
		value []byte
	}
	var fields []field
	dup := false
	for dec.PeekKind() != '}' {
		name, err := dec.ReadToken()
		if err != nil || name.Kind() != '"' {
			return nil, false
		}
		k := name.String() // before the next read voids the token
		raw, err := dec.ReadValue()
		if err != nil {
			return nil, false
		}
		end := int(dec.InputOffset())
		v := p[end-len(raw) : end] // raw is voided by the next read; p is not
		i := slices.IndexFunc(fields, func(f field) bool { return f.name == k })
		if i < 0 {
			fields = append(fields, field{k, v})
			continue
		}
		dup = true
		fields[i].value = v
	}
	if !dup {
		return nil, false
	}
	b := make([]byte, 0, len(p))
	b = append(b, '{')
	for i, f := range fields {
		if i > 0 {
			b = append(b, ',')
		}
		b, _ = jsontext.AppendQuote(b, f.name)
		b = append(b, ':')
		b = append(b, f.value...)
	}
	return append(b, "}\n"...), true
}
