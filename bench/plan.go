package bench

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/openfirma/firma/bench/load"
)

// System is one way for the client to reach the upstream.
type System struct {
	Name  string // flag value and profile file name
	Label string // column header
	MITM  bool   // terminates TLS with its own CA and injects the credential
	Proxy bool   // the client is configured with an explicit proxy
	Firma bool   // a firma sidecar (profiles can be captured)
}

// The systems, in report order. Direct is the baseline every ratio is taken against.
var (
	Direct            = System{Name: "direct", Label: "direct"}
	FirmaConnect      = System{Name: "firma-connect", Label: "firma transparent CONNECT", Firma: true}
	FirmaMITM         = System{Name: "firma-mitm", Label: "firma transparent MITM (+key)", MITM: true, Firma: true}
	FirmaProxyConnect = System{Name: "firma-proxy-connect", Label: "firma explicit CONNECT", Proxy: true, Firma: true}
	FirmaProxyMITM    = System{Name: "firma-proxy-mitm", Label: "firma explicit MITM (+key)", MITM: true, Proxy: true, Firma: true}
	Tinyproxy         = System{Name: "tinyproxy", Label: "tinyproxy CONNECT", Proxy: true}
	Squid             = System{Name: "squid", Label: "squid CONNECT", Proxy: true}
	SquidSSLBump      = System{Name: "squid-bump", Label: "squid ssl-bump (+key)", MITM: true, Proxy: true}

	Systems = []System{Direct, FirmaConnect, FirmaMITM, FirmaProxyConnect, FirmaProxyMITM, Tinyproxy, Squid, SquidSSLBump}
)

// Concurrency of the request workloads, fixed so that runs compare across machines and commits.
const (
	NewConnConcurrency   = 4
	KeepAliveConcurrency = 8
)

// Plan is what one run measures.
type Plan struct {
	Quick  bool
	Rounds int // interleaved rounds; every number reported is a median over them
	// IdleRounds is how many of the rounds (the first ones) run the idle workload. It measures
	// memory and descriptors, not time, and opening 8,000 connections through the slowest peers
	// takes minutes, so one round is the default.
	IdleRounds int
	Duration   time.Duration // measured time of each request workload
	Bytes      int64         // download and upload size
	IdleConns  int           // connections held by the idle workload
	Systems    []System
	Workloads  []load.Workload
}

// DefaultPlan is every system and workload at full size, or the quick CI variant: one short round
// with small transfers and few idle connections, to prove that everything works in under two
// minutes.
func DefaultPlan(quick bool) Plan {
	if quick {
		return Plan{Quick: true, Rounds: 1, IdleRounds: 1, Duration: time.Second, Bytes: 32 << 20, IdleConns: 200,
			Systems: Systems, Workloads: load.Workloads}
	}
	return Plan{Rounds: 3, IdleRounds: 1, Duration: 5 * time.Second, Bytes: 1 << 30, IdleConns: 8000,
		Systems: Systems, Workloads: load.Workloads}
}

// Runs reports whether round (from 1) measures w.
func (p Plan) Runs(w load.Workload, round int) bool {
	return w != load.Idle || round <= p.IdleRounds
}

// Select narrows the plan to comma-separated system and workload names ("" keeps all). Direct is
// kept whenever other systems are, since every ratio needs it.
func (p *Plan) Select(systems, workloads string) error {
	if systems != "" {
		var sel []System
		for _, name := range strings.Split(systems, ",") {
			i := slices.IndexFunc(Systems, func(s System) bool { return s.Name == strings.TrimSpace(name) })
			if i < 0 {
				return fmt.Errorf("unknown system %q (want some of %s)", name, systemNames(Systems))
			}
			if !slices.Contains(sel, Systems[i]) {
				sel = append(sel, Systems[i])
			}
		}
		if !slices.Contains(sel, Direct) {
			sel = append([]System{Direct}, sel...)
		}
		p.Systems = ordered(Systems, sel)
	}
	if workloads != "" {
		var sel []load.Workload
		for _, name := range strings.Split(workloads, ",") {
			w, err := load.ParseWorkload(strings.TrimSpace(name))
			if err != nil {
				return err
			}
			sel = append(sel, w)
		}
		p.Workloads = ordered(load.Workloads, sel)
	}
	return nil
}

// ordered is the elements of all that are in sel, in all's order.
func ordered[T comparable](all, sel []T) []T {
	var out []T
	for _, x := range all {
		if slices.Contains(sel, x) {
			out = append(out, x)
		}
	}
	return out
}

func systemNames(ss []System) string {
	names := make([]string, len(ss))
	for i, s := range ss {
		names[i] = s.Name
	}
	return strings.Join(names, ", ")
}

// Complete reports whether the plan is the full comparison: every system and workload at full
// size. Only such a run replaces results.md by default.
func (p Plan) Complete() bool {
	full := DefaultPlan(false)
	return !p.Quick && p.Rounds >= full.Rounds && p.Duration >= full.Duration && p.Bytes >= full.Bytes &&
		p.IdleConns >= full.IdleConns && slices.Equal(p.Systems, Systems) && slices.Equal(p.Workloads, load.Workloads)
}

// Validate checks the plan before anything starts.
func (p Plan) Validate() error {
	var errs []error
	if p.Rounds < 1 {
		errs = append(errs, fmt.Errorf("rounds %d: want at least 1", p.Rounds))
	}
	if p.IdleRounds < 1 || p.IdleRounds > p.Rounds {
		errs = append(errs, fmt.Errorf("idle rounds %d: want 1 to rounds (%d)", p.IdleRounds, p.Rounds))
	}
	if p.Duration < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("duration %v: want at least 100ms", p.Duration))
	}
	if p.Bytes < 1 {
		errs = append(errs, fmt.Errorf("bytes %d: want at least 1", p.Bytes))
	}
	if p.IdleConns < 1 {
		errs = append(errs, fmt.Errorf("idle connections %d: want at least 1", p.IdleConns))
	}
	if len(p.Systems) == 0 || len(p.Workloads) == 0 {
		errs = append(errs, errors.New("nothing to run"))
	}
	return errors.Join(errs...)
}

// Describe is the plan in one line, for the report's header.
func (p Plan) Describe() string {
	mode := "full"
	if p.Quick {
		mode = "quick"
	} else if !p.Complete() {
		mode = "partial"
	}
	return fmt.Sprintf("%s: %d round(s), %v per request workload, %s transfers, %d idle connections in %d round(s)",
		mode, p.Rounds, p.Duration, formatBytes(p.Bytes), p.IdleConns, p.IdleRounds)
}

// formatBytes writes a size in the largest binary unit that divides it.
func formatBytes(n int64) string {
	for _, u := range []struct {
		shift uint
		name  string
	}{{30, "GiB"}, {20, "MiB"}, {10, "KiB"}} {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d %s", n>>u.shift, u.name)
		}
	}
	return fmt.Sprintf("%d B", n)
}
