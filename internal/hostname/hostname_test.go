package hostname

import "testing"

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		name string
		port int
		bad  bool
	}{
		{"API.Example.COM.", "api.example.com", 0, false},
		{"example.com:8443", "example.com", 8443, false},
		{"[::1]:80", "::1", 80, false},
		{"[::ffff:127.0.0.1]", "127.0.0.1", 0, false},
		{"::FFFF:7F00:1", "127.0.0.1", 0, false},
		{"fe80::1%eth0", "", 0, true},
		{"ex ample.com", "", 0, true},
		{"example.com:0", "", 0, true},
		{"example.com:+80", "", 0, true},
		{"a..b", "", 0, true},
		{"", "", 0, true},
		{"under_score.example", "under_score.example", 0, false},
	} {
		name, port, err := Parse(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("%q accepted as %q:%d", tc.in, name, port)
			}
			continue
		}
		if err != nil || name != tc.name || port != tc.port {
			t.Errorf("%q = %q, %d, %v; want %q, %d", tc.in, name, port, err, tc.name, tc.port)
		}
	}
}

func TestNormalize(t *testing.T) {
	for in, want := range map[string]string{
		"Example.COM.":    "example.com",
		"[2001:DB8::1]":   "2001:db8::1",
		"::ffff:10.0.0.1": "10.0.0.1",
		"Bad Host.":       "bad host", // not a name: lowercased only, matches nothing
	} {
		if got := Normalize(in); got != want {
			t.Errorf("Normalize(%q) = %q, want %q", in, got, want)
		}
	}
}
