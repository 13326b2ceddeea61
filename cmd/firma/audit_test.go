package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/daemon/audit"
)

// auditTestLog writes a signed log of 3 decisions with a rotation in the middle and returns the
// live path and the public key file.
func auditTestLog(t *testing.T) (dir, live, pub string) {
	t.Helper()
	dir = t.TempDir()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	key := filepath.Join(dir, "audit.key")
	os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	pder, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	pub = filepath.Join(dir, "audit.pub")
	os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pder}), 0o644)
	live = filepath.Join(dir, "audit.jsonl")
	w, err := audit.Open(audit.Config{FilePath: live, SigningKeyPath: key}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	for i, host := range []string{"api.anthropic.com", "paste.rs", "example.com"} {
		outcome := "ALLOW"
		if host == "paste.rs" {
			outcome = "DENY"
		}
		ev := &audit.Event{Kind: audit.KindDecision,
			Envelope: &audit.Envelope{Agent: audit.Agent{AgentID: "claude-code", PID: 100 + i, Exe: "/usr/bin/python3"},
				Intent: audit.Intent{Resource: audit.Resource{Host: host + ":443"}}},
			Decision: &audit.Decision{Outcome: outcome, MatchedPolicies: []string{"forbid_at_claude-code.cedar_19"}}}
		if err := w.Append(ev); err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			w.Rotate()
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return dir, live, pub
}

func TestAuditVerifyCommand(t *testing.T) {
	dir, live, pub := auditTestLog(t)
	files, _ := audit.Files(live)
	// A torn tail saved at a restart matches audit.jsonl* too; verify skips it.
	torn := live + ".torn-1763785829000000000"
	os.WriteFile(torn, []byte(`{"id":"01M8`), 0o600)
	var out, errb bytes.Buffer
	args := append([]string{"audit", "verify", torn}, files...)
	args = append(args, "--pubkey", pub) // flags after files work too
	if code := run(args, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "OK 6 records") {
		t.Fatalf("verify: exit %d\n%s%s", code, out.String(), errb.String())
	}
	if !strings.Contains(errb.String(), "note: skipping "+torn) {
		t.Fatalf("torn save not skipped with a note: %s", errb.String())
	}

	cfg := filepath.Join(dir, "firma.toml")
	os.WriteFile(cfg, []byte("[sidecar.audit]\nfile_path = \""+live+"\"\n"), 0o600)
	out.Reset()
	if code := run([]string{"audit", "verify", "-c", cfg, "--pubkey", pub}, &out, &errb); code != 0 {
		t.Fatalf("verify -c: exit %d\n%s%s", code, out.String(), errb.String())
	}

	// One edited field: exit 1 naming file and line.
	data, _ := os.ReadFile(live)
	os.WriteFile(live, bytes.Replace(data, []byte(`"example.com:443"`), []byte(`"example.org:443"`), 1), 0o600)
	out.Reset()
	code := run([]string{"audit", "verify", "--pubkey", pub, files[1], files[0]}, &out, &errb)
	if code != 1 || !strings.Contains(out.String(), "FAIL "+live+":2: bad signature") {
		t.Fatalf("tampered: exit %d\n%s", code, out.String())
	}

	// No files and no -c: the default config's log; here there is no default config.
	errb.Reset()
	if code := run([]string{"audit", "verify"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), systemConfigPath) {
		t.Fatalf("no files: exit %d, %s", code, errb.String())
	}
	t.Setenv(configEnv, cfg)
	out.Reset()
	if code := run([]string{"audit", "verify", "--pubkey", pub}, &out, &errb); code != 1 || !strings.Contains(out.String(), "FAIL "+live+":2") {
		t.Fatalf("no files, $%s set: exit %d\n%s", configEnv, code, out.String())
	}
	if code := run([]string{"audit", "verify", "--bogus", live}, &out, &errb); code != 2 {
		t.Fatalf("bad flag: exit %d", code)
	}
}

func TestAuditTailCommand(t *testing.T) {
	_, live, _ := auditTestLog(t)
	var out, errb bytes.Buffer
	if code := run([]string{"audit", "tail", "--deny", live}, &out, &errb); code != 0 {
		t.Fatalf("tail: exit %d %s", code, errb.String())
	}
	got := strings.TrimSpace(out.String())
	if strings.Count(got, "\n") != 0 || !strings.Contains(got, "claude-code  pid=101 /usr/bin/python3  DENY") ||
		!strings.Contains(got, "paste.rs:443") || !strings.Contains(got, "[forbid_at_claude-code.cedar_19]") {
		t.Fatalf("tail --deny:\n%s", got)
	}
	out.Reset()
	if code := run([]string{"audit", "tail", "--json", "--since", "1h", "--agent", "claude-code", live}, &out, &errb); code != 0 {
		t.Fatalf("tail --json: exit %d %s", code, errb.String())
	}
	if lines := strings.Split(strings.TrimSpace(out.String()), "\n"); len(lines) != 3 || !strings.HasPrefix(lines[0], `{"id":`) {
		t.Fatalf("tail --json --agent:\n%s", out.String())
	}
	if code := run([]string{"audit", "tail", "--since", "yesterday", live}, &out, &errb); code != 2 {
		t.Fatalf("bad --since: exit %d", code)
	}
}

func TestAuditParseSince(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	if got, _ := auditParseSince("15m", now); !got.Equal(now.Add(-15 * time.Minute)) {
		t.Fatal(got)
	}
	if got, _ := auditParseSince("2026-01-01T10:00:00Z", now); got.Hour() != 10 {
		t.Fatal(got)
	}
	if _, err := auditParseSince("-5m", now); err == nil {
		t.Fatal("negative accepted")
	}
}

// TestAuditKeygenCommand: keygen writes a 0600 key and its .pub, prints the public key, refuses to
// overwrite, and with -c writes [sidecar.audit] signing_key_path (relative to the config file).
func TestAuditKeygenCommand(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "keys", "audit.key")
	var out, errb bytes.Buffer
	if code := run([]string{"audit", "keygen", "--out", key}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	pub, err := os.ReadFile(key + ".pub")
	if err != nil || out.String() != string(pub) || !strings.HasPrefix(out.String(), "-----BEGIN PUBLIC KEY-----") {
		t.Fatalf("stdout %q, .pub %q (%v)", out.String(), pub, err)
	}
	if fi, _ := os.Stat(key); fi == nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v", fi)
	}
	if _, err := audit.LoadSigningKey(key); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errb.String(), "wrote "+key) {
		t.Errorf("stderr %q", errb.String())
	}
	before, _ := os.ReadFile(key)
	errb.Reset()
	if code := run([]string{"audit", "keygen", "--out", key}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "already exists") {
		t.Errorf("second keygen: exit %d, %s", code, errb.String())
	}
	if after, _ := os.ReadFile(key); !bytes.Equal(before, after) {
		t.Error("the key was overwritten")
	}

	cfg := filepath.Join(dir, "firma.toml")
	os.WriteFile(cfg, []byte("[sidecar.audit]\nsigning_key_path = \"signing/audit.key\"\n"), 0o600)
	t.Chdir(t.TempDir())
	out.Reset()
	if code := run([]string{"audit", "keygen", "-c", cfg}, &out, &errb); code != 0 {
		t.Fatalf("keygen -c: exit %d: %s", code, errb.String())
	}
	if _, err := audit.LoadSigningKey(filepath.Join(dir, "signing", "audit.key")); err != nil {
		t.Errorf("keygen -c did not write signing_key_path next to the config: %v", err)
	}
	os.WriteFile(cfg, []byte("[sidecar.audit]\n"), 0o600)
	errb.Reset()
	if code := run([]string{"audit", "keygen", "-c", cfg}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "signing_key_path is not set") {
		t.Errorf("keygen -c without signing_key_path: exit %d, %s", code, errb.String())
	}
}

// Exported streams verify from a file or stdin, with the format given or detected; an altered
// record is named by its line in the export.
func TestAuditVerifyExportedStreams(t *testing.T) {
	dir, live, pub := auditTestLog(t)
	files, _ := audit.Files(live)
	var recs []string
	for _, f := range files {
		data, _ := os.ReadFile(f)
		recs = append(recs, strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")...)
	}
	var cat, short, jsonl strings.Builder
	for i, r := range recs {
		cat.WriteString("some other service said hello\n" + r + "\n")
		fmt.Fprintf(&short, "Dec 02 04:1%d:00 box firma[42]: %s\n", i%10, r)
		short.WriteString("Dec 02 04:10:00 box sshd[7]: Accepted publickey\n")
		m, _ := json.Marshal(map[string]string{"MESSAGE": r, "_HOSTNAME": "box", "SYSLOG_IDENTIFIER": "firma", "__CURSOR": "x"})
		jsonl.Write(append(m, '\n'))
	}
	verify := func(stdin string, args ...string) (int, string) {
		t.Helper()
		auditStdin = strings.NewReader(stdin)
		defer func() { auditStdin = os.Stdin }()
		var out, errb bytes.Buffer
		code := run(append([]string{"audit", "verify", "--pubkey", pub}, args...), &out, &errb)
		return code, out.String() + errb.String()
	}
	for name, c := range map[string]struct {
		input string
		args  []string
	}{
		"journal cat on stdin":   {cat.String(), []string{"--format", "journal", "-"}},
		"journal json on stdin":  {jsonl.String(), []string{"-"}},
		"journal short on stdin": {short.String(), []string{"--app", "firma", "--host", "box", "-"}},
	} {
		code, out := verify(c.input, c.args...)
		if code != 0 || !strings.Contains(out, fmt.Sprintf("OK %d records", len(recs))) || !strings.Contains(out, "export") {
			t.Errorf("%s: exit %d\n%s", name, code, out)
		}
	}
	// A file: auto-detected as syslog.
	path := filepath.Join(dir, "syslog")
	os.WriteFile(path, []byte(short.String()), 0o600)
	if code, out := verify("", path); code != 0 || !strings.Contains(out, "read as a syslog export") {
		t.Errorf("syslog file: exit %d\n%s", code, out)
	}
	// The third record altered: line 6 of the cat export (each record follows a foreign line).
	bad := strings.Replace(cat.String(), `"paste.rs:443"`, `"paste.rz:443"`, 1)
	if code, out := verify(bad, "--format", "journal", "-"); code != 1 || !strings.Contains(out, "FAIL -:6: bad signature") {
		t.Errorf("altered export: exit %d\n%s", code, out)
	}
	if code, _ := verify("", "--format", "xml", "-"); code != 2 {
		t.Errorf("unknown format: exit %d", code)
	}
}
