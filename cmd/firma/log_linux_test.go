//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/internal/e2e"
)

// TestJSONLogsOfSidecarAndAuthority runs a real authority and a real sidecar that follows it, both
// with log_format = "json" in firma.toml, and parses every line they write strictly: one JSON
// object a line, no key twice at any depth, and the same time, level, message and component keys.
func TestJSONLogsOfSidecarAndAuthority(t *testing.T) {
	auth := e2e.NewAuthority(t, e2e.AuthorityOptions{})
	auth.Kill(t)
	appendFile(t, auth.ConfigPath, "log_format = \"json\"\n")
	auth.Start(t)

	s := e2e.PrepareSidecar(t, e2e.SidecarOptions{ExtraTOML: auth.SidecarTOML(filepath.Join(t.TempDir(), "cache"))})
	cfg, _ := os.ReadFile(s.ConfigPath)
	os.WriteFile(s.ConfigPath, bytes.Replace(cfg, []byte("log_level = \"debug\"\n"), []byte("log_level = \"debug\"\nlog_format = \"json\"\n"), 1), 0o600)
	s.Start(t)
	// A flow, so that the sidecar logs from its deeper components too.
	s.Run(t, "curl", "-sS", "--max-time", "5", "http://127.0.0.1:9/")
	s.WaitEvent(t, "for the flow", func(audit.Event) bool { return true })
	s.Stop(t)
	auth.Kill(t)

	components := map[string]bool{}
	for who, logs := range map[string]string{"sidecar": s.Logs(), "authority": auth.Logs()} {
		lines := strings.Split(strings.TrimSpace(logs), "\n")
		if strings.TrimSpace(logs) == "" || who == "sidecar" && len(lines) < 10 {
			t.Fatalf("%s wrote %d lines:\n%s", who, len(lines), logs)
		}
		for i, line := range lines {
			obj, err := strictObject(line)
			if err != nil {
				t.Errorf("%s line %d: %v\n%s", who, i+1, err, line)
				continue
			}
			for _, k := range []string{"time", "level", "message", "component"} {
				if _, ok := obj[k].(string); !ok {
					t.Errorf("%s line %d has no string %q: %s", who, i+1, k, line)
				}
			}
			if ts, _ := obj["time"].(string); ts != "" {
				if _, err := time.Parse(time.RFC3339, ts); err != nil {
					t.Errorf("%s line %d: time %q is not RFC 3339", who, i+1, ts)
				}
			}
			c, _ := obj["component"].(string)
			components[c] = true
		}
	}
	// Lines from sub-loggers that set component again carry theirs, once.
	for _, c := range []string{"sidecar", "authority", "policy", "audit", "bpf"} {
		if !components[c] {
			t.Errorf("no line with component %q (have %v)", c, slices.Sorted(maps.Keys(components)))
		}
	}
}

// strictObject decodes one JSON object, refusing trailing data and a key repeated in any object.
func strictObject(line string) (map[string]any, error) {
	dec := json.NewDecoder(strings.NewReader(line))
	dec.UseNumber()
	v, err := strictValue(dec)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("trailing data after the object")
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("not an object")
	}
	return obj, nil
}

func strictValue(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch tok {
	case json.Delim('{'):
		obj := map[string]any{}
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return nil, err
			}
			key := k.(string)
			if _, dup := obj[key]; dup {
				return nil, fmt.Errorf("key %q twice", key)
			}
			if obj[key], err = strictValue(dec); err != nil {
				return nil, err
			}
		}
		_, err := dec.Token()
		return obj, err
	case json.Delim('['):
		var arr []any
		for dec.More() {
			v, err := strictValue(dec)
			if err != nil {
				return nil, err
			}
			arr = append(arr, v)
		}
		_, err := dec.Token()
		return arr, err
	}
	return tok, nil
}

func appendFile(t *testing.T, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
}
