package l7

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/daemon/credentials"
	"github.com/openfirma/firma/daemon/judge"

	"github.com/openfirma/firma/internal/testutil"
)

// The real injector behind the interceptor: the upstream sees the sidecar's x-api-key (from the
// sidecar's environment) and Bearer token (from a file), never the agent's; a credential file that
// disappears aborts the next request before any upstream byte; no secret reaches any log line.
func TestCredentialsEndToEnd(t *testing.T) {
	const (
		envSecret  = "sk-ant-ENV-SECRET-4242"
		fileSecret = "sk-openai-FILE-SECRET-7777"
	)
	keyFile := filepath.Join(t.TempDir(), "openai.key")
	if err := os.WriteFile(keyFile, []byte(fileSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &testutil.SyncBuffer{}
	inj, err := credentials.New([]credentials.Config{
		{Host: apiHost, Mode: credentials.ModeBasic, Header: "x-api-key", ValueFromEnv: "ANTHROPIC_API_KEY"},
		{Host: "openai.example.test", Mode: credentials.ModeBearer, ValueFromFile: keyFile},
	}, func(k string) (string, bool) {
		if k == "ANTHROPIC_API_KEY" {
			return envSecret, true
		}
		return "", false
	}, zerolog.New(logs).Level(zerolog.DebugLevel))
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOptions{creds: inj})
	anthropic := e.upstream(apiHost)
	openai := e.upstream("openai.example.test")

	agentHeaders := http.Header{"X-Api-Key": {"agent-key"}, "Authorization": {"Bearer agent-token"}}
	for _, h2 := range []bool{false, true} {
		c := e.client(h2)
		if st, _ := get(t, c, "POST", e.url(apiHost, "/v1/messages"), strings.NewReader("{}"), agentHeaders); st != 200 {
			t.Fatalf("anthropic: %d", st)
		}
		if st, _ := get(t, c, "GET", e.url("openai.example.test", "/v1/models"), nil, agentHeaders); st != 200 {
			t.Fatalf("openai: %d", st)
		}
	}
	for _, r := range anthropic.Requests() {
		if r.Header.Get("X-Api-Key") != envSecret || r.Header.Get("Authorization") != "" {
			t.Errorf("anthropic upstream saw x-api-key %q authorization %q", r.Header.Get("X-Api-Key"), r.Header.Get("Authorization"))
		}
	}
	for _, r := range openai.Requests() {
		if r.Header.Get("Authorization") != "Bearer "+fileSecret || r.Header.Get("X-Api-Key") != "" {
			t.Errorf("openai upstream saw authorization %q x-api-key %q", r.Header.Get("Authorization"), r.Header.Get("X-Api-Key"))
		}
	}

	// The key file goes away: ABORT, 502, and the upstream sees nothing more.
	os.Remove(keyFile)
	before := len(openai.Requests())
	st, body := get(t, e.client(false), "GET", e.url("openai.example.test", "/v1/models"), nil, nil)
	if st != 502 || strings.TrimSpace(body) != "firma: credential injection failed" {
		t.Errorf("missing key file: %d %q", st, body)
	}
	// Complete runs after the response is sent, so the failed request's need not be the last.
	var last judge.Result
	done := e.hooks.waitDone(t, 5)
	for _, dc := range done {
		if dc.res.ErrClass != "" {
			last = dc.res
		}
	}
	if last.ErrClass != judge.ErrorCredentials || !errors.Is(last.Err, credentials.ErrInjectionFailed) || last.UpstreamStatus != 0 {
		t.Errorf("result %+v", last)
	}
	if len(openai.Requests()) != before {
		t.Error("a request without its credential reached the upstream")
	}

	all := logs.String() + e.logs.String()
	for _, d := range done {
		all += d.res.ErrClass + " " + errString(d.res.Err) + " " + strings.Join(d.res.Injected, ",")
	}
	for _, s := range []string{envSecret, fileSecret} {
		if strings.Contains(all, s) {
			t.Errorf("secret %s appears in logs or results", s)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
