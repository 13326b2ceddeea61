//go:build linux

package authority_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/authority"
	"github.com/openfirma/firma/internal/e2e"
)

// The fleet at scale: one `firma authority` process (HTTPS, sidecars authenticated by token) and
// N sidecars simulated in this process by the real client code, each long-polling both feeds over
// its own connection. It measures the authority's memory and CPU, and how long a policy edit and a
// revocation take to reach every sidecar, from the moment the file is written.
//
//	make bench                                   # N = 100 and 1,000
//	go test -run TestFleetScaleQuick ./authority # CI: a few sidecars, fails only on errors

// fleet is an authority and the sidecars following it.
type fleet struct {
	auth *e2e.Authority
	sims []*sim
	logs *warnLog
	// Ready is how long it took from the first client's start until every sidecar held the bundle.
	Ready time.Duration
}

// sim is one simulated sidecar.
type sim struct {
	c       *authority.Client
	mu      sync.Mutex
	adopted map[string]time.Time // bundle version → when the client adopted it
}

// warnLog collects what the simulated sidecars log at WARN and above (all of it is a failure in
// quick mode); it keeps the first lines.
type warnLog struct {
	mu    sync.Mutex
	n     int
	first []string
}

func (w *warnLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.n++
	if len(w.first) < 10 {
		w.first = append(w.first, strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

func (w *warnLog) report() (int, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n, strings.Join(w.first, "\n")
}

// startFleet starts the authority and n sidecars, 100 at a time (as a fleet restarting would
// rather than all in the same millisecond), and waits until every one holds the bundle.
func startFleet(tb testing.TB, n int) *fleet {
	tb.Helper()
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("sim-%04d", i)
	}
	f := &fleet{
		auth: e2e.NewAuthority(tb, e2e.AuthorityOptions{TLS: true, Sidecars: names, SidecarAuth: "token", LogLevel: "info"}),
		logs: &warnLog{},
	}
	// Each sidecar has its own disk in real life; here their caches share one, so keep them in
	// memory where it exists, lest a thousand fsyncs per change measure the VM's disk.
	cacheRoot := tb.TempDir()
	if dir, err := os.MkdirTemp("/dev/shm", "firma-fleet-"); err == nil {
		cacheRoot = dir
		tb.Cleanup(func() { os.RemoveAll(dir) })
	}
	// A thousand sidecars in one process share one heap: every collection scans all of them,
	// where each real sidecar would scan only its own. Collect less often, as a thousand small
	// heaps would.
	gc := debug.SetGCPercent(400)
	tb.Cleanup(func() { debug.SetGCPercent(gc) })
	log := zerolog.New(f.logs).Level(zerolog.WarnLevel)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	tb.Cleanup(func() { cancel(); wg.Wait() })
	start := time.Now()
	for lo := 0; lo < n; lo += 100 {
		batch := names[lo:min(lo+100, n)]
		for _, name := range batch {
			s := &sim{adopted: map[string]time.Time{}}
			cc := e2e.ClientConfig(filepath.Join(cacheRoot, name), e2e.Credential{Sidecar: name, Token: true}, f.auth)
			c, err := authority.NewClient(cc, log.With().Str("sidecar", name).Logger(), func(b authority.Bundle) error {
				s.mu.Lock()
				s.adopted[b.Version] = time.Now()
				s.mu.Unlock()
				return nil
			})
			if err != nil {
				tb.Fatal(err)
			}
			s.c = c
			f.sims = append(f.sims, s)
			wg.Add(1)
			go func() { defer wg.Done(); c.Run(ctx) }()
		}
		for _, s := range f.sims[lo:] {
			select {
			case <-s.c.Ready():
			case <-time.After(60 * time.Second):
				n, first := f.logs.report()
				tb.Fatalf("a sidecar had no bundle 60 s after it started: %+v\n%d warnings, first:\n%s\nauthority:\n%s",
					s.c.Status(), n, first, f.auth.Logs())
			}
		}
	}
	f.Ready = time.Since(start)
	return f
}

// await waits until reached holds for every sidecar and returns, for each, when it did.
func (f *fleet) await(tb testing.TB, what string, reached func(*sim) (time.Time, bool)) []time.Time {
	tb.Helper()
	out := make([]time.Time, len(f.sims))
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed []string
	deadline := time.After(60 * time.Second)
	for i, s := range f.sims {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				changed := s.c.Changed()
				if at, ok := reached(s); ok {
					out[i] = at
					return
				}
				select {
				case <-changed:
				case <-deadline:
					mu.Lock()
					failed = append(failed, fmt.Sprintf("sidecar %d: %+v", i, s.c.Status()))
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	if len(failed) > 0 {
		n, first := f.logs.report()
		tb.Fatalf("%s: %d sidecars not reached within 60 s, e.g. %s\n%d warnings, first:\n%s", what, len(failed), failed[0], n, first)
	}
	return out
}

// policyEdit writes a policy file for round and returns how long the new bundle took to reach each
// sidecar.
func (f *fleet) policyEdit(tb testing.TB, round int) []time.Duration {
	tb.Helper()
	before := make([]string, len(f.sims))
	for i, s := range f.sims {
		b, _ := s.c.Bundle()
		before[i] = b.Version
	}
	idx := map[*sim]int{}
	for i, s := range f.sims {
		idx[s] = i
	}
	start := time.Now()
	f.auth.WritePolicy(tb, "bench.cedar", fmt.Sprintf(`@id("bench-round-%d")
forbid (principal, action, resource) when { resource has "host" && resource.host == "round-%d.invalid" };
`, round, round))
	at := f.await(tb, fmt.Sprintf("policy edit %d", round), func(s *sim) (time.Time, bool) {
		b, ok := s.c.Bundle()
		if !ok || b.Version == before[idx[s]] {
			return time.Time{}, false
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.adopted[b.Version], true
	})
	return since(start, at)
}

// revoke appends a revocation (as `firma authority revoke` does) and returns how long it took to
// reach each sidecar.
func (f *fleet) revoke(tb testing.TB) []time.Duration {
	tb.Helper()
	id := authority.NewTokenID()
	start := time.Now()
	if err := authority.AppendRevocation(f.auth.RevocationFile, authority.Revocation{TokenID: id, Reason: "bench"}); err != nil {
		tb.Fatal(err)
	}
	at := f.await(tb, "revocation", func(s *sim) (time.Time, bool) { return time.Now(), s.c.Revoked(id) })
	return since(start, at)
}

// healthy fails tb if any sidecar rejected an answer or failed a poll.
func (f *fleet) healthy(tb testing.TB) {
	tb.Helper()
	for i, s := range f.sims {
		st := s.c.Status()
		if len(st.Rejections) > 0 || len(st.PollErrors) > 0 || st.Stale {
			tb.Errorf("sidecar %d: stale %v, rejections %v, poll errors %v, last failure %+v", i, st.Stale, st.Rejections, st.PollErrors, st.LastFailure)
		}
	}
	if n, first := f.logs.report(); n > 0 {
		tb.Errorf("the sidecars logged %d warnings, first:\n%s", n, first)
	}
}

func since(start time.Time, at []time.Time) []time.Duration {
	out := make([]time.Duration, len(at))
	for i, t := range at {
		out[i] = t.Sub(start)
	}
	return out
}

// percentile is the p-th percentile (nearest rank) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(float64(len(s))*p/100+0.999999) - 1
	return s[max(0, min(rank, len(s)-1))]
}

// procStats reads a process's resident memory (now and peak, in bytes) and CPU time (user+system).
func procStats(tb testing.TB, pid int) (rss, peak int64, cpu time.Duration) {
	tb.Helper()
	st, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	defer st.Close()
	sc := bufio.NewScanner(st)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			rss = kb << 10
		case "VmHWM":
			peak = kb << 10
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	// Fields after the command (which may hold spaces) start after the last ')'.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	const clkTck = 100 // USER_HZ on Linux
	return rss, peak, time.Duration(utime+stime) * time.Second / clkTck
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// selfCPU is this process's CPU time (user+system): the simulated sidecars' work.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// results gathers what the rounds measured.
type results struct {
	edit, revoke             []time.Duration // per sidecar and round: from the write to adoption
	editCPU, revokeCPU       time.Duration   // the authority's CPU over the events
	editSimCPU, revokeSimCPU time.Duration   // the simulated sidecars' CPU over the events
	rounds                   int
}

// round runs one policy edit and one revocation, with a pause after each so that rounds do not
// overlap, and adds what they cost.
func (f *fleet) round(tb testing.TB, r *results) {
	pid := f.auth.Pid()
	measure := func(event func() []time.Duration, into *[]time.Duration, cpu, simCPU *time.Duration) {
		_, _, a0 := procStats(tb, pid)
		s0 := selfCPU()
		*into = append(*into, event()...)
		_, _, a1 := procStats(tb, pid)
		*cpu += a1 - a0
		*simCPU += selfCPU() - s0
		time.Sleep(200 * time.Millisecond)
	}
	measure(func() []time.Duration { return f.policyEdit(tb, r.rounds) }, &r.edit, &r.editCPU, &r.editSimCPU)
	measure(func() []time.Duration { return f.revoke(tb) }, &r.revoke, &r.revokeCPU, &r.revokeSimCPU)
	r.rounds++
}

// summary is one line of what r measured, for n sidecars.
func (r *results) summary(n int) string {
	per := func(d time.Duration) time.Duration { return (d / time.Duration(r.rounds)).Round(time.Millisecond) }
	ms := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	return fmt.Sprintf("%d sidecars, %d rounds: policy edit p50 %s p99 %s max %s (authority CPU %s, sidecars' CPU %s per edit); "+
		"revocation p50 %s p99 %s max %s (authority CPU %s, sidecars' CPU %s per revocation)",
		n, r.rounds, ms(percentile(r.edit, 50)), ms(percentile(r.edit, 99)), ms(slices.Max(r.edit)), per(r.editCPU), per(r.editSimCPU),
		ms(percentile(r.revoke, 50)), ms(percentile(r.revoke, 99)), ms(slices.Max(r.revoke)), per(r.revokeCPU), per(r.revokeSimCPU))
}

func BenchmarkFleet(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("sidecars=%d", n), func(b *testing.B) {
			f := startFleet(b, n)
			pid := f.auth.Pid()
			rssReady, _, cpuReady := procStats(b, pid)
			const idle = 3 * time.Second // long polls and heartbeats only
			time.Sleep(idle)
			_, _, cpuIdle := procStats(b, pid)
			var r results
			for b.Loop() {
				f.round(b, &r)
			}
			rss, peak, _ := procStats(b, pid)
			f.healthy(b)
			b.ReportMetric(float64(percentile(r.edit, 50))/1e6, "edit-p50-ms")
			b.ReportMetric(float64(percentile(r.edit, 99))/1e6, "edit-p99-ms")
			b.ReportMetric(float64(percentile(r.revoke, 50))/1e6, "revoke-p50-ms")
			b.ReportMetric(float64(percentile(r.revoke, 99))/1e6, "revoke-p99-ms")
			b.ReportMetric(mib(peak), "authority-peak-RSS-MiB")
			b.ReportMetric(float64(cpuIdle-cpuReady)/float64(idle)*100, "authority-idle-CPU-%")
			b.Logf("%s; authority RSS %.1f MiB with all connected, %.1f MiB at the end, peak %.1f MiB; "+
				"authority CPU %s to connect everyone (all ready in %s), %.1f%% idle",
				r.summary(n), mib(rssReady), mib(rss), mib(peak), cpuReady.Round(time.Millisecond),
				f.Ready.Round(time.Millisecond), float64(cpuIdle-cpuReady)/float64(idle)*100)
		})
	}
}

// TestFleetScaleQuick is the benchmark's quick mode for CI: a few sidecars, two rounds, and a
// failure only for an error (a sidecar not reached, a rejection, a failed poll) — never for time.
func TestFleetScaleQuick(t *testing.T) {
	f := startFleet(t, 25)
	var r results
	for range 2 {
		f.round(t, &r)
	}
	f.healthy(t)
	rss, peak, _ := procStats(t, f.auth.Pid())
	t.Logf("%s; authority RSS %.1f MiB (peak %.1f)", r.summary(25), mib(rss), mib(peak))
}
