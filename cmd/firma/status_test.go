package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/daemon/metrics"
)

// fakeSidecar serves a real metrics handler on loopback; ready says what /healthz answers.
func fakeSidecar(t *testing.T, ready *bool) string {
	t.Helper()
	m := metrics.New(metrics.Sources{})
	send := "communication.external.send"
	m.Recorder(appendNothing{}).Append(&audit.Event{Kind: audit.KindDecision,
		Envelope: &audit.Envelope{Agent: audit.Agent{AgentID: "claude-code"}, Intent: audit.Intent{ActionClass: &send},
			Transport: audit.Transport{Mode: "connect"}},
		Decision: &audit.Decision{Outcome: "DENY"}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: m.Handler(func() metrics.Health {
		return metrics.Evaluate([]metrics.Check{{Name: "programs", Run: func() (string, error) {
			if !*ready {
				return "", os.ErrNotExist
			}
			return "17 links in force", nil
		}}})
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

type appendNothing struct{}

func (appendNothing) Append(*audit.Event) error { return nil }

func (appendNothing) AppendLimited(string, *audit.Event) (bool, error) { return true, nil }

func TestSidecarStatus(t *testing.T) {
	ready := true
	addr := fakeSidecar(t, &ready)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "firma.toml")
	os.WriteFile(cfg, []byte("[sidecar.metrics]\nlisten_addr = \""+addr+"\"\n"), 0o600)

	var stdout, stderr bytes.Buffer
	if code := run([]string{"sidecar", "status", "-c", cfg}, &stdout, &stderr); code != 0 {
		t.Fatalf("ready sidecar: exit %d\n%s%s", code, stdout.String(), stderr.String())
	}
	for _, want := range []string{"firma sidecar at " + addr + ": READY", "ok    programs  17 links in force",
		"decisions  0 ALLOW, 1 DENY", "claude-code"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, stdout.String())
		}
	}

	ready = false
	stdout.Reset()
	if code := run([]string{"sidecar", "status", "--addr", addr, "--json"}, &stdout, &stderr); code != 1 {
		t.Fatalf("not ready: exit %d\n%s%s", code, stdout.String(), stderr.String())
	}
	var st metrics.Status
	if err := json.Unmarshal(stdout.Bytes(), &st); err != nil {
		t.Fatalf("--json: %v\n%s", err, stdout.String())
	}
	if st.Health.Ready || st.Health.Checks["programs"].OK || st.Summary.Decisions["DENY"] != 1 {
		t.Errorf("--json: %+v", st)
	}

	os.WriteFile(cfg, []byte("[sidecar.audit]\nfile_path = \"a.jsonl\"\n"), 0o600)
	stderr.Reset()
	if code := run([]string{"sidecar", "status", "-c", cfg}, &stdout, &stderr); code != 1 ||
		!strings.Contains(stderr.String(), cfg+": [sidecar.metrics] listen_addr is not set") {
		t.Errorf("no listen_addr: exit %d: %s", code, stderr.String())
	}
	stderr.Reset()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	if code := run([]string{"sidecar", "status", "--addr", dead}, &stdout, &stderr); code != 1 ||
		!strings.Contains(stderr.String(), "nothing answers on "+dead) {
		t.Errorf("no sidecar: exit %d: %s", code, stderr.String())
	}
}

func TestMetricsConfigValidated(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "firma.toml")
	os.WriteFile(cfg, []byte("[sidecar.transparent]\nenabled = false\n[sidecar.metrics]\nlisten_addr = \"0.0.0.0:9090\"\n"), 0o600)
	var stdout, stderr bytes.Buffer
	if code := run([]string{"check", "config", cfg}, &stdout, &stderr); code == 0 ||
		!strings.Contains(stdout.String()+stderr.String(), "sidecar.metrics.listen_addr: 0.0.0.0:9090 is not a loopback address") {
		t.Errorf("remote listen_addr accepted: exit %d\n%s%s", code, stdout.String(), stderr.String())
	}
}
