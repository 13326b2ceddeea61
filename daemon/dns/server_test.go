package dns

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/daemon/judge"
	"github.com/openfirma/firma/policies"
)

// fakeOrigins attests every peer as cgroup 7, pid 99, unless refuse is set.
type fakeOrigins struct{ refuse bool }

func (o fakeOrigins) LookupDNS(peer netip.AddrPort, proto bpf.Proto) (bpf.Origin, error) {
	if o.refuse {
		return bpf.Origin{}, bpf.ErrNoOrigin
	}
	return bpf.Origin{Dst: netip.MustParseAddrPort("127.0.0.53:53"), Proto: proto, PID: 99, CgroupID: 7, Comm: "dig"}, nil
}

// fakeJudge allows every host but the denied ones and remembers what it was asked.
type fakeJudge struct {
	mu      sync.Mutex
	denied  map[string]bool
	intents []judge.Intent
	flows   []*judge.Flow
}

func (j *fakeJudge) Decide(_ context.Context, f *judge.Flow, in judge.Intent) judge.Verdict {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.intents = append(j.intents, in)
	j.flows = append(j.flows, f)
	if in.Refuse != "" || j.denied[in.Host] {
		return judge.Verdict{Decision: policies.Decision{Outcome: policies.Deny}}
	}
	return judge.Verdict{Decision: policies.Decision{Outcome: policies.Allow}}
}

func (j *fakeJudge) Complete(judge.Verdict, judge.Result) {}

func (j *fakeJudge) asked() []judge.Intent {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]judge.Intent(nil), j.intents...)
}

// fakeUpstream is a nameserver on loopback that answers A 93.184.216.34 and an HTTPS record
// carrying an ECH configuration for every name, and counts queries.
func fakeUpstream(t *testing.T) (netip.AddrPort, *atomic.Int64) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n := new(atomic.Int64)
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		n.Add(1)
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		switch q.Qtype {
		case dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300},
				A: net.ParseIP("93.184.216.34")})
		case dns.TypeHTTPS:
			h := &dns.HTTPS{SVCB: dns.SVCB{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeHTTPS, Class: dns.ClassINET, Ttl: 300},
				Priority: 1, Target: "."}}
			h.Value = []dns.SVCBKeyValue{&dns.SVCBAlpn{Alpn: []string{"h2"}}, &dns.SVCBECHConfig{ECH: []byte{1, 2, 3}}}
			m.Answer = append(m.Answer, h)
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return netip.MustParseAddrPort(pc.LocalAddr().String()), n
}

func start(t *testing.T, o Options) (*Server, string) {
	t.Helper()
	if o.Flow == nil {
		o.Flow = func(o bpf.Origin) *judge.Flow { return &judge.Flow{AgentID: "a", PID: o.PID, OrigDst: o.Dst} }
	}
	o.Log = zerolog.Nop()
	s := New(o)
	if err := s.Listen([]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	return s, s.servers[0].PacketConn.LocalAddr().String()
}

func query(t *testing.T, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	c := &dns.Client{Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestServe(t *testing.T) {
	up, forwarded := fakeUpstream(t)
	j := &fakeJudge{denied: map[string]bool{"paste.rs": true}}
	names := NewNames(10)
	_, addr := start(t, Options{Origins: fakeOrigins{}, Judge: j, Forward: []netip.AddrPort{up}, Names: names,
		Static: func(n string) (netip.Addr, bool) {
			if n == "api.anthropic.com" {
				return netip.MustParseAddr("127.0.0.2"), true
			}
			return netip.Addr{}, false
		}})

	// Allowed and forwarded: the answer is learned for the cgroup.
	r := query(t, addr, "Example.COM", dns.TypeA)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("allowed query: %v", r)
	}
	if n, ok := names.Lookup(7, netip.MustParseAddr("93.184.216.34")); !ok || n != "example.com" {
		t.Fatalf("learned %q, %v", n, ok)
	}
	if _, ok := names.Lookup(8, netip.MustParseAddr("93.184.216.34")); ok {
		t.Fatal("a name learned by one cgroup must not serve another")
	}
	// Denied: REFUSED, nothing forwarded.
	before := forwarded.Load()
	if r := query(t, addr, "paste.rs", dns.TypeA); r.Rcode != dns.RcodeRefused {
		t.Fatalf("denied query: %v", r)
	}
	if forwarded.Load() != before {
		t.Fatal("a denied query was forwarded")
	}
	// Static override answered by the sidecar itself.
	r = query(t, addr, "api.anthropic.com", dns.TypeA)
	if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "127.0.0.2" || forwarded.Load() != before {
		t.Fatalf("static answer: %v", r)
	}
	// ECH stripped from HTTPS records.
	r = query(t, addr, "ech.example", dns.TypeHTTPS)
	h, ok := r.Answer[0].(*dns.HTTPS)
	if !ok || len(h.Value) != 1 || h.Value[0].Key() != dns.SVCB_ALPN {
		t.Fatalf("HTTPS answer kept ECH: %v", r.Answer)
	}

	got := j.asked()
	if len(got) != 4 || got[0].Host != "example.com" || got[0].QType != "A" || got[0].Mode != judge.ModeDNS ||
		got[0].Method != policies.MethodDNS || got[0].Port != 53 || got[3].QType != "HTTPS" {
		t.Fatalf("intents %+v", got)
	}
	if j.flows[0].PID != 99 {
		t.Fatalf("flow %+v", j.flows[0])
	}
}

// TestMalformedIsRecorded: a query with no or several questions is refused, and still judged (so it
// leaves a record) with the malformed reason.
func TestMalformedIsRecorded(t *testing.T) {
	j := &fakeJudge{}
	_, addr := start(t, Options{Origins: fakeOrigins{}, Judge: j})
	m := new(dns.Msg)
	m.Id = dns.Id()
	m.Question = []dns.Question{{Name: "a.example.", Qtype: dns.TypeA, Qclass: dns.ClassINET}, {Name: "b.example.", Qtype: dns.TypeA, Qclass: dns.ClassINET}}
	r, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(m, addr)
	if err != nil {
		t.Fatal(err)
	}
	if r.Rcode != dns.RcodeFormatError {
		t.Fatalf("rcode %d", r.Rcode)
	}
	got := j.asked()
	if len(got) != 1 || got[0].Refuse != ReasonMalformed || got[0].Host != "a.example" {
		t.Fatalf("intents %+v", got)
	}
}

// TestNonHostnameRefused: a name whose label holds a '.' ("a\.b.example": label "a.b" in example)
// would match *.b.example as text while resolving in example; it is refused as malformed, and
// nothing is forwarded.
func TestNonHostnameRefused(t *testing.T) {
	up, forwarded := fakeUpstream(t)
	j := &fakeJudge{}
	_, addr := start(t, Options{Origins: fakeOrigins{}, Judge: j, Forward: []netip.AddrPort{up}})
	for _, name := range []string{`a\.b.example.`, `a\000b.example.`, `sp\ ace.example.`} {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		r, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(m, addr)
		if err != nil {
			t.Fatal(err)
		}
		if r.Rcode != dns.RcodeFormatError {
			t.Errorf("%s: rcode %d, want FORMERR", name, r.Rcode)
		}
	}
	for _, in := range j.asked() {
		if in.Refuse != ReasonMalformed {
			t.Errorf("decision %+v, want a malformed refusal", in)
		}
	}
	if n := len(j.asked()); n != 3 || forwarded.Load() != 0 {
		t.Fatalf("%d decisions, %d forwarded", n, forwarded.Load())
	}
}

// TestNoOrigin: a query from a socket the kernel did not redirect is refused without a decision.
func TestNoOrigin(t *testing.T) {
	j := &fakeJudge{}
	_, addr := start(t, Options{Origins: fakeOrigins{refuse: true}, Judge: j})
	if r := query(t, addr, "example.com", dns.TypeA); r.Rcode != dns.RcodeRefused {
		t.Fatalf("rcode %d", r.Rcode)
	}
	if len(j.asked()) != 0 {
		t.Fatal("judged a query nobody attested")
	}
}

func TestForwardFailure(t *testing.T) {
	j := &fakeJudge{}
	dead := netip.MustParseAddrPort("127.0.0.1:1")
	_, addr := start(t, Options{Origins: fakeOrigins{}, Judge: j, Forward: []netip.AddrPort{dead}})
	if r := query(t, addr, "example.com", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("rcode %d", r.Rcode)
	}
}

func TestNamesBounded(t *testing.T) {
	names := NewNames(3)
	now := time.Unix(1000, 0)
	names.now = func() time.Time { return now }
	for i := range 3 {
		names.Add(1, netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), "n", time.Minute)
	}
	names.Add(1, netip.MustParseAddr("10.0.0.9"), "new", time.Minute)
	if len(names.entries) > 3 {
		t.Fatalf("%d entries", len(names.entries))
	}
	if n, ok := names.Lookup(1, netip.MustParseAddr("::ffff:10.0.0.9")); !ok || n != "new" {
		t.Fatalf("lookup %q %v", n, ok)
	}
	now = now.Add(2 * time.Minute)
	if _, ok := names.Lookup(1, netip.MustParseAddr("10.0.0.9")); ok {
		t.Fatal("expired entry served")
	}
}

// TestGarbageIsRecorded: bytes that are not a DNS message at all are recorded too, under the
// identity of the socket that sent them, and get no answer.
func TestGarbageIsRecorded(t *testing.T) {
	j := &fakeJudge{}
	_, addr := start(t, Options{Origins: fakeOrigins{}, Judge: j})
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{0x12, 0x34, 0x01})
	deadline := time.Now().Add(2 * time.Second)
	for len(j.asked()) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	got := j.asked()
	if len(got) != 1 || got[0].Refuse != ReasonMalformed || got[0].Mode != judge.ModeDNS {
		t.Fatalf("intents %+v", got)
	}
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := c.Read(make([]byte, 512)); err == nil {
		t.Fatalf("garbage got a %d-byte answer", n)
	}
}

// countingLimits admits up to max connections at once and counts what it saw.
type countingLimits struct {
	mu                   sync.Mutex
	max, active, refused int
}

func (l *countingLimits) Admit(*judge.Flow) (func(), bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.active >= l.max {
		l.refused++
		return nil, false
	}
	l.active++
	return func() { l.mu.Lock(); l.active--; l.mu.Unlock() }, true
}

func (l *countingLimits) state() (active, refused int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.active, l.refused
}

// TestTCPLimits: a DNS-over-TCP connection takes one of its agent's flow slots for as long as it is
// open; over the limit it is cut before any query is read or judged.
func TestTCPLimits(t *testing.T) {
	j := &fakeJudge{}
	lim := &countingLimits{max: 1}
	s, _ := start(t, Options{Origins: fakeOrigins{}, Judge: j, Limits: lim,
		Static: func(string) (netip.Addr, bool) { return netip.MustParseAddr("127.0.0.2"), true }})
	var addr string
	for _, srv := range s.servers {
		if srv.Listener != nil {
			addr = srv.Listener.Addr().String()
		}
	}
	c := &dns.Client{Net: "tcp", Timeout: 2 * time.Second}
	held, err := c.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	m := new(dns.Msg)
	m.SetQuestion("a.example.", dns.TypeA)
	if r, _, err := c.ExchangeWithConn(m, held); err != nil || r.Rcode != dns.RcodeSuccess {
		t.Fatalf("the admitted connection: %v %v", r, err)
	}
	// A second connection while the first holds the agent's one slot: cut, never judged.
	if r, _, err := c.Exchange(m, addr); err == nil {
		t.Fatalf("a connection over the limit was answered: %v", r)
	}
	if active, refused := lim.state(); active != 1 || refused != 1 || len(j.asked()) != 1 {
		t.Fatalf("active %d refused %d decisions %d", active, refused, len(j.asked()))
	}
	held.Close()
	deadline := time.Now().Add(5 * time.Second)
	for active, _ := lim.state(); active != 0; active, _ = lim.state() {
		if time.Now().After(deadline) {
			t.Fatal("the slot was not given back when the connection closed")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
