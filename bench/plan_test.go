package bench

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/openfirma/firma/bench/load"
)

func TestDefaultPlans(t *testing.T) {
	full, quick := DefaultPlan(false), DefaultPlan(true)
	for _, p := range []Plan{full, quick} {
		if err := p.Validate(); err != nil {
			t.Errorf("%s: %v", p.Describe(), err)
		}
	}
	if !full.Complete() || quick.Complete() {
		t.Errorf("Complete: full %v, quick %v", full.Complete(), quick.Complete())
	}
	if full.Rounds < 3 || full.Bytes != 1<<30 || full.IdleConns != 8000 {
		t.Errorf("full plan = %+v", full)
	}
	if got := full.Describe(); got != "full: 3 round(s), 5s per request workload, 1 GiB transfers, 8000 idle connections in 1 round(s)" {
		t.Errorf("Describe = %q", got)
	}
}

func TestPlanSelect(t *testing.T) {
	p := DefaultPlan(false)
	if err := p.Select("squid, firma-mitm,squid", "idle,new"); err != nil {
		t.Fatal(err)
	}
	// Report order, direct added, duplicates dropped.
	if !slices.Equal(p.Systems, []System{Direct, FirmaMITM, Squid}) {
		t.Errorf("systems = %v", systemNames(p.Systems))
	}
	if !slices.Equal(p.Workloads, []load.Workload{load.NewConn, load.Idle}) {
		t.Errorf("workloads = %v", p.Workloads)
	}
	if p.Complete() || !strings.HasPrefix(p.Describe(), "partial:") {
		t.Errorf("a narrowed plan is complete: %s", p.Describe())
	}
	if err := p.Select("nginx", ""); err == nil || !strings.Contains(err.Error(), `unknown system "nginx"`) {
		t.Errorf("err = %v", err)
	}
	if err := p.Select("", "bulk"); err == nil || !strings.Contains(err.Error(), `unknown workload "bulk"`) {
		t.Errorf("err = %v", err)
	}
}

func TestPlanValidate(t *testing.T) {
	for name, mut := range map[string]func(*Plan){
		"rounds":      func(p *Plan) { p.Rounds = 0 },
		"idle rounds": func(p *Plan) { p.IdleRounds = 4 },
		"duration":    func(p *Plan) { p.Duration = time.Millisecond },
		"bytes":       func(p *Plan) { p.Bytes = 0 },
		"idle":        func(p *Plan) { p.IdleConns = 0 },
		"systems":     func(p *Plan) { p.Systems = nil },
	} {
		p := DefaultPlan(false)
		mut(&p)
		if err := p.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestPlanRuns(t *testing.T) {
	p := DefaultPlan(false)
	p.IdleRounds = 2
	for round, want := range map[int]bool{1: true, 2: true, 3: false} {
		if got := p.Runs(load.Idle, round); got != want {
			t.Errorf("idle in round %d: %v", round, got)
		}
		if !p.Runs(load.Download, round) {
			t.Errorf("download skipped in round %d", round)
		}
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[int64]string{1 << 30: "1 GiB", 32 << 20: "32 MiB", 3 << 10: "3 KiB", 1000: "1000 B", 1<<20 + 1: "1048577 B"} {
		if got := formatBytes(n); got != want {
			t.Errorf("formatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}
