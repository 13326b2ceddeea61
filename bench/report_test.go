package bench

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/openfirma/firma/bench/load"
)

// sampleReport is three rounds of direct, firma transparent CONNECT and squid ssl-bump on three
// workloads, with one failure.
func sampleReport() *Report {
	p := DefaultPlan(false)
	p.Systems = []System{Direct, FirmaConnect, SquidSSLBump}
	p.Workloads = []load.Workload{load.NewConn, load.KeepAliveH2, load.Download, load.Idle}
	r := &Report{Plan: p, Started: time.Date(2026, 12, 2, 4, 0, 0, 0, time.UTC), Took: 17*time.Minute + 3*time.Second,
		Machine: Machine{CPU: "AMD EPYC", Cores: 2, Kernel: "6.18.0", Go: "go1.26.8", Commit: "abc123", Versions: []string{"squid 5.7"},
			LoadStart: "1.00 0.50 0.20", LoadEnd: "2.00 1.00 0.50"}}
	req := func(sys System, w load.Workload, round int, rps, p50us float64, proto string) Sample {
		return Sample{System: sys.Name, Workload: w, Round: round, ProxyCPU: 5 * time.Second,
			Result: load.Result{Workload: w, Requests: int64(rps * 5), Seconds: 5, P50us: p50us, P99us: 3 * p50us, Proto: proto}}
	}
	// Per-round ratios to direct: 0.6, 0.5, 0.5 (median 0.50); the ratio of medians would be 0.55.
	for i, rates := range [][2]float64{{1000, 600}, {1100, 550}, {900, 450}} {
		round := i + 1
		r.Samples = append(r.Samples,
			req(Direct, load.NewConn, round, rates[0], 3400, "HTTP/1.1"),
			req(FirmaConnect, load.NewConn, round, rates[1], 5900, "HTTP/1.1"),
			req(SquidSSLBump, load.NewConn, round, rates[1]/2, 12000, "HTTP/1.1"),
			req(Direct, load.KeepAliveH2, round, 21495, 290, "HTTP/2.0"),
			req(FirmaConnect, load.KeepAliveH2, round, 10000, 600, "HTTP/2.0"),
			req(SquidSSLBump, load.KeepAliveH2, round, 5000, 1200, "HTTP/1.1"),
			Sample{System: Direct.Name, Workload: load.Download, Round: round, Result: load.Result{Requests: 1, Bytes: 1 << 30, Seconds: 1.134, Proto: "HTTP/1.1"}},
		)
		dl := Sample{System: FirmaConnect.Name, Workload: load.Download, Round: round, ProxyCPU: time.Second,
			Result: load.Result{Requests: 1, Bytes: 1 << 30, Seconds: 2.268, Proto: "HTTP/1.1"}}
		if round == 2 {
			dl = Sample{System: FirmaConnect.Name, Workload: load.Download, Round: round, Err: "download: payload corrupted at byte 7",
				LogTail: "WARN something broke", LogFile: "/tmp/firma-bench-logs-1/firma-connect-download-r2.log"}
		}
		r.Samples = append(r.Samples, dl)
	}
	r.Samples = append(r.Samples,
		Sample{System: Direct.Name, Workload: load.Idle, Round: 1, Result: load.Result{Conns: 8000, Requests: 8000, Seconds: 21}},
		Sample{System: FirmaConnect.Name, Workload: load.Idle, Round: 1, Result: load.Result{Conns: 8000, Requests: 8000, Seconds: 30},
			Held: Usage{RSS: 8000 * 71 * 1024, FDs: 8000 * 6}},
		Sample{System: SquidSSLBump.Name, Workload: load.Idle, Round: 1, Err: "idle: 12 of 8000 connections were closed by the other side while held"},
	)
	r.Samples[5].Notes = []string{"squid ssl-bump (+key) answered keepalive-h2 over HTTP/1.1 (asked for HTTP/2.0)."}
	r.Errors = []string{"firma-connect: audit log: the audit log holds 3 DENY decisions"}
	return r
}

func TestReportNumbers(t *testing.T) {
	md := sampleReport().Markdown()
	for _, want := range []string{
		"firma abc123, go1.26.8, squid 5.7",
		"load average 1.00 0.50 0.20 at the start, 2.00 1.00 0.50 at the end",
		"took 17m3s",
		// Summary: direct absolute, others as the median of per-round ratios.
		"| new TLS connection + GET, c=4 | 1,000/s (p50 3.4 ms) | 0.50× (p50 5.9 ms)",
		"21,495/s (p50 290 µs)",
		"0.23× (p50 1.2 ms) [HTTP/1.1]", // squid answered the h2 workload over HTTP/1.1
		"| 1 GiB download, one connection | 947 MB/s | FAIL (1 of 3 rounds)",
		"| 8,000 concurrent idle connections | — | 71.0 KiB · 6.0 fds | FAIL (1 of 1 rounds)",
		// Details.
		"| firma transparent CONNECT | 550 | 0.50× | 5.9 ms | 17.7 ms | +2.5 ms | 1.8 ms | 600 · 550 · 450 | HTTP/1.1 |",
		"| direct | 947 | | | 947 · 947 · 947 |",
		"| firma transparent CONNECT | 8,000 | 71.0 KiB | 6.00 | 30.0 s | 71.0 KiB |",
		// Failures, with the log, and run-level errors.
		"- firma-connect, download, round 2: download: payload corrupted at byte 7",
		"  WARN something broke",
		"The system's whole log: /tmp/firma-bench-logs-1/firma-connect-download-r2.log",
		"- squid-bump, idle, round 1: idle: 12 of 8000",
		"- firma-connect: audit log: the audit log holds 3 DENY decisions",
		"- squid ssl-bump (+key) answered keepalive-h2 over HTTP/1.1 (asked for HTTP/2.0).",
	} {
		if !strings.Contains(squeeze(md), squeeze(want)) {
			t.Errorf("report lacks %q", want)
		}
	}
	if t.Failed() {
		t.Log(md)
	}
}

// squeeze collapses runs of spaces, so that assertions do not depend on column padding.
func squeeze(s string) string {
	for strings.Contains(s, "  ") {
		s = strings.ReplaceAll(s, "  ", " ")
	}
	return s
}

// Tables are padded so that every line of one has the same width: they read as plain text too.
func TestReportTablesAligned(t *testing.T) {
	var widths []int
	for _, line := range strings.Split(sampleReport().Markdown(), "\n") {
		if !strings.HasPrefix(line, "|") {
			widths = nil
			continue
		}
		w := utf8.RuneCountInString(line)
		if len(widths) > 0 && w != widths[0] {
			t.Errorf("line %q is %d wide, its table %d", line, w, widths[0])
		}
		widths = append(widths, w)
	}
}

func TestReportFailures(t *testing.T) {
	r := sampleReport()
	if got := len(r.Failures()); got != 2 {
		t.Errorf("%d failures, want 2", got)
	}
	r.Samples, r.Errors = nil, nil
	md := r.Markdown()
	if strings.Contains(md, "## Failures") {
		t.Error("a run without failures lists some")
	}
	if !strings.Contains(squeeze(md), "| direct | not run |") {
		t.Error("a system without samples is not marked as not run")
	}
}

func TestNumberFormats(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{thousands(21495.4), "21,495"}, {thousands(999), "999"}, {thousands(1234567), "1,234,567"}, {thousands(-1234), "-1,234"},
		{latency(290), "290 µs"}, {latency(3400), "3.4 ms"}, {latency(123456), "123 ms"},
		{signedLatency(2500), "+2.5 ms"}, {signedLatency(-40), "-40 µs"},
		{times(0.5), "0.50×"}, {kib(72704), "71.0 KiB"}, {fixed(6, 2), "6.00"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
	nan := median(nil)
	for _, got := range []string{thousands(nan), latency(nan), times(nan), kib(nan), fixed(nan, 1)} {
		if got != "—" {
			t.Errorf("NaN written as %q", got)
		}
	}
}

func TestMedian(t *testing.T) {
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median = %v", m)
	}
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("median = %v", m)
	}
}
