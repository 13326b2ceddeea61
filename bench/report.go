package bench

import (
	"fmt"
	"math"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/openfirma/firma/bench/load"
)

// Sample is one measurement: one system, one workload, one round.
type Sample struct {
	System   string
	Workload load.Workload
	Round    int
	Result   load.Result
	// ProxyCPU is the CPU time the system's processes used during the run (0 for direct).
	ProxyCPU time.Duration
	// Held is, for the idle workload, what the system's processes held with every connection open
	// minus what they held freshly started.
	Held Usage
	// Err says why the sample failed: the system did not work, or answered wrongly. LogTail is
	// the end of the system's log at that moment.
	Err     string
	LogTail string
	LogFile string // the system's whole log, kept after the run
	// Notes are facts worth reporting that are not failures (a protocol the system did not offer).
	Notes []string
}

// Report is a run: what was planned, where, and what every sample measured.
type Report struct {
	Plan    Plan
	Machine Machine
	Started time.Time
	Took    time.Duration
	Samples []Sample
	// Errors are failures found after the rounds, such as an audit log that does not verify.
	Errors []string
}

// Failures are the samples that failed, in run order.
func (r *Report) Failures() []Sample {
	var out []Sample
	for _, s := range r.Samples {
		if s.Err != "" {
			out = append(out, s)
		}
	}
	return out
}

// cell is every sample of one system on one workload.
type cell struct {
	ok     []Sample
	failed int
}

func (r *Report) cell(sys System, w load.Workload) cell {
	var c cell
	for _, s := range r.Samples {
		if s.System != sys.Name || s.Workload != w {
			continue
		}
		if s.Err != "" {
			c.failed++
		} else {
			c.ok = append(c.ok, s)
		}
	}
	return c
}

// usable says whether the cell has numbers to show: it ran, and no round of it failed.
func (c cell) usable() bool { return len(c.ok) > 0 && c.failed == 0 }

func (c cell) median(f func(Sample) float64) float64 {
	xs := make([]float64, len(c.ok))
	for i, s := range c.ok {
		xs[i] = f(s)
	}
	return median(xs)
}

func (c cell) byRound(f func(Sample) float64) []float64 {
	xs := make([]float64, len(c.ok))
	for i, s := range c.ok {
		xs[i] = f(s)
	}
	return xs
}

// vsDirect is the median over rounds of f(sample) combined with f(direct's sample in the same
// round) by op: a ratio or a difference taken within a round, so that drift between rounds cancels.
func (r *Report) vsDirect(sys System, w load.Workload, f func(Sample) float64, op func(s, d float64) float64) float64 {
	direct := map[int]Sample{}
	for _, s := range r.cell(Direct, w).ok {
		direct[s.Round] = s
	}
	var xs []float64
	for _, s := range r.cell(sys, w).ok {
		if d, ok := direct[s.Round]; ok {
			xs = append(xs, op(f(s), f(d)))
		}
	}
	return median(xs)
}

func ratio(s, d float64) float64 { return s / d }
func diff(s, d float64) float64  { return s - d }

// Metrics of a sample.
func reqRate(s Sample) float64    { return s.Result.RequestsPerSec() }
func p50(s Sample) float64        { return s.Result.P50us }
func p99(s Sample) float64        { return s.Result.P99us }
func mbps(s Sample) float64       { return s.Result.MBPerSec() }
func rssPerConn(s Sample) float64 { return float64(s.Held.RSS) / float64(max(s.Result.Conns, 1)) }
func fdsPerConn(s Sample) float64 { return float64(s.Held.FDs) / float64(max(s.Result.Conns, 1)) }
func openSecs(s Sample) float64   { return s.Result.Seconds }
func cpuPerReq(s Sample) float64 {
	return micros(s.ProxyCPU) / float64(max(s.Result.Requests, 1))
}
func cpuPerGiB(s Sample) float64 {
	return s.ProxyCPU.Seconds() / (float64(max(s.Result.Bytes, 1)) / (1 << 30))
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// Workload families share a table layout.
func isRequestWorkload(w load.Workload) bool {
	return w == load.NewConn || w == load.KeepAliveH1 || w == load.KeepAliveH2
}

func isTransfer(w load.Workload) bool { return w == load.Download || w == load.Upload }

// wantProto is the HTTP version a workload asks for.
func wantProto(w load.Workload) string {
	if w == load.KeepAliveH2 {
		return "HTTP/2.0"
	}
	return "HTTP/1.1"
}

// Title names a workload in the report.
func (p Plan) Title(w load.Workload) string {
	switch w {
	case load.NewConn:
		return fmt.Sprintf("new TLS connection + GET, c=%d", NewConnConcurrency)
	case load.KeepAliveH1:
		return fmt.Sprintf("keep-alive GET over HTTP/1.1, c=%d", KeepAliveConcurrency)
	case load.KeepAliveH2:
		return fmt.Sprintf("keep-alive GET over HTTP/2, c=%d", KeepAliveConcurrency)
	case load.Download:
		return formatBytes(p.Bytes) + " download, one connection"
	case load.Upload:
		return formatBytes(p.Bytes) + " upload, one connection"
	case load.Idle:
		return thousands(float64(p.IdleConns)) + " concurrent idle connections"
	}
	return string(w)
}

// Markdown is the report: a summary like the one in the issue that asked for it, one detailed
// table per workload, the failures, and how to read it.
func (r *Report) Markdown() string {
	var b strings.Builder
	m := r.Machine
	fmt.Fprintf(&b, "# firma comparison benchmark\n\n")
	fmt.Fprintf(&b, "- run: %s, took %s\n", r.Started.UTC().Format("2006-01-02 15:04 MST"), r.Took.Round(time.Second))
	fmt.Fprintf(&b, "- plan: %s\n", r.Plan.Describe())
	fmt.Fprintf(&b, "- machine: %s, %d cores, kernel %s; load average %s at the start, %s at the end\n",
		m.CPU, m.Cores, m.Kernel, m.LoadStart, m.LoadEnd)
	fmt.Fprintf(&b, "- software: firma %s, %s", m.Commit, m.Go)
	for _, v := range m.Versions {
		fmt.Fprintf(&b, ", %s", v)
	}
	fmt.Fprintf(&b, "\n\n")

	fmt.Fprintf(&b, "## Summary\n\nMedian of %d interleaved round(s) (idle: %d). Direct in absolute numbers; every other system as a ratio to direct in the same round (higher is better); idle as the proxy's memory and descriptors per connection.\n\n", r.Plan.Rounds, r.Plan.IdleRounds)
	r.summary().render(&b)

	for _, w := range r.Plan.Workloads {
		fmt.Fprintf(&b, "\n## %s\n\n", r.Plan.Title(w))
		switch {
		case isRequestWorkload(w):
			r.requestTable(w).render(&b)
		case isTransfer(w):
			r.transferTable(w).render(&b)
		default:
			r.idleTable(w).render(&b)
		}
	}

	if notes := r.notes(); len(notes) > 0 {
		fmt.Fprintf(&b, "\n## Notes from the run\n\n")
		for _, n := range notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	if fails := r.Failures(); len(fails)+len(r.Errors) > 0 {
		fmt.Fprintf(&b, "\n## Failures\n\nAny failure fails the run: a system did not work, or answered wrongly.\n\n")
		for _, s := range fails {
			fmt.Fprintf(&b, "- %s, %s, round %d: %s\n", s.System, s.Workload, s.Round, oneLine(s.Err))
			if s.LogTail != "" {
				fmt.Fprintf(&b, "\n  ```\n%s\n  ```\n\n", indent(s.LogTail, "  "))
			}
			if s.LogFile != "" {
				fmt.Fprintf(&b, "  The system's whole log: %s\n", s.LogFile)
			}
		}
		for _, e := range r.Errors {
			fmt.Fprintf(&b, "- %s\n", oneLine(e))
		}
	}
	b.WriteString(method)
	return b.String()
}

const method = `
## How to read this

- Every response was verified: status, exact body (the transfers byte for byte), and the key
  the upstream saw: the credential on MITM (+key) systems, replacing the client's decoy; the decoy,
  untouched, on every tunnel. No response header carried the credential back to the client.
- "× direct" is the median of per-round ratios to direct; "+p50" the median of per-round
  differences. "by round" shows the noise.
- "proxy CPU" is user + system time of the system's processes during the run, divided by requests
  (or by GiB moved): it shows cost independent of how the 2 cores were shared.
- Idle: every system is restarted before the workload; RSS and descriptors per connection are
  (held − freshly started) / connections, summed over the system's processes.
- Systems: the client is the same Go program (bench/load) everywhere. firma transparent runs it in
  an enforced cgroup with no proxy settings; firma explicit, tinyproxy and squid are given to it as an
  HTTP proxy. firma audits every decision to a signed, hash-chained log and logs at info; tinyproxy
  logs at Info and squid writes its access log, as their Debian packages ship them; squid caches
  nothing. The upstream is a Go HTTPS server (HTTP/1.1 and h2) on a 127.x address.
- Reproduce: ` + "`sudo make bench`" + ` (full) or ` + "`sudo make bench-quick`" + `; one system and
  workload, with the sidecar's profiles: ` + "`sudo make bench BENCHFLAGS='-systems firma-mitm -workloads keepalive-h1 -profile /tmp/prof'`" + `.
`

// summary is workloads × systems.
func (r *Report) summary() table {
	t := table{header: []string{"workload"}}
	for _, s := range r.Plan.Systems {
		t.header = append(t.header, s.Label)
	}
	for _, w := range r.Plan.Workloads {
		row := []string{r.Plan.Title(w)}
		for _, s := range r.Plan.Systems {
			row = append(row, r.summaryCell(s, w))
		}
		t.rows = append(t.rows, row)
	}
	return t
}

func (r *Report) summaryCell(sys System, w load.Workload) string {
	c := r.cell(sys, w)
	if !c.usable() {
		return failText(c)
	}
	proto := protoMark(c, w)
	switch {
	case w == load.Idle && sys == Direct:
		return "—"
	case w == load.Idle:
		return fmt.Sprintf("%s · %s fds", kib(c.median(rssPerConn)), fixed(c.median(fdsPerConn), 1))
	case sys == Direct && isTransfer(w):
		return fmt.Sprintf("%s MB/s", thousands(c.median(mbps)))
	case sys == Direct:
		return fmt.Sprintf("%s/s (p50 %s)%s", thousands(c.median(reqRate)), latency(c.median(p50)), proto)
	case isTransfer(w):
		return times(r.vsDirect(sys, w, mbps, ratio))
	}
	return fmt.Sprintf("%s (p50 %s)%s", times(r.vsDirect(sys, w, reqRate, ratio)), latency(c.median(p50)), proto)
}

func (r *Report) requestTable(w load.Workload) table {
	t := table{header: []string{"system", "req/s", "× direct", "p50", "p99", "+p50", "proxy CPU/req", "req/s by round", "protocol"}}
	for _, sys := range r.Plan.Systems {
		c := r.cell(sys, w)
		if !c.usable() {
			t.rows = append(t.rows, []string{sys.Label, failText(c)})
			continue
		}
		row := []string{sys.Label, thousands(c.median(reqRate)), "", latency(c.median(p50)), latency(c.median(p99)), "", "", rounds(c.byRound(reqRate), thousands), protoText(c)}
		if sys != Direct {
			row[2] = times(r.vsDirect(sys, w, reqRate, ratio))
			row[5] = signedLatency(r.vsDirect(sys, w, p50, diff))
			row[6] = latency(c.median(cpuPerReq))
		}
		t.rows = append(t.rows, row)
	}
	return t
}

func (r *Report) transferTable(w load.Workload) table {
	t := table{header: []string{"system", "MB/s", "× direct", "proxy CPU/GiB", "MB/s by round"}}
	for _, sys := range r.Plan.Systems {
		c := r.cell(sys, w)
		if !c.usable() {
			t.rows = append(t.rows, []string{sys.Label, failText(c)})
			continue
		}
		row := []string{sys.Label, thousands(c.median(mbps)), "", "", rounds(c.byRound(mbps), thousands)}
		if sys != Direct {
			row[2] = times(r.vsDirect(sys, w, mbps, ratio))
			row[3] = fmt.Sprintf("%s s", fixed(c.median(cpuPerGiB), 2))
		}
		t.rows = append(t.rows, row)
	}
	return t
}

func (r *Report) idleTable(w load.Workload) table {
	t := table{header: []string{"system", "held", "proxy RSS/conn", "proxy fds/conn", "opened in", "RSS/conn by round"}}
	for _, sys := range r.Plan.Systems {
		c := r.cell(sys, w)
		if !c.usable() {
			t.rows = append(t.rows, []string{sys.Label, failText(c)})
			continue
		}
		row := []string{sys.Label, thousands(c.median(func(s Sample) float64 { return float64(s.Result.Conns) })), "—", "—",
			fmt.Sprintf("%s s", fixed(c.median(openSecs), 1)), "—"}
		if sys != Direct {
			row[2] = kib(c.median(rssPerConn))
			row[3] = fixed(c.median(fdsPerConn), 2)
			row[5] = rounds(c.byRound(rssPerConn), kib)
		}
		t.rows = append(t.rows, row)
	}
	return t
}

// notes gathers the samples' notes, each once.
func (r *Report) notes() []string {
	var out []string
	seen := map[string]bool{}
	for _, s := range r.Samples {
		for _, n := range s.Notes {
			if !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	return out
}

func failText(c cell) string {
	if len(c.ok)+c.failed == 0 {
		return "not run"
	}
	return fmt.Sprintf("FAIL (%d of %d rounds)", c.failed, len(c.ok)+c.failed)
}

// protoText lists the protocols the responses came in.
func protoText(c cell) string {
	seen := map[string]bool{}
	var out []string
	for _, s := range c.ok {
		if !seen[s.Result.Proto] {
			seen[s.Result.Proto] = true
			out = append(out, s.Result.Proto)
		}
	}
	return strings.Join(out, ", ")
}

// protoMark flags, in the summary, a cell whose responses did not come in the protocol the
// workload asked for.
func protoMark(c cell, w load.Workload) string {
	for _, s := range c.ok {
		if s.Result.Proto != wantProto(w) {
			return " [" + s.Result.Proto + "]"
		}
	}
	return ""
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}

// Number formats.

func thousands(x float64) string {
	if math.IsNaN(x) {
		return "—"
	}
	s := fmt.Sprintf("%.0f", x)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

func fixed(x float64, prec int) string {
	if math.IsNaN(x) {
		return "—"
	}
	return fmt.Sprintf("%.*f", prec, x)
}

func times(x float64) string {
	if math.IsNaN(x) {
		return "—"
	}
	return fmt.Sprintf("%.2f×", x)
}

// latency writes microseconds as µs below 1 ms, else as ms.
func latency(us float64) string {
	switch {
	case math.IsNaN(us):
		return "—"
	case math.Abs(us) < 1000:
		return fmt.Sprintf("%.0f µs", us)
	case math.Abs(us) < 100_000:
		return fmt.Sprintf("%.1f ms", us/1000)
	}
	return fmt.Sprintf("%.0f ms", us/1000)
}

func signedLatency(us float64) string {
	if !math.IsNaN(us) && us >= 0 {
		return "+" + latency(us)
	}
	return latency(us)
}

func kib(bytes float64) string {
	if math.IsNaN(bytes) {
		return "—"
	}
	return fmt.Sprintf("%.1f KiB", bytes/1024)
}

func rounds(xs []float64, f func(float64) string) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = f(x)
	}
	return strings.Join(parts, " · ")
}

// table is a Markdown table padded so that it also reads as plain text.
type table struct {
	header []string
	rows   [][]string
}

func (t table) render(b *strings.Builder) {
	width := make([]int, len(t.header))
	for _, row := range append([][]string{t.header}, t.rows...) {
		for i, c := range row {
			if i < len(width) {
				width[i] = max(width[i], utf8.RuneCountInString(c))
			}
		}
	}
	line := func(cells []string) {
		b.WriteString("|")
		for i := range width {
			c := ""
			if i < len(cells) {
				c = cells[i]
			}
			fmt.Fprintf(b, " %s%s |", c, strings.Repeat(" ", width[i]-utf8.RuneCountInString(c)))
		}
		b.WriteString("\n")
	}
	line(t.header)
	sep := make([]string, len(width))
	for i, w := range width {
		sep[i] = strings.Repeat("-", w)
	}
	line(sep)
	for _, row := range t.rows {
		line(row)
	}
}
