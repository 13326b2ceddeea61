package agents

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/daemon/control"
)

// newTest builds a registry over a directory standing in for the cgroup2 mount, with cgroup ids
// already resolved to paths (the kernel lookup is what pathOf caches).
func newTest(t *testing.T, static []Config, paths map[uint64]string) *Registry {
	t.Helper()
	r, err := New(Options{Mount: t.TempDir(), Static: static, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	for id, p := range paths {
		r.paths[id] = p
	}
	return r
}

func TestResolve(t *testing.T) {
	r := newTest(t, []Config{
		{Cgroup: "firma-agents.slice/claude.service", AgentID: "claude", SessionID: "s1"},
		{Cgroup: "firma-agents.slice", AgentID: "fallback"},
	}, map[uint64]string{
		1: "/firma.slice/firma-agents.slice/claude.service",
		2: "/firma.slice/firma-agents.slice/claude.service/worker",
		3: "/firma.slice/firma-agents.slice/other.service",
		4: "/firma.slice/firma-agents.slice/run-7",
		5: "/firma.slice/firma-agents.slice/run-7/child",
		6: "/system.slice/sshd.service",
	})
	ctx := context.Background()
	if err := r.Register(ctx, control.Registration{Cgroup: "firma.slice/firma-agents.slice/run-7", AgentID: "runner-agent", SessionID: "s9"}); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[uint64]string{1: "claude", 2: "claude", 3: "fallback", 4: "runner-agent", 5: "runner-agent"} {
		a, _, err := r.Resolve(id)
		if err != nil || a.ID != want {
			t.Errorf("cgroup %d: %q, %v; want %q", id, a.ID, err, want)
		}
	}
	if a, _, _ := r.Resolve(5); !a.Registered || a.SessionID != "s9" {
		t.Errorf("registration %+v", a)
	}
	if _, p, err := r.Resolve(6); !errors.Is(err, ErrUnknownAgent) || p != "/system.slice/sshd.service" {
		t.Errorf("outside every entry: %q, %v", p, err)
	}
	if _, _, err := r.Resolve(99); !errors.Is(err, ErrUnknownAgent) {
		t.Errorf("unknown id: %v", err)
	}

	// Unregistering falls back to the static entry above it.
	r.Unregister(ctx, "/firma.slice/firma-agents.slice/run-7/")
	if a, _, _ := r.Resolve(5); a.ID != "fallback" {
		t.Errorf("after unregister: %q", a.ID)
	}
	if got := r.Registered(); len(got) != 0 {
		t.Errorf("registered %v", got)
	}
}

// TestRegisterWithoutStage1: without capabilities enforced, a capability file cannot be verified and
// is refused; a static entry naming one fails start-up.
func TestRegisterWithoutStage1(t *testing.T) {
	r := newTest(t, nil, nil)
	err := r.Register(context.Background(), control.Registration{Cgroup: "/a/b", AgentID: "x", CapabilityFile: "/etc/firma/cap.toml"})
	if err == nil || !strings.Contains(err.Error(), "needs [sidecar.authority]") {
		t.Fatalf("register: %v", err)
	}
	if len(r.Registered()) != 0 {
		t.Fatal("a refused registration was kept")
	}
	_, err = New(Options{Mount: t.TempDir(), Static: []Config{{Cgroup: "a", AgentID: "x", CapabilityFile: "/cap.toml"}}, Log: zerolog.Nop()})
	if err == nil || !strings.Contains(err.Error(), `sidecar.agents "x": capability_file /cap.toml`) {
		t.Fatalf("static: %v", err)
	}
}

func TestValidate(t *testing.T) {
	err := Validate([]Config{
		{Cgroup: "a.slice/x", AgentID: "one"},
		{Cgroup: "../etc", AgentID: "two"},
		{Cgroup: "b", AgentID: ""},
		{Cgroup: "/a.slice/x/", AgentID: "dup"},
	})
	for _, want := range []string{`agents[1].cgroup: "../etc"`, "agents[2].agent_id: must be set", `agents[3].cgroup: "/a.slice/x/" is listed twice`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
}
