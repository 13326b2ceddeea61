//go:build linux

package daemon_test

import (
	"fmt"
	"net/http"
	"net/netip"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/openfirma/firma/internal/e2e"
	"github.com/openfirma/firma/internal/testutil"
)

// BenchmarkTransparentOverhead measures what an agent pays for enforcement, against a direct
// connection to the same upstream in the same run: a new TCP+TLS connection with one small GET
// (connection setup is where the sidecar works: origin lookup, sniff, decision, audit, dial), and
// bulk download over one connection (the splice path). It reports both and their ratios.
func BenchmarkTransparentOverhead(b *testing.B) {
	testutil.RequireRoot(b)
	ca := testutil.NewCA(b, "bench CA")
	up := testutil.NewHTTPSUpstream(b, "bench", netip.AddrPortFrom(testutil.LoopbackAddr(b), 443), ca, "allowed.test")
	body := strings.Repeat("x", 8<<20)
	up.SetHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/bulk" {
			w.Write([]byte(body))
			return
		}
		w.Write([]byte("ok"))
	}), false)
	s := e2e.NewSidecar(b, e2e.SidecarOptions{
		Resolve:    map[string]string{"allowed.test": up.Addr.Addr().String()},
		UpstreamCA: ca.CertFile,
		AuditTOML:  "fsync_interval = \"1s\"",
	})
	client := e2e.Binary(b, "benchclient")

	// Both runs resolve allowed.test from a private /etc/hosts (a mount namespace), so the numbers
	// compare the connection path alone; DNS through the sidecar is not part of either.
	hosts := fmt.Sprintf(`echo "%s allowed.test" > /tmp/firma-bench-hosts.$$ && mount --bind /tmp/firma-bench-hosts.$$ /etc/hosts && rm /tmp/firma-bench-hosts.$$ && exec "$0" "$@"`, up.Addr.Addr())
	measure := func(inside bool, mode string, n int) map[string]float64 {
		url := "https://allowed.test/small"
		if mode == "bulk" {
			url = "https://allowed.test/bulk"
		}
		argv := append([]string{"-m", "sh", "-c", hosts, client}, "-mode", mode, "-n", strconv.Itoa(n), "-cacert", ca.CertFile, url)
		var out string
		var err error
		if inside {
			out, err = s.Run(b, "unshare", argv...)
		} else {
			cmd := exec.Command("unshare", argv...)
			cmd.Env = testutil.CleanEnv()
			var o []byte
			o, err = cmd.CombinedOutput()
			out = string(o)
		}
		if err != nil {
			b.Fatalf("%s inside=%v: %v\n%s", mode, inside, err, out)
		}
		return parseMetrics(b, out)
	}
	// Rounds interleave direct and firma runs, and the medians are reported, so that one noisy
	// moment on a shared machine does not decide the ratio.
	const rounds = 5
	n := max(b.N/rounds, 30)
	var dc, fc, db, fb []map[string]float64
	b.ResetTimer()
	for range rounds {
		dc = append(dc, measure(false, "conn", n))
		fc = append(fc, measure(true, "conn", n))
		db = append(db, measure(false, "bulk", 10))
		fb = append(fb, measure(true, "bulk", 10))
	}
	b.StopTimer()
	directConn := map[string]float64{"p50_us": median(dc, "p50_us")}
	firmaConn := map[string]float64{"p50_us": median(fc, "p50_us"), "p99_us": median(fc, "p99_us")}
	directBulk := map[string]float64{"mbps": median(db, "mbps")}
	firmaBulk := map[string]float64{"mbps": median(fb, "mbps")}
	b.ReportMetric(firmaConn["p50_us"]*1000, "ns/op")
	b.ReportMetric(directConn["p50_us"], "direct-conn-p50-µs")
	b.ReportMetric(firmaConn["p50_us"], "firma-conn-p50-µs")
	b.ReportMetric(firmaConn["p50_us"]/directConn["p50_us"], "conn-p50-ratio")
	b.ReportMetric(firmaConn["p99_us"], "firma-conn-p99-µs")
	b.ReportMetric(directBulk["mbps"], "direct-MB/s")
	b.ReportMetric(firmaBulk["mbps"], "firma-MB/s")
	b.ReportMetric(firmaBulk["mbps"]/directBulk["mbps"], "bulk-throughput-ratio")
}

func parseMetrics(b *testing.B, out string) map[string]float64 {
	m := map[string]float64{}
	for _, f := range strings.Fields(out) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			continue
		}
		x, err := strconv.ParseFloat(v, 64)
		if err == nil {
			m[k] = x
		}
	}
	if len(m) == 0 {
		b.Fatalf("no metrics in %q", out)
	}
	return m
}

func median(runs []map[string]float64, key string) float64 {
	v := make([]float64, len(runs))
	for i, r := range runs {
		v[i] = r[key]
	}
	sort.Float64s(v)
	return v[len(v)/2]
}
