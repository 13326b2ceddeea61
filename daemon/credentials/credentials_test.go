package credentials

import (
	"bytes"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
	"github.com/rs/zerolog"
)

const secret = "sk-ant-SECRET-0123456789"

func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Config
		want string // "" = valid
	}{
		{"guide entry", Config{Host: "api.anthropic.com", Mode: "basic", Header: "x-api-key", ValueFromEnv: "K"}, ""},
		{"bearer", Config{Host: "api.openai.com", Mode: "bearer", ValueFromEnv: "K"}, ""},
		{"default mode", Config{Host: "api.x.com", Header: "x-token", ValueFromFile: "/run/k"}, ""},
		{"no host", Config{Mode: "basic", Header: "x", ValueFromEnv: "K"}, "host: must be set"},
		{"wildcard host", Config{Host: "*.anthropic.com", Header: "x", ValueFromEnv: "K"}, "not an exact host"},
		{"host with port", Config{Host: "api.x.com:443", Header: "x", ValueFromEnv: "K"}, "not an exact host"},
		{"bad mode", Config{Host: "a.com", Mode: "digest", Header: "x", ValueFromEnv: "K"}, `mode: "digest"`},
		{"basic without header", Config{Host: "a.com", Mode: "basic", ValueFromEnv: "K"}, "header: must be set"},
		{"bearer with prefix", Config{Host: "a.com", Mode: "bearer", Prefix: "Bearer ", ValueFromEnv: "K"}, "prefix: must be empty"},
		{"both sources", Config{Host: "a.com", Header: "x", ValueFromEnv: "K", ValueFromFile: "/f"}, "exclusive"},
		{"no source", Config{Host: "a.com", Header: "x"}, "one of value_from_env and value_from_file"},
		{"bad header", Config{Host: "a.com", Header: "x api", ValueFromEnv: "K"}, "not a valid header name"},
		{"reserved header", Config{Host: "a.com", Header: "Host", ValueFromEnv: "K"}, "cannot be injected"},
		{"prefix with newline", Config{Host: "a.com", Header: "x", Prefix: "a\r\nb", ValueFromEnv: "K"}, "CR, LF"},
	} {
		err := tc.c.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
	}
	dup := []Config{
		{Host: "api.x.com", Header: "x-api-key", ValueFromEnv: "A"},
		{Host: "API.x.com.", Header: "X-API-KEY", ValueFromEnv: "B"},
	}
	if err := ValidateAll(dup); err == nil || !strings.Contains(err.Error(), "credentials[1]: host api.x.com header X-Api-Key is already set by credentials[0]") {
		t.Errorf("duplicate: %v", err)
	}
}

// The guide's [[sidecar.credentials]] entry decodes strictly.
func TestDecodeGuideEntry(t *testing.T) {
	const doc = `
[[credentials]]
host = "api.anthropic.com"
mode = "basic"
header = "x-api-key"
value_from_env = "ANTHROPIC_API_KEY"
`
	var v struct {
		Credentials []Config `toml:"credentials"`
	}
	dec := toml.NewDecoder(strings.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatal(err)
	}
	if err := ValidateAll(v.Credentials); err != nil {
		t.Fatal(err)
	}
	if v.Credentials[0].ValueFromEnv != "ANTHROPIC_API_KEY" {
		t.Errorf("decoded %+v", v.Credentials)
	}
}

func TestMissingEnvAtStartup(t *testing.T) {
	var logs bytes.Buffer
	cfgs := []Config{
		{Host: "api.anthropic.com", Mode: "basic", Header: "x-api-key", ValueFromEnv: "ANTHROPIC_API_KEY"},
		{Host: "api.openai.com", Mode: "bearer", ValueFromEnv: "OPENAI_API_KEY"},
	}
	_, err := New(cfgs, env(map[string]string{"ANTHROPIC_API_KEY": secret, "OPENAI_API_KEY": ""}), zerolog.New(&logs))
	if !errors.Is(err, ErrMissingEnv) {
		t.Fatalf("error %v, want ErrMissingEnv", err)
	}
	if !strings.Contains(err.Error(), "credentials[1] (api.openai.com)") || !strings.Contains(err.Error(), "OPENAI_API_KEY") {
		t.Errorf("error does not name entry and variable: %v", err)
	}
	if strings.Contains(err.Error()+logs.String(), secret) {
		t.Error("secret leaked into the error or the log")
	}
}

func TestApplyBasicAndBearer(t *testing.T) {
	var logs bytes.Buffer
	in, err := New([]Config{
		{Host: "api.anthropic.com", Mode: "basic", Header: "x-api-key", ValueFromEnv: "ANTHROPIC_API_KEY"},
		{Host: "api.openai.com", Mode: "bearer", ValueFromEnv: "OPENAI_API_KEY"},
		{Host: "api.custom.test", Header: "Authorization", Prefix: "Token ", ValueFromEnv: "CUSTOM"},
	}, env(map[string]string{"ANTHROPIC_API_KEY": secret, "OPENAI_API_KEY": "sk-openai-SECRET\n", "CUSTOM": "c-SECRET"}),
		zerolog.New(&logs).Level(zerolog.DebugLevel))
	if err != nil {
		t.Fatal(err)
	}
	agent := func() http.Header {
		return http.Header{
			"X-Api-Key":           {"agent-key"},
			"Authorization":       {"Bearer agent-token"},
			"Proxy-Authorization": {"Basic Zm9vOmJhcg=="},
			"Content-Type":        {"application/json"},
		}
	}
	for _, tc := range []struct {
		host string
		want http.Header
	}{
		{"api.anthropic.com", http.Header{"X-Api-Key": {secret}, "Content-Type": {"application/json"}}},
		{"API.Anthropic.com.", http.Header{"X-Api-Key": {secret}, "Content-Type": {"application/json"}}},
		{"api.openai.com", http.Header{"Authorization": {"Bearer sk-openai-SECRET"}, "Content-Type": {"application/json"}}},
		{"api.custom.test", http.Header{"Authorization": {"Token c-SECRET"}, "Content-Type": {"application/json"}}},
		// Exact host only: a sibling or a subdomain gets nothing, and keeps the agent's own headers
		// except Proxy-Authorization.
		{"x.api.anthropic.com", http.Header{"X-Api-Key": {"agent-key"}, "Authorization": {"Bearer agent-token"}, "Content-Type": {"application/json"}}},
		{"anthropic.com", http.Header{"X-Api-Key": {"agent-key"}, "Authorization": {"Bearer agent-token"}, "Content-Type": {"application/json"}}},
	} {
		h := agent()
		if _, err := in.Apply(tc.host, h); err != nil {
			t.Fatal(err)
		}
		if !equalHeader(h, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.host, h, tc.want)
		}
	}
	if !in.Has("api.anthropic.com") || in.Has("anthropic.com") {
		t.Error("Has")
	}
	l := logs.String()
	if !strings.Contains(l, `"source":"env:ANTHROPIC_API_KEY"`) || strings.Contains(l, "SECRET") {
		t.Errorf("log lines: %s", l)
	}
}

func TestValueFromFileAtRequestTime(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key")
	var logs bytes.Buffer
	in, err := New([]Config{{Host: "api.x.test", Header: "x-api-key", ValueFromFile: path}}, env(nil), zerolog.New(&logs))
	if err != nil {
		t.Fatalf("a missing file is not a startup error: %v", err)
	}
	if !strings.Contains(logs.String(), "credential file not readable") {
		t.Errorf("no warning for the missing file: %s", logs.String())
	}

	h := http.Header{"X-Api-Key": {"agent"}}
	_, err = in.Apply("api.x.test", h)
	if !errors.Is(err, ErrInjectionFailed) || !strings.Contains(err.Error(), "credentials[0] (api.x.test)") {
		t.Fatalf("missing file: %v", err)
	}

	os.WriteFile(path, []byte(secret+"\n"), 0o600)
	h = http.Header{"X-Api-Key": {"agent"}}
	if _, err := in.Apply("api.x.test", h); err != nil || h.Get("X-Api-Key") != secret {
		t.Fatalf("got %v %v", h, err)
	}
	// Rotation takes effect on the next request.
	os.WriteFile(path, []byte("rotated-SECRET"), 0o600)
	h = http.Header{}
	in.Apply("api.x.test", h)
	if h.Get("X-Api-Key") != "rotated-SECRET" {
		t.Errorf("rotated value not used: %v", h)
	}
	for _, content := range []string{"", "  \n", "two\nlines-SECRET"} {
		os.WriteFile(path, []byte(content), 0o600)
		_, err := in.Apply("api.x.test", http.Header{})
		if !errors.Is(err, ErrInjectionFailed) {
			t.Errorf("file %q: %v", content, err)
		}
		if err != nil && strings.Contains(err.Error(), "SECRET") {
			t.Errorf("error leaks the file content: %v", err)
		}
	}
}

func equalHeader(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if strings.Join(v, "\x00") != strings.Join(b[k], "\x00") {
			return false
		}
	}
	return true
}
