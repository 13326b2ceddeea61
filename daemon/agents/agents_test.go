package agents

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

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

	// Unregistered, the cgroup is its departed agent's, refused (TestResolveDeparted), not the static
	// entry's above it.
	r.Unregister(ctx, "/firma.slice/firma-agents.slice/run-7/")
	if a, _, err := r.Resolve(5); a.ID != "runner-agent" || !errors.Is(err, ErrDeparted) {
		t.Errorf("after unregister: %q, %v", a.ID, err)
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

// TestResolveDeparted: a report about a cgroup read after its registration was withdrawn (the agent
// did something forbidden and exited at once) still names the agent, as a refusal; a new
// registration of the same cgroup is the new agent's; the memory is bounded in time and size.
func TestResolveDeparted(t *testing.T) {
	r := newTest(t, []Config{{Cgroup: "firma-agents.slice", AgentID: "fallback"}}, map[uint64]string{
		4: "/firma.slice/firma-agents.slice/run-7",
		5: "/firma.slice/firma-agents.slice/run-7/child",
		6: "/firma.slice/firma-agents.slice/run-8",
	})
	ctx := context.Background()
	reg := control.Registration{Cgroup: "firma.slice/firma-agents.slice/run-7", AgentID: "runner-agent", SessionID: "s9"}
	if err := r.Register(ctx, reg); err != nil {
		t.Fatal(err)
	}
	if err := r.Unregister(ctx, reg.Cgroup); err != nil {
		t.Fatal(err)
	}
	for _, id := range []uint64{4, 5} {
		a, _, err := r.Resolve(id)
		if !errors.Is(err, ErrDeparted) || !errors.Is(err, ErrUnknownAgent) || a.ID != "runner-agent" || a.SessionID != "s9" || a.Capability != nil {
			t.Errorf("cgroup %d after unregister: %+v, %v; want runner-agent refused as departed", id, a, err)
		}
	}
	if a, _, err := r.Resolve(6); err != nil || a.ID != "fallback" {
		t.Errorf("a sibling never registered: %q, %v; want the static fallback", a.ID, err)
	}

	reg.AgentID, reg.SessionID = "second", "s10"
	if err := r.Register(ctx, reg); err != nil {
		t.Fatal(err)
	}
	if a, _, err := r.Resolve(4); err != nil || a.ID != "second" {
		t.Errorf("registered again: %q, %v; want second", a.ID, err)
	}

	r.Unregister(ctx, reg.Cgroup)
	r.mu.Lock()
	d := r.departed["/firma.slice/firma-agents.slice/run-7"]
	d.until = time.Now().Add(-time.Second)
	r.departed["/firma.slice/firma-agents.slice/run-7"] = d
	r.mu.Unlock()
	if a, _, err := r.Resolve(4); err != nil || a.ID != "fallback" {
		t.Errorf("after Departed: %q, %v; want the static fallback again", a.ID, err)
	}

	r.mu.Lock()
	for i := range maxDeparted + 5 {
		r.depart(fmt.Sprintf("/gone/%d", i), Agent{ID: "x"}, time.Now().Add(time.Duration(i)*time.Millisecond))
	}
	n := len(r.departed)
	_, first := r.departed["/gone/0"]
	_, last := r.departed[fmt.Sprintf("/gone/%d", maxDeparted+4)]
	r.mu.Unlock()
	if n != maxDeparted || first || !last {
		t.Errorf("departed holds %d (oldest kept %v, newest kept %v); want %d, the oldest dropped", n, first, last, maxDeparted)
	}
}
