package authority

import "testing"

func TestScopeCovers(t *testing.T) {
	cases := []struct {
		scope, resource string
		want            bool
	}{
		// The guide's scope.
		{"*.anthropic.com*", "api.anthropic.com", true},
		{"*.anthropic.com*", "api.anthropic.com/v1/messages", true},
		{"*.anthropic.com*", "api.anthropic.com:443", true},
		{"*.anthropic.com*", "api.anthropic.com:443/v1/messages", true},
		{"*.anthropic.com*", "API.Anthropic.COM/v1/messages", true},
		{"*.anthropic.com*", "api.anthropic.com./v1", true},
		{"*.anthropic.com*", "a.b.anthropic.com/x", true},
		{"*.anthropic.com*", "anthropic.com", false},
		{"*.anthropic.com*", "anthropic.com.evil.io", false},
		{"*.anthropic.com*", "x.anthropic.com.evil.io", false},
		{"*.anthropic.com*", "x.anthropic.com.evil.io/v1/messages", false},
		{"*.anthropic.com*", "x.anthropic.community", false},
		{"*.anthropic.com*", "x.anthropic.com-evil.io", false},
		{"*.anthropic.com*", "x.anthropic.com_evil", false},
		{"*.anthropic.com*", "evilanthropic.com", false},
		{"*.anthropic.com*", "evil.io/x.anthropic.com", false},
		{"*.anthropic.com*", "x.anthropic.com@evil.io", false},
		{"*.anthropic.com*", ".anthropic.com", false},
		{"*.anthropic.com*", "", false},
		{"*.anthropic.com*", "x..anthropic.com", false},
		// A host without a trailing *: connection level only.
		{"api.anthropic.com", "api.anthropic.com", true},
		{"api.anthropic.com", "api.anthropic.com/v1/messages", false},
		{"api.anthropic.com", "api.anthropic.com.evil.io", false},
		// Rest wildcard after a plain host.
		{"api.anthropic.com*", "api.anthropic.com/v1/messages", true},
		{"api.anthropic.com*", "api.anthropic.com.evil.io", false},
		// Host wildcards after a separator keep matching host characters.
		{"api.*", "api.example.org/anything", true},
		{"api.*", "api.example.org", true},
		{"api.*", "apix.example.org", false},
		{"*.anthropic.com", "api.anthropic.com", true},
		{"*.anthropic.com", "api.anthropic.com/v1", false},
		// Path scopes.
		{"api.anthropic.com/v1/*", "api.anthropic.com/v1/messages", true},
		{"api.anthropic.com/v1/*", "api.anthropic.com/v1/a/b", true},
		{"api.anthropic.com/v1/*", "api.anthropic.com/v2/messages", false},
		{"api.anthropic.com/v1/*", "api.anthropic.com", false},
		{"api.anthropic.com/v1/*", "api.anthropic.com.evil.io/v1/messages", false},
		{"api.anthropic.com/*", "api.anthropic.com", true},
		{"api.anthropic.com/*", "api.anthropic.com/", true},
		{"*.anthropic.com/v1/*", "evil.io/x.anthropic.com/v1/a", false},
		{"*.anthropic.com/v1/*", "api.anthropic.com/v1/messages", true},
		{"api.anthropic.com/v1/messages", "api.anthropic.com/v1/messages", true},
		{"api.anthropic.com/v1/messages", "api.anthropic.com/v1/messages/x", false},
		{"api.anthropic.com/V1/*", "api.anthropic.com/v1/messages", false}, // paths are case-sensitive
		// Everything.
		{"*", "anything.example/at/all", true},
		{"*", "x", true},
		{"**", "x.y/z", true},
		// Invalid scopes cover nothing.
		{"", "api.anthropic.com", false},
		{"/v1/*", "api.anthropic.com/v1/x", false},
		{"*.anthropic.com:443", "api.anthropic.com:443", false},
		{"a b", "a b", false},
	}
	for _, tc := range cases {
		if got := ScopeCovers(tc.scope, tc.resource); got != tc.want {
			t.Errorf("ScopeCovers(%q, %q) = %v, want %v", tc.scope, tc.resource, got, tc.want)
		}
	}
}

func TestValidateScope(t *testing.T) {
	for _, ok := range []string{"*.anthropic.com*", "api.anthropic.com/v1/*", "*", "a-b_c.example/x?y=*"} {
		if err := ValidateScope(ok); err != nil {
			t.Errorf("ValidateScope(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "/path", "a b", "host:443", "ünï.example", "host\t", "a@b"} {
		if err := ValidateScope(bad); err == nil {
			t.Errorf("ValidateScope(%q) accepted it", bad)
		}
	}
}

func TestGlobMatch(t *testing.T) {
	any := func(byte) bool { return true }
	cases := []struct {
		p, s string
		want bool
	}{
		{"", "", true},
		{"", "a", false},
		{"*", "", true},
		{"a*b*c", "aXbYc", true},
		{"a*b*c", "abc", true},
		{"a*b*c", "acb", false},
		{"*a", "bbba", true},
		{"*a", "bbbab", false},
	}
	for _, tc := range cases {
		if got := globMatch(tc.p, tc.s, any); got != tc.want {
			t.Errorf("globMatch(%q, %q) = %v, want %v", tc.p, tc.s, got, tc.want)
		}
	}
	if globMatch("a*c", "a/c", isHostChar) {
		t.Error("host star crossed '/'")
	}
}
