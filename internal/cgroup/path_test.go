package cgroup

import (
	"strings"
	"testing"
)

func TestSlicePath(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{"firma-agents.slice", "/firma.slice/firma-agents.slice", ""},
		{"/firma-agents.slice/claude.service", "/firma.slice/firma-agents.slice/claude.service", ""},
		{"firma.slice/firma-agents.slice/claude.service", "/firma.slice/firma-agents.slice/claude.service", ""},
		{"a-b-c.slice/x.scope/sub", "/a.slice/a-b.slice/a-b-c.slice/x.scope/sub", ""},
		{"system.slice/foo.service", "/system.slice/foo.service", ""},
		{"firma-test-1234/agent", "/firma-test-1234/agent", ""},
		{"-.slice", "/", ""},
		{"/", "/", ""},
		{"other.slice/firma-agents.slice", "", "do not nest"},
		{"a--b.slice", "", "not a valid slice name"},
		{"../etc", "", ". or .."},
	} {
		got, err := SlicePath(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: err = %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}
