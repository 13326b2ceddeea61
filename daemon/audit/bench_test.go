package audit

import (
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"
)

// BenchmarkAppend reports what the audit log costs a decision: records/s when many connections
// append at once, and the p50 latency one Append adds, with signing on and off.
func BenchmarkAppend(b *testing.B) {
	for _, signed := range []bool{false, true} {
		name := "unsigned"
		if signed {
			name = "signed"
		}
		cfg := func(b *testing.B) Config {
			c := Config{FilePath: filepath.Join(b.TempDir(), "audit.jsonl"), MaxSizeBytes: 1 << 30}
			if signed {
				c.SigningKeyPath, _, _ = testKey(b)
			}
			return c
		}
		b.Run(name+"/serial", func(b *testing.B) {
			w := openTest(b, cfg(b))
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				ev := decision(i, "api.anthropic.com", "ALLOW")
				start := time.Now()
				if err := w.Append(ev); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
		})
		b.Run(name+"/parallel", func(b *testing.B) { appendParallel(b, openTest(b, cfg(b))) })
	}
}

// appendParallel appends from many goroutines at once (many connections deciding) and reports
// records/s and the CPU per record, which tells what the log costs even on a machine other work
// shares: 2 idle cores can append 2e6/cpu-µs records/s.
func appendParallel(b *testing.B, w *Writer) {
	b.SetParallelism(16)
	cpu0 := cpuTime()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			if err := w.Append(decision(i, "api.anthropic.com", "ALLOW")); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/record")
}

// BenchmarkAppendForwarded is BenchmarkAppend/signed/parallel with two sinks that take every
// record: what forwarding adds to an append.
func BenchmarkAppendForwarded(b *testing.B) {
	key, _, _ := testKey(b)
	cfg := Config{FilePath: filepath.Join(b.TempDir(), "audit.jsonl"), SigningKeyPath: key, MaxSizeBytes: 1 << 30,
		Sinks: []SinkConfig{{Type: SinkJournald}, {Type: SinkSyslog, Address: "udp://127.0.0.1:9"}}}
	log, _ := testLogger(b)
	w, err := open(cfg, log, openOptions{transport: func(SinkConfig) (transport, error) { return discard{}, nil }})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	appendParallel(b, w)
	var dropped uint64
	for _, st := range w.Stats().Sinks {
		dropped += st.Dropped
	}
	b.ReportMetric(float64(dropped)/float64(b.N), "sink-drops/record")
}

type discard struct{}

func (discard) send(recs []*fwd) (int, error) { return len(recs), nil }
func (discard) close() error                  { return nil }

// cpuTime is the CPU time (user + system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkVerify reports how fast `firma audit verify` checks a signed log.
func BenchmarkVerify(b *testing.B) {
	key, _, pub := testKey(b)
	path := filepath.Join(b.TempDir(), "audit.jsonl")
	w := openTest(b, Config{FilePath: path, SigningKeyPath: key, MaxSizeBytes: 1 << 30})
	for i := range 2000 {
		if err := w.Append(decision(i, "api.anthropic.com", "ALLOW")); err != nil {
			b.Fatal(err)
		}
	}
	w.Close()
	b.ResetTimer()
	for b.Loop() {
		rep, err := Verify(pub, path)
		if err != nil || !rep.OK() {
			b.Fatal(err, rep.Problem)
		}
	}
	b.ReportMetric(float64(2002*b.N)/b.Elapsed().Seconds(), "lines/s")
}
