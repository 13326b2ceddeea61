package audit

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/internal/testutil"
)

// testKey writes a fresh P-256 key as PKCS#8 PEM (0600) and its public key, and returns both paths.
func testKey(t testing.TB) (keyPath, pubPath string, pub *ecdsa.PublicKey) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keyPath = filepath.Join(dir, "audit.key")
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	pder, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubPath = filepath.Join(dir, "audit.pub")
	if err := os.WriteFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pder}), 0o644); err != nil {
		t.Fatal(err)
	}
	return keyPath, pubPath, &k.PublicKey
}

func testLogger(t testing.TB) (zerolog.Logger, *testutil.SyncBuffer) {
	t.Helper()
	b := &testutil.SyncBuffer{}
	return zerolog.New(b), b
}

func openTest(t testing.TB, cfg Config) *Writer {
	t.Helper()
	log, _ := testLogger(t)
	w, err := Open(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

func decision(i int, host, outcome string) *Event {
	class := "communication.external.send"
	return &Event{
		Kind: KindDecision,
		Envelope: &Envelope{
			Agent: Agent{AgentID: "claude-code", SessionID: "s1", Cgroup: "/firma-agents.slice/claude", PID: 1000 + i,
				Exe: "/usr/bin/curl", Comm: "curl", UID: 1000},
			Intent:    Intent{ActionClass: &class, Resource: Resource{Host: host + ":443"}, RawTransport: "tls"},
			Transport: Transport{Mode: "connect", SNI: host, OrigDst: "203.0.113.7:443"},
		},
		Decision: &Decision{Outcome: outcome, MatchedPolicies: []string{fmt.Sprintf("forbid_at_claude-code.cedar_%d", i)}, Reason: "test"},
	}
}

func readLines(t testing.TB, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.SplitAfter(string(data), "\n")[:strings.Count(string(data), "\n")]
}

func writeLines(t testing.TB, path string, lines []string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(strings.Join(lines, "")), 0o600); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
