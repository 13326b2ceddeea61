package metrics

import (
	"testing"

	"github.com/openfirma/firma/daemon/audit"
)

// BenchmarkRecorder is what counting adds to every audit record the judge appends (the append
// itself is a no-op here).
func BenchmarkRecorder(b *testing.B) {
	m := New(Sources{})
	r := m.Recorder(&fakeLog{})
	send := "communication.external.send"
	dec := decision("claude-code", "connect", "ALLOW", &send)
	done := completion("claude-code", "connect", 1000, 20000, 30, "")
	b.ReportAllocs()
	for b.Loop() {
		r.Append(dec)
		r.Append(done)
	}
}

// BenchmarkScrape is one scrape of a sidecar's /metrics, Go and process collectors included.
func BenchmarkScrape(b *testing.B) {
	kernel := map[string]uint64{}
	for _, n := range []string{"redirect_tcp", "redirect_dns", "published", "refuse_udp", "drop_egress"} {
		kernel[n] = 1
	}
	m := New(Sources{Kernel: func() (map[string]uint64, error) { return kernel, nil }, Health: func() Health { return Health{Ready: true} }})
	r := m.Recorder(&fakeLog{})
	send := "communication.external.send"
	for _, agent := range []string{"a", "b", "c"} {
		r.Append(decision(agent, "connect", "ALLOW", &send))
		r.Append(&audit.Event{Kind: audit.KindCompletion, Envelope: &audit.Envelope{Agent: audit.Agent{AgentID: agent}}, Result: &audit.Result{}})
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.reg.Gather(); err != nil {
			b.Fatal(err)
		}
	}
}
