//go:build linux

package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openfirma/firma/bench/load"
	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/internal/e2e"
	"github.com/openfirma/firma/internal/testutil"
)

var (
	flagQuick     = flag.Bool("quick", false, "the CI variant: one short round, small transfers, few idle connections (under 2 minutes)")
	flagSystems   = flag.String("systems", "", "comma-separated systems to run (default all; direct is always added): "+systemNames(Systems))
	flagWorkloads = flag.String("workloads", "", "comma-separated workloads to run (default all): new, keepalive-h1, keepalive-h2, download, upload, idle")
	flagRounds    = flag.Int("rounds", 0, "interleaved rounds (default 3; quick 1)")
	flagDuration  = flag.Duration("duration", 0, "measured time of each request workload (default 5s; quick 1s)")
	flagBytes     = flag.Int64("bytes", 0, "download and upload size in bytes (default 1 GiB; quick 32 MiB)")
	flagIdle      = flag.Int("idle", 0, "idle connections (default 8000; quick 200)")
	flagIdleRound = flag.Int("idle-rounds", 0, "rounds that run the idle workload, the first ones (default 1)")
	flagOut       = flag.String("out", "", "also write the report here (default: results.md, for a full run of every system and workload)")
	flagProfile   = flag.String("profile", "", "write CPU and allocation profiles of the firma sidecars, one pair per run, to this directory")
)

// BenchmarkCompare is the comparison harness (`make bench`). It ignores b.N: run it with
// -benchtime 1x. Flags come after -args; see the package doc and results.md.
func BenchmarkCompare(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Fatal("the comparison harness needs root: it attaches firma's programs to cgroups, binds port 443 and starts squid")
	}
	plan, err := planFromFlags()
	if err != nil {
		b.Fatal(err)
	}
	rep := newHarness(b, plan).run()

	md := rep.Markdown()
	fmt.Print("\n" + md)
	out := *flagOut
	if out == "" && plan.Complete() {
		out = "results.md"
	}
	if out != "" {
		if err := os.WriteFile(out, []byte(md), 0o644); err != nil {
			b.Fatal(err)
		}
		fmt.Fprintf(os.Stderr, "bench: report written to %s\n", out)
	} else {
		fmt.Fprintf(os.Stderr, "bench: %s run, results.md left as it was (-out FILE writes the report)\n", strings.SplitN(plan.Describe(), ":", 2)[0])
	}
	if n := len(rep.Failures()) + len(rep.Errors); n > 0 {
		b.Fatalf("%d failure(s): see Failures in the report", n)
	}
}

func planFromFlags() (Plan, error) {
	p := DefaultPlan(*flagQuick)
	if err := p.Select(*flagSystems, *flagWorkloads); err != nil {
		return p, err
	}
	if *flagRounds != 0 {
		p.Rounds = *flagRounds
	}
	if *flagDuration != 0 {
		p.Duration = *flagDuration
	}
	if *flagBytes != 0 {
		p.Bytes = *flagBytes
	}
	if *flagIdle != 0 {
		p.IdleConns = *flagIdle
	}
	if *flagIdleRound != 0 {
		p.IdleRounds = *flagIdleRound
	}
	return p, p.Validate()
}

// harness is one run: the upstream, the systems, the load generator.
type harness struct {
	tb         testing.TB
	plan       Plan
	key        string // the credential MITM systems inject; the client never has it
	upCA       *testutil.CA
	up         *upstream
	loadgen    string
	tools      tools
	profileDir string
	logDir     string // failed systems' logs, created on the first failure
	systems    []*running
	report     *Report
}

func newHarness(tb testing.TB, plan Plan) *harness {
	tb.Helper()
	h := &harness{tb: tb, plan: plan, report: &Report{Plan: plan, Started: time.Now()}}
	// The upstream lives in this process and holds one connection per idle tunnel.
	if slices.Contains(plan.Workloads, load.Idle) {
		if err := load.CheckOpenFiles("the harness (it serves the upstream)", plan.IdleConns+load.FileMargin); err != nil {
			tb.Fatal(err)
		}
	}
	if *flagProfile != "" {
		h.profileDir = *flagProfile
		if err := os.MkdirAll(h.profileDir, 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	h.key = "sk-bench-" + randomHex(tb, 16)
	h.tools = findTools(tb, plan)
	h.loadgen = e2e.Binary(tb, "loadgen")
	h.upCA = testutil.NewCA(tb, "firma bench upstream CA")
	h.up = startUpstream(tb, h.upCA, h.key)

	root, err := filepath.Abs("..")
	if err != nil {
		tb.Fatal(err)
	}
	h.report.Machine = ReadMachine(root)
	h.report.Machine.Versions = h.tools.versions

	for _, sys := range plan.Systems {
		progress("starting %s", sys.Name)
		switch {
		case sys == Direct:
			h.systems = append(h.systems, &running{System: Direct, caFile: h.upCA.CertFile})
		case sys.Firma:
			h.systems = append(h.systems, h.startFirma(sys))
		case sys == Tinyproxy:
			h.systems = append(h.systems, h.startTinyproxy())
		case sys == Squid:
			h.systems = append(h.systems, h.startSquid(false))
		case sys == SquidSSLBump:
			h.systems = append(h.systems, h.startSquid(true))
		}
	}
	return h
}

func randomHex(tb testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func progress(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", a...)
}

// run measures every workload on every system, round after round; within a round the systems'
// order rotates, so that none is always measured right after the same neighbour.
func (h *harness) run() *Report {
	for round := 1; round <= h.plan.Rounds; round++ {
		for _, w := range h.plan.Workloads {
			if !h.plan.Runs(w, round) {
				continue
			}
			n := len(h.systems)
			for i := range n {
				sys := h.systems[(i+round-1)%n]
				s := h.measure(sys, w, round)
				h.report.Samples = append(h.report.Samples, s)
				progress("round %d/%d  %-12s %-19s %s", round, h.plan.Rounds, w, sys.Name, brief(s))
				if s.LogTail != "" {
					progress("%s's log ends:\n%s", sys.Name, s.LogTail)
				}
			}
		}
	}
	for _, sys := range h.systems {
		if sys.sidecar != nil {
			h.checkAudit(sys)
		}
	}
	h.report.Took = time.Since(h.report.Started)
	h.report.Machine.LoadEnd = LoadAvg()
	return h.report
}

func brief(s Sample) string {
	r := s.Result
	switch {
	case s.Err != "":
		return "FAIL: " + oneLine(s.Err)
	case isRequestWorkload(s.Workload):
		return fmt.Sprintf("%s req/s, p50 %s, p99 %s, %s", thousands(r.RequestsPerSec()), latency(r.P50us), latency(r.P99us), r.Proto)
	case isTransfer(s.Workload):
		return fmt.Sprintf("%s MB/s", thousands(r.MBPerSec()))
	}
	return fmt.Sprintf("%d held, %s and %s fds per connection", r.Conns, kib(rssPerConn(s)), fixed(fdsPerConn(s), 2))
}

// wantKey is what the upstream must see: the credential from MITM systems, the client's decoy
// through every tunnel.
func wantKey(sys *running) load.KeySeen {
	if sys.MITM {
		return load.KeyInjected
	}
	return load.KeyAgent
}

func (h *harness) clientArgs(sys *running, w load.Workload) []string {
	args := []string{"-workload", string(w), "-addr", benchAddr, "-cacert", sys.caFile, "-want-key", string(wantKey(sys))}
	if sys.proxy != "" {
		args = append(args, "-proxy", sys.proxy)
	} else {
		// Direct, or the transparent redirect: the original destination is the upstream itself.
		args = append(args, "-dial", h.up.addr.String())
	}
	switch w {
	case load.NewConn:
		args = append(args, "-c", strconv.Itoa(NewConnConcurrency), "-duration", h.plan.Duration.String())
	case load.KeepAliveH1, load.KeepAliveH2:
		args = append(args, "-c", strconv.Itoa(KeepAliveConcurrency), "-duration", h.plan.Duration.String())
	case load.Download, load.Upload:
		args = append(args, "-bytes", strconv.FormatInt(h.plan.Bytes, 10))
	case load.Idle:
		args = append(args, "-conns", strconv.Itoa(h.plan.IdleConns))
	}
	return args
}

// timeout bounds one client run: generous, since only a hung system should hit it.
func (h *harness) timeout(w load.Workload) time.Duration {
	if isRequestWorkload(w) {
		return h.plan.Duration + 2*time.Minute
	}
	return 15 * time.Minute
}

// usage is what sys's processes hold now (zero for direct).
func (h *harness) usage(sys *running) (Usage, error) {
	if sys.pid == nil {
		return Usage{}, nil
	}
	return TreeUsage("/proc", sys.pid())
}

// measure runs one workload on one system and checks what came back.
func (h *harness) measure(sys *running, w load.Workload, round int) Sample {
	s := Sample{System: sys.Name, Workload: w, Round: round}
	fresh := w == load.Idle && sys.restart != nil
	if fresh {
		sys.restart()
	}
	err := h.runClient(sys, w, &s)
	if err == nil {
		err = h.check(sys, w, &s)
	}
	if err != nil {
		if why := h.up.Refusals(); len(why) > 0 {
			err = fmt.Errorf("%w (the upstream refused: %s)", err, strings.Join(why, "; "))
		}
		s.Err = err.Error()
		if sys.logs != nil {
			logs := sys.logs()
			s.LogTail = tail(logs, logTailLines)
			s.LogFile = h.saveLog(fmt.Sprintf("%s-%s-r%d.log", sys.Name, w, round), logs)
		}
	}
	// After the idle workload, and after any failure, the next run gets fresh processes.
	if sys.restart != nil && (fresh || err != nil) {
		sys.restart()
	}
	return s
}

// saveLog keeps a failed system's whole log for later reading, in a directory that outlives the
// run, and returns its path ("" if it could not be written).
func (h *harness) saveLog(name, text string) string {
	if h.logDir == "" {
		dir, err := os.MkdirTemp("", "firma-bench-logs-")
		if err != nil {
			return ""
		}
		h.logDir = dir
	}
	path := filepath.Join(h.logDir, name)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		return ""
	}
	return path
}

// logTailLines is how much of a system's log a failed sample quotes.
const logTailLines = 8

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// runClient runs the load generator for sys and fills s with its result and the system's usage.
func (h *harness) runClient(sys *running, w load.Workload, s *Sample) error {
	before, err := h.usage(sys)
	if err != nil {
		return fmt.Errorf("reading the system's usage: %w", err)
	}
	h.up.Reset()
	ctx, cancel := context.WithTimeout(context.Background(), h.timeout(w))
	defer cancel()
	args := h.clientArgs(sys, w)
	var cmd *exec.Cmd
	if sys.cgroup != nil {
		cmd = sys.cgroup.Command(ctx, h.tb, h.loadgen, args...)
	} else {
		cmd = exec.CommandContext(ctx, h.loadgen, args...)
		cmd.Env = testutil.CleanEnv()
	}
	if err := h.checkNoKey(cmd); err != nil {
		return err
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	profiled := make(chan error, 1)
	if sys.debugAddr != "" {
		go func() {
			prefix := filepath.Join(h.profileDir, fmt.Sprintf("%s-%s-r%d", sys.Name, w, s.Round))
			profiled <- CaptureProfiles(ctx, sys.debugAddr, prefix, h.profileWindow(w))
		}()
	} else {
		profiled <- nil
	}

	var final []byte
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var held load.HeldLine
		if json.Unmarshal(sc.Bytes(), &held) == nil && held.Held > 0 {
			err = h.measureHeld(sys, before, s)
			io.WriteString(stdin, "measured\n")
			if err != nil {
				break
			}
			continue
		}
		final = bytes.Clone(sc.Bytes())
	}
	stdin.Close()
	waitErr := cmd.Wait()
	if perr := <-profiled; perr != nil && err == nil {
		err = fmt.Errorf("capturing profiles: %w", perr)
	}
	if waitErr != nil {
		return fmt.Errorf("load generator: %v: %s", waitErr, strings.TrimSpace(stderr.String()))
	}
	if err != nil {
		return err
	}
	if err := json.Unmarshal(final, &s.Result); err != nil {
		return fmt.Errorf("load generator's result %q: %w", final, err)
	}
	after, err := h.usage(sys)
	if err != nil {
		return fmt.Errorf("reading the system's usage: %w", err)
	}
	s.ProxyCPU = after.CPU - before.CPU
	return nil
}

// profileWindow is how long a profile covers: the measured time of a request workload, a few
// seconds of the others.
func (h *harness) profileWindow(w load.Workload) time.Duration {
	if isRequestWorkload(w) {
		return h.plan.Duration
	}
	return 3 * time.Second
}

// measureHeld records what the system holds with every idle connection open, and checks that
// every tunnel reached the upstream.
func (h *harness) measureHeld(sys *running, before Usage, s *Sample) error {
	if sys.pid != nil {
		now, err := h.usage(sys)
		if err != nil {
			return fmt.Errorf("reading the system's usage: %w", err)
		}
		s.Held = now.Sub(before)
	}
	if live := h.up.live.Load(); !sys.MITM && live < int64(h.plan.IdleConns) {
		return fmt.Errorf("%d connections held but only %d open at the upstream", h.plan.IdleConns, live)
	}
	return nil
}

// checkNoKey makes sure the client is not handed the credential, in its arguments or environment.
func (h *harness) checkNoKey(cmd *exec.Cmd) error {
	for _, s := range append(append([]string{}, cmd.Args...), cmd.Env...) {
		if strings.Contains(s, h.key) {
			return errors.New("the load generator would be given the credential")
		}
	}
	return nil
}

// check holds a finished run to what the upstream saw and to the plan.
func (h *harness) check(sys *running, w load.Workload, s *Sample) error {
	r := s.Result
	var errs []error
	counts := h.up.Counts()
	want := wantKey(sys)
	if counts[want] < r.Requests {
		errs = append(errs, fmt.Errorf("the upstream saw key %q on %d requests, the client verified %d", want, counts[want], r.Requests))
	}
	for k, n := range counts {
		if k != want && n > 0 {
			errs = append(errs, fmt.Errorf("the upstream saw key %q on %d requests", k, n))
		}
	}
	for _, hdr := range r.Headers {
		if strings.Contains(hdr, h.key) {
			errs = append(errs, fmt.Errorf("the credential came back to the client in the response header %s", strings.SplitN(hdr, ":", 2)[0]))
		}
	}
	switch {
	case r.Workload != w:
		errs = append(errs, fmt.Errorf("the load generator ran %q", r.Workload))
	case isTransfer(w) && r.Bytes != h.plan.Bytes:
		errs = append(errs, fmt.Errorf("%d bytes moved, want %d", r.Bytes, h.plan.Bytes))
	case w == load.Idle && r.Conns != h.plan.IdleConns:
		errs = append(errs, fmt.Errorf("%d connections held, want %d", r.Conns, h.plan.IdleConns))
	case isRequestWorkload(w) && r.Requests < 1:
		errs = append(errs, errors.New("no request completed"))
	}
	if r.Proto != wantProto(w) {
		s.Notes = append(s.Notes, fmt.Sprintf("%s answered %s over %s (asked for %s).", sys.Label, w, r.Proto, wantProto(w)))
	}
	return errors.Join(errs...)
}

// checkAudit verifies a firma system's audit log after the run: the chain and signatures hold
// under load, there is at least one ALLOW decision for every connection (tunnels) or request (MITM)
// the client verified, and — unless a sample of the system already failed, which may well have
// been a refusal — nothing was denied.
func (h *harness) checkAudit(sys *running) {
	fail := func(err error) {
		h.report.Errors = append(h.report.Errors, fmt.Sprintf("%s: audit log: %v", sys.Name, err))
	}
	files := sys.sidecar.AuditFiles(h.tb)
	if out, code := e2e.VerifyAudit(h.tb, sys.auditPub, files...); code != 0 {
		fail(fmt.Errorf("firma audit verify: exit %d: %s", code, oneLine(out)))
		return
	}
	var want int64
	failed := false
	for _, s := range h.report.Samples {
		switch {
		case s.System != sys.Name:
		case s.Err != "":
			failed = true
		case sys.MITM || s.Workload == load.NewConn:
			want += s.Result.Requests
		case s.Workload == load.Idle:
			want += int64(s.Result.Conns)
		default:
			want++
		}
	}
	allow, deny, err := countDecisions(files)
	switch {
	case err != nil:
		fail(err)
	case deny > 0 && !failed:
		fail(fmt.Errorf("%d DENY decisions, though every sample passed", deny))
	case allow < want:
		fail(fmt.Errorf("%d ALLOW decisions for %d verified connections or requests", allow, want))
	default:
		progress("audit %s: chain and signatures verified; %d ALLOW and %d DENY decisions for %d verified connections or requests",
			sys.Name, allow, deny, want)
	}
}

// countDecisions streams audit files and counts decision records by outcome.
func countDecisions(files []string) (allow, deny int64, err error) {
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return 0, 0, err
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<24)
		for sc.Scan() {
			var ev struct {
				Kind     audit.Kind `json:"kind"`
				Decision *struct {
					Outcome string `json:"outcome"`
				} `json:"decision"`
			}
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				f.Close()
				return 0, 0, fmt.Errorf("%s: %w", name, err)
			}
			if ev.Kind != audit.KindDecision || ev.Decision == nil {
				continue
			}
			switch ev.Decision.Outcome {
			case "ALLOW":
				allow++
			case "DENY":
				deny++
			}
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return 0, 0, err
		}
	}
	return allow, deny, nil
}
