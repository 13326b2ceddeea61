package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openfirma/firma/daemon"
	"github.com/openfirma/firma/daemon/agents"
	"github.com/openfirma/firma/daemon/control"
)

const procNetTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:3A99 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:A257 0100007F:C738 01 00000000:00000000 03:00000533 00000000     0        0 0 3 0000000065981e5c
`

const procNetTCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:3A99 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0
`

func TestParseProcNet(t *testing.T) {
	entries, err := parseProcNet(strings.NewReader(procNetTCP))
	if err != nil {
		t.Fatal(err)
	}
	want := []socketEntry{
		{Local: netip.MustParseAddrPort("127.0.0.1:15001"), State: tcpListen, RxQueue: 3, Inode: 4242},
		{Local: netip.MustParseAddrPort("127.0.0.1:41559"), State: 1},
	}
	if len(entries) != len(want) {
		t.Fatalf("%d entries", len(entries))
	}
	for i := range want {
		if entries[i] != want[i] {
			t.Errorf("entry %d: %+v, want %+v", i, entries[i], want[i])
		}
	}
	entries, err = parseProcNet(strings.NewReader(procNetTCP6))
	if err != nil {
		t.Fatal(err)
	}
	if got := entries[0].Local; got != netip.MustParseAddrPort("[::1]:15001") {
		t.Errorf("IPv6 loopback: %v", got)
	}
	if got := entries[1].Local; got != netip.MustParseAddrPort("127.0.0.1:8080") {
		t.Errorf("v4-mapped: %v", got)
	}
	for _, bad := range []string{"header\n0: zz:1 0:0 0A 0:0 0 0 0 0 1\n", "header\n0: 0100007F:3A99 0:0 0A 00:00 0 0 0 0\n", "header\n0: 0100007F 0:0 0A 0:0 0 0 0 0 1\n"} {
		if _, err := parseProcNet(strings.NewReader(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func FuzzParseProcNet(f *testing.F) {
	f.Add(procNetTCP)
	f.Add(procNetTCP6)
	f.Fuzz(func(t *testing.T, s string) {
		entries, err := parseProcNet(strings.NewReader(s))
		if err != nil {
			return
		}
		for _, e := range entries {
			if !e.Local.IsValid() {
				t.Fatalf("invalid address accepted from %q", s)
			}
		}
	})
}

func TestParseKernelVersion(t *testing.T) {
	for release, want := range map[string][2]int{"6.18.44-fc-v1045": {6, 18}, "5.8.0": {5, 8}, "5.15.0-91-generic": {5, 15}, "6.1rc3": {6, 1}} {
		got, err := parseKernelVersion(release)
		if err != nil || got != want {
			t.Errorf("%s: %v %v", release, got, err)
		}
	}
	for _, bad := range []string{"", "6", "x.y"} {
		if _, err := parseKernelVersion(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// TestHealthz: the sidecar's /healthz is read as {"ready", "checks": {name: {ok, detail}}}, ready
// or not (503), and anything else is a failure.
func TestHealthz(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		body   string
		want   Status
		detail string
	}{
		{"ready", 200, `{"ready":true,"checks":{"programs":{"ok":true},"audit":{"ok":true,"detail":"writable"}}}`, OK, "ready (audit, programs)"},
		{"not ready", 503, `{"ready":false,"checks":{"programs":{"ok":false,"detail":"detached"},"audit":{"ok":true}}}`, Fail, "programs: detached"},
		{"ready but a check fails", 200, `{"ready":true,"checks":{"bundle":{"ok":false,"detail":"stale"}}}`, Fail, "bundle: stale"},
		{"not JSON", 200, `ok`, Fail, "invalid character"},
		{"500", 500, `{}`, Fail, "500 Internal Server Error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/healthz" {
					http.NotFound(w, r)
					return
				}
				w.WriteHeader(tc.status)
				w.Write([]byte(tc.body))
			}))
			defer srv.Close()
			c := healthz(context.Background(), strings.TrimPrefix(srv.URL, "http://"), Options{}.withDefaults())
			if c.Status != tc.want || !strings.Contains(c.Detail, tc.detail) {
				t.Errorf("%+v, want %s containing %q", c, tc.want, tc.detail)
			}
		})
	}
	c := healthz(context.Background(), "127.0.0.1:1", Options{Timeout: time.Second}.withDefaults())
	if c.Status != Fail || c.Fix == "" {
		t.Errorf("nothing listening: %+v", c)
	}
}

func TestReport(t *testing.T) {
	r := NewReport("/etc/firma/firma.toml", []Check{
		ok("kernel", "Linux 6.18"),
		warn("bpf_lsm", "add bpf to lsm=", "not active"),
	})
	if !r.Ready {
		t.Error("a warning made the report not ready")
	}
	var b bytes.Buffer
	r.WriteText(&b)
	for _, want := range []string{"ok    kernel   Linux 6.18", "warn  bpf_lsm  not active", "fix: add bpf to lsm=", "ready, with 1 warnings"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, b.String())
		}
	}
	r = NewReport("", append(r.Checks, fail("sidecar.pins", "start the sidecar", "no links")))
	if r.Ready || len(r.Failed(Fail)) != 1 {
		t.Errorf("a failure: ready=%v", r.Ready)
	}
	b.Reset()
	r.WriteJSON(&b)
	var back Report
	if err := json.Unmarshal(b.Bytes(), &back); err != nil || back.Ready || len(back.Checks) != 3 || back.Checks[2].Fix != "start the sidecar" {
		t.Errorf("JSON round trip: %v %+v", err, back)
	}
}

func TestLastRecordTime(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	os.WriteFile(path, []byte(`{"id":"a","time":"2026-01-02T03:04:05Z"}`+"\n"+`{"id":"b","time":"2026-01-02T03:04:06.5Z"}`+"\n"), 0o600)
	got, err := lastRecordTime(path)
	if err != nil || !got.Equal(time.Date(2026, 1, 2, 3, 4, 6, 500_000_000, time.UTC)) {
		t.Errorf("%v %v", got, err)
	}
	os.WriteFile(path, nil, 0o600)
	if _, err := lastRecordTime(path); err == nil {
		t.Error("an empty log has a last record")
	}
}

// The monitor-mode check names every agent whose denials are not enforced, from the config and
// from what the sidecar says (firma run --monitor registrations), once each, as a warning.
func TestMonitorMode(t *testing.T) {
	cfg := daemon.DefaultConfig()
	cfg.Agents = []agents.Config{
		{Cgroup: "firma-agents.slice/claude.service", AgentID: "claude-code", Mode: agents.ModeMonitor},
		{Cgroup: "firma-agents.slice/ci.service", AgentID: "ci", Mode: agents.ModeEnforce},
		{Cgroup: "firma-agents.slice/x.service", AgentID: "x"},
	}
	c := monitorMode(&cfg, nil)
	if c.Status != Warn || !strings.Contains(c.Detail, "MONITOR MODE") || !strings.Contains(c.Detail, "for 1 agent: claude-code") ||
		!strings.Contains(c.Detail, "registrations unknown") || strings.Contains(c.Detail, "ci (") || c.Fix == "" {
		t.Errorf("from the config: %+v", c)
	}
	info := &control.Info{Monitored: []control.MonitoredAgent{
		{AgentID: "claude-code", Cgroup: "/firma-agents.slice/claude.service"},
		{AgentID: "scripted", Cgroup: "/firma-agents.slice/firma-run-1", Registered: true},
	}}
	c = monitorMode(&cfg, info)
	if c.Status != Warn || !strings.Contains(c.Detail, "for 2 agents") || strings.Count(c.Detail, "claude-code") != 1 ||
		!strings.Contains(c.Detail, "scripted (firma run --monitor, cgroup /firma-agents.slice/firma-run-1)") || strings.Contains(c.Detail, "unknown") {
		t.Errorf("with the sidecar's list: %+v", c)
	}
	cfg.Agents = cfg.Agents[1:]
	if c = monitorMode(&cfg, &control.Info{}); c.Status != OK || c.Detail != "no agent in monitor mode" {
		t.Errorf("none: %+v", c)
	}
}
