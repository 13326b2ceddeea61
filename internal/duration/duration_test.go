package duration

import (
	"strings"
	"testing"
	"time"

	"github.com/pelletier/go-toml/v2"
)

func TestDecode(t *testing.T) {
	type section struct {
		D Duration `toml:"d"`
	}
	for _, tc := range []struct {
		in   string
		want time.Duration
		err  string
	}{
		{`d = "1.5s"`, 1500 * time.Millisecond, ""},
		{`d = "10m"`, 10 * time.Minute, ""},
		{`d = "250ms"`, 250 * time.Millisecond, ""},
		{`d = 10`, 0, `duration 10 has no unit: write it as a string with one, e.g. "10s"`},
		{`d = 1.5`, 0, "has no unit"},
		{`d = "10"`, 0, "has no unit"},
		{`d = "soon"`, 0, `duration "soon"`},
	} {
		var s section
		err := toml.Unmarshal([]byte(tc.in), &s)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err = %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || s.D.Duration != tc.want {
			t.Errorf("%s = %v, %v; want %v", tc.in, s.D, err, tc.want)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	d := Of(90 * time.Second)
	b, _ := d.MarshalText()
	var back Duration
	if err := back.UnmarshalText(b); err != nil || back != d {
		t.Fatalf("%s → %v, %v", b, back, err)
	}
}
