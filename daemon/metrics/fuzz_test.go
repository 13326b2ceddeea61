package metrics

import (
	"io"
	"strings"
	"testing"
)

// FuzzParseEndpoint: whatever listen_addr says, parsing never panics, and what parses writes itself
// back the same and parses again to the same endpoint.
func FuzzParseEndpoint(f *testing.F) {
	for _, s := range []string{"127.0.0.1:9090", "[::1]:9090", "localhost:9090", ":9090", "unix:/run/firma/metrics.sock",
		"unix:rel", "0.0.0.0:65535", "[fe80::1%eth0]:9090", "host:port", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		e, err := ParseEndpoint(addr)
		if err != nil {
			return
		}
		again, err := ParseEndpoint(e.String())
		if err != nil || again != e || e.String() != addr {
			t.Fatalf("%q parsed to %+v, which writes %q and parses to %+v, %v", addr, e, e.String(), again, err)
		}
		e.Local()
		if ap, ok := e.AddrPort(); ok != (e.Network == "tcp") || (ok && !ap.IsValid()) {
			t.Fatalf("%q: AddrPort %v %v", addr, ap, ok)
		}
	})
}

// FuzzStatus: whatever a /metrics endpoint answers, the status command's parse and summary never
// panic.
func FuzzStatus(f *testing.F) {
	f.Add("# TYPE firma_decisions_total counter\nfirma_decisions_total{outcome=\"ALLOW\",agent=\"a\",mode=\"connect\",action_class=\"\"} 3\n")
	f.Add("firma_flows_active{listener=\"transparent\"} 1\nfirma_kernel_counter_total{counter=\"refuse_udp\"} 2\nfirma_kernel_programs_in_force 0\n")
	f.Add("# TYPE firma_audit_fsync_seconds histogram\nfirma_audit_fsync_seconds_bucket{le=\"+Inf\"} 2\nfirma_audit_fsync_seconds_sum 0.01\nfirma_audit_fsync_seconds_count 2\n")
	f.Add("firma_authority_bundle_present 1\nfirma_authority_bundle_age_seconds NaN\nfirma_build_info{version=\"v1\"} 1\n")
	f.Fuzz(func(t *testing.T, text string) {
		fams, err := ParseText(strings.NewReader(text))
		if err != nil {
			return
		}
		st := Status{Summary: Summarize(fams)}
		if err := st.WriteText(io.Discard); err != nil {
			t.Fatal(err)
		}
	})
}
