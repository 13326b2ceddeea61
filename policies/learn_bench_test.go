package policies

import (
	"context"
	"fmt"
	"testing"

	"github.com/rs/zerolog"
)

// benchObservations is a day of a busy agent: n records over 40 hosts in 4 domains, 250 distinct
// paths each, a third of them classified by the rules in force.
func benchObservations(n int) []Observed {
	out := make([]Observed, n)
	for i := range out {
		host := fmt.Sprintf("h%d.d%d.test", i%10, i%4)
		class := ""
		if i%3 == 0 {
			class = "communication.external.read"
		}
		out[i] = obs("a", fmt.Sprintf("GET https://%s/v1/items/%d", host, i%250), Deny, class)
		out[i].Seq = uint64(i + 1)
	}
	return out
}

// BenchmarkSuggest: reading records and writing the suggestion, per record.
func BenchmarkSuggest(b *testing.B) {
	in := benchObservations(100_000)
	b.ReportAllocs()
	for b.Loop() {
		s, _ := NewSuggester(SuggestOptions{AgentID: "a"})
		for _, o := range in {
			s.Add(o)
		}
		if _, err := s.Suggest(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(in)), "ns/record")
}

// BenchmarkReplay: judging one recorded decision again under the embedded policy.
func BenchmarkReplay(b *testing.B) {
	in := benchObservations(10_000)
	e, err := New(Config{}, DefaultMappingConfig(), zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	r := NewReplayer(e, ReplayOptions{})
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := r.Add(ctx, in[i%len(in)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
