package dns

import (
	"net"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/daemon/judge"
	"github.com/openfirma/firma/internal/hostname"
)

// fuzzWriter is a dns.ResponseWriter that keeps what the server answers.
type fuzzWriter struct{ answers []*dns.Msg }

func (w *fuzzWriter) LocalAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 15053}
}
func (w *fuzzWriter) RemoteAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}
func (w *fuzzWriter) WriteMsg(m *dns.Msg) error { w.answers = append(w.answers, m); return nil }
func (w *fuzzWriter) Write(b []byte) (int, error) {
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		return 0, err
	}
	w.answers = append(w.answers, m)
	return len(b), nil
}
func (w *fuzzWriter) Close() error        { return nil }
func (w *fuzzWriter) TsigStatus() error   { return nil }
func (w *fuzzWriter) TsigTimersOnly(bool) {}
func (w *fuzzWriter) Hijack()             {}

// FuzzQuery runs any datagram through what the resolver does with it, without the network: the
// reader's parse, the server's accept function, and ServeDNS, with every name answered by a static
// override (nothing is forwarded). Whatever the bytes: nothing panics; a response (QR set) is
// dropped without a word; anything else leaves exactly one decision — a malformed one when it does
// not parse, with no answer — and a message that parses gets exactly one answer, with its id, whose
// question is the one asked when it is not a refusal. What is judged is a hostname, the very name
// that would be resolved.
func FuzzQuery(f *testing.F) {
	q := func(name string, qtype uint16, edit func(*dns.Msg)) []byte {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), qtype)
		if edit != nil {
			edit(m)
		}
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	f.Add(q("example.test", dns.TypeA, nil))
	f.Add(q("denied.test", dns.TypeAAAA, nil))
	f.Add(q("x.example.test", dns.TypeHTTPS, nil))
	f.Add(q("a.test", dns.TypeA, func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) }))
	f.Add(q("a.test", dns.TypeA, func(m *dns.Msg) { m.Opcode = dns.OpcodeUpdate }))
	f.Add(q("a.test", dns.TypeA, func(m *dns.Msg) { m.Response = true }))
	f.Add(q("a.test", dns.TypeTXT, func(m *dns.Msg) { m.SetEdns0(4096, true) }))
	f.Add([]byte("not a DNS message"))
	f.Add([]byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1}) // a name that points at itself

	f.Fuzz(func(t *testing.T, b []byte) {
		j := &fakeJudge{denied: map[string]bool{"denied.test": true}}
		s := New(Options{
			Origins: fakeOrigins{},
			Flow:    func(o bpf.Origin) *judge.Flow { return &judge.Flow{AgentID: "a", PID: o.PID, OrigDst: o.Dst} },
			Judge:   j,
			Static:  func(string) (netip.Addr, bool) { return netip.MustParseAddr("127.0.0.2"), true },
			Names:   NewNames(16),
			Log:     zerolog.Nop(),
		})
		w := &fuzzWriter{}
		if !s.parses(b, w.RemoteAddr(), bpf.UDP) {
			if asked := j.asked(); len(asked) != 1 || asked[0].Refuse != ReasonMalformed {
				t.Fatalf("unparsable %q: decisions %+v, want one malformed", b, asked)
			}
			return
		}
		req := new(dns.Msg)
		if err := req.Unpack(b); err != nil {
			t.Fatalf("parses, then does not unpack: %v", err)
		}
		if acceptQueries(dns.Header{Id: req.Id, Bits: headerBits(b)}) == dns.MsgIgnore {
			if !req.Response {
				t.Fatalf("a query ignored: %q", b)
			}
			if len(j.asked()) != 0 {
				t.Fatalf("a response was judged: %+v", j.asked())
			}
			return
		}
		s.ServeDNS(w, req)
		asked := j.asked()
		if len(asked) != 1 {
			t.Fatalf("%d decisions for one query %v", len(asked), req.Question)
		}
		in := asked[0]
		if h, port, err := hostname.Parse(in.Host); in.Refuse == "" && (err != nil || port != 0 || h != in.Host || len(req.Question) != 1) {
			t.Fatalf("judged %q (a hostname? %q %d %v) for %v", in.Host, h, port, err, req.Question)
		}
		if len(w.answers) != 1 {
			t.Fatalf("%d answers for one query", len(w.answers))
		}
		a := w.answers[0]
		if a.Id != req.Id || !a.Response {
			t.Fatalf("answer id %d response %v for query id %d", a.Id, a.Response, req.Id)
		}
		if a.Rcode == dns.RcodeSuccess && (len(a.Question) != 1 || a.Question[0] != req.Question[0] || in.Refuse != "" || j.denied[in.Host]) {
			t.Fatalf("success answer %v to %v (intent %+v)", a.Question, req.Question, in)
		}
	})
}

// headerBits is the flags word of a DNS header.
func headerBits(b []byte) uint16 { return uint16(b[2])<<8 | uint16(b[3]) }
