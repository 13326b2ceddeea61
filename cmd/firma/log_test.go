package main

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

func TestUniqueKeys(t *testing.T) {
	for _, tc := range []struct{ in, out string }{
		{`{"level":"info","component":"sidecar","component":"mitm","time":"t","message":"m"}` + "\n",
			`{"level":"info","component":"mitm","time":"t","message":"m"}` + "\n"},
		{`{"level":"info","component":"sidecar","message":"m"}` + "\n", `{"level":"info","component":"sidecar","message":"m"}` + "\n"},
		{`{"a":{"x":1,"x":2},"b":[1,{"c":"\u003c"}],"a":{"y":"z"}}` + "\n", `{"a":{"y":"z"},"b":[1,{"c":"\u003c"}]}` + "\n"},
		{"not json\n", "not json\n"},
	} {
		var b bytes.Buffer
		n, err := uniqueKeys{&b}.Write([]byte(tc.in))
		if err != nil || n != len(tc.in) || b.String() != tc.out {
			t.Errorf("%q: wrote %q (n=%d, %v), want %q", tc.in, b.String(), n, err, tc.out)
		}
	}
}

// TestNewLoggerShape: both formats, one component key, the level and message where expected.
func TestNewLoggerShape(t *testing.T) {
	var b bytes.Buffer
	log, err := newLogger(&b, "info", "json", "sidecar")
	if err != nil {
		t.Fatal(err)
	}
	sub := log.With().Str("component", "mitm").Logger()
	sub.Info().Str("host", "a.test").Msg("handshake")
	line := b.String()
	if strings.Count(line, `"component"`) != 1 || !strings.Contains(line, `"component":"mitm"`) ||
		!strings.HasPrefix(line, `{"level":"info"`) || !strings.Contains(line, `"message":"handshake"`) {
		t.Errorf("json: %s", line)
	}
	b.Reset()
	log, _ = newLogger(&b, "info", "text", "sidecar")
	sub = log.With().Str("component", "mitm").Logger()
	sub.Info().Msg("handshake")
	if strings.Count(b.String(), "component=") != 1 || !strings.Contains(b.String(), "INFO  handshake component=mitm") {
		t.Errorf("text: %s", b.String())
	}
	if _, err := newLogger(&b, "info", "yaml", "sidecar"); err == nil {
		t.Error("format yaml accepted")
	}
	if _, err := newLogger(&b, "loud", "json", "sidecar"); err == nil {
		t.Error("level loud accepted")
	}
}

// BenchmarkUniqueKeys is the cost the JSON format adds to a typical log line.
func BenchmarkUniqueKeys(b *testing.B) {
	for name, line := range map[string]string{
		"no repeat": `{"level":"info","component":"sidecar","agent_id":"claude-code","host":"api.anthropic.com","outcome":"ALLOW","time":"2026-01-02T03:04:05Z","message":"decision"}` + "\n",
		"repeat":    `{"level":"info","component":"sidecar","component":"mitm","agent_id":"claude-code","host":"api.anthropic.com","outcome":"ALLOW","time":"2026-01-02T03:04:05Z","message":"decision"}` + "\n",
	} {
		b.Run(name, func(b *testing.B) {
			w := uniqueKeys{io.Discard}
			p := []byte(line)
			b.ReportAllocs()
			for b.Loop() {
				w.Write(p)
			}
		})
	}
}
