// Package dns is the resolver that agents' DNS traffic (UDP and TCP port 53) is redirected to. Each
// query is judged by name under the identity the kernel attested for its socket; allowed queries are
// answered from [sidecar.upstream] resolve overrides or forwarded to the sidecar's own nameservers,
// and the answers teach the sidecar which name an address stands for (Names), so that a later raw
// TCP flow to that address is judged by name. Encrypted Client Hello configurations are stripped from
// answers, so that clients keep sending a server name the sidecar can judge.
//
// It takes what it needs — an origin lookup, a way to build a flow, the judge — and nothing else of
// the sidecar.
package dns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/daemon/judge"
	"github.com/openfirma/firma/internal/hostname"
	"github.com/openfirma/firma/internal/logfields"
	"github.com/openfirma/firma/policies"
)

// ReasonMalformed is the refusal of a query that is not one standard question.
const ReasonMalformed = "malformed DNS query"

// Origins finds the kernel's record of a redirected DNS socket; *bpf.Programs implements it.
type Origins interface {
	LookupDNS(peer netip.AddrPort, proto bpf.Proto) (bpf.Origin, error)
}

// Options configure a Server.
type Options struct {
	Origins Origins
	// Flow builds the judged flow of a redirected socket (identity, executable).
	Flow  func(bpf.Origin) *judge.Flow
	Judge judge.Decider
	// Static answers A/AAAA for [sidecar.upstream] resolve overrides.
	Static func(name string) (netip.Addr, bool)
	// Forward lists the nameservers allowed queries go to; empty = /etc/resolv.conf's.
	Forward []netip.AddrPort
	Names   *Names
	// Limits caps each agent's DNS-over-TCP connections, with its other flows: each holds a
	// descriptor. nil = no caps.
	Limits Limits
	Log    zerolog.Logger
}

// Limits admits a flow against its agent's flow limits; *judge.Limiter implements it. A refusal is
// the limiter's to record.
type Limits interface {
	Admit(f *judge.Flow) (release func(), ok bool)
}

// Server serves DNS on the sidecar's resolver addresses.
type Server struct {
	o       Options
	servers []*dns.Server
	client  *dns.Client
	forward []string // nameserver host:port
}

// New builds a Server; it binds nothing.
func New(o Options) *Server {
	s := &Server{o: o, client: &dns.Client{Timeout: 5 * time.Second}}
	for _, ns := range o.Forward {
		s.forward = append(s.forward, ns.String())
	}
	if len(s.forward) == 0 {
		if conf, err := dns.ClientConfigFromFile("/etc/resolv.conf"); err == nil {
			for _, ns := range conf.Servers {
				s.forward = append(s.forward, net.JoinHostPort(ns, conf.Port))
			}
		}
	}
	return s
}

// Listen starts UDP and TCP servers on each address; it returns once they are bound.
func (s *Server) Listen(addrs []netip.AddrPort) error {
	for _, a := range addrs {
		pc, err := net.ListenPacket("udp", a.String())
		if err != nil {
			return fmt.Errorf("dns listener %s/udp: %w", a, err)
		}
		ln, err := net.Listen("tcp", a.String())
		if err != nil {
			pc.Close()
			return fmt.Errorf("dns listener %s/tcp: %w", a, err)
		}
		for _, srv := range []*dns.Server{{PacketConn: pc}, {Listener: limitedListener{Listener: ln, s: s}}} {
			srv.Handler = s
			// Let every query reach ServeDNS, malformed ones too, so that each leaves a record;
			// messages that do not even parse are recorded by the reader.
			srv.MsgAcceptFunc = acceptQueries
			srv.DecorateReader = func(r dns.Reader) dns.Reader { return parsingReader{Reader: r, s: s} }
			s.servers = append(s.servers, srv)
			go srv.ActivateAndServe()
		}
	}
	return nil
}

// limitedListener admits each DNS-over-TCP connection against its agent's flow limits: over them,
// the connection is reset at once (the limiter records it) and never reaches the DNS server.
type limitedListener struct {
	net.Listener
	s *Server
}

func (l limitedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil || l.s.o.Limits == nil {
			return c, err
		}
		origin, err := l.s.o.Origins.LookupDNS(addrPortOf(c.RemoteAddr()), bpf.TCP)
		if err != nil {
			return c, nil // every query on it is refused: no origin record
		}
		release, ok := l.s.o.Limits.Admit(l.s.o.Flow(origin))
		if ok {
			return &releasingConn{Conn: c, release: release}, nil
		}
		if tc, isTCP := c.(*net.TCPConn); isTCP {
			tc.SetLinger(0)
		}
		c.Close()
	}
}

// releasingConn gives its flow slot back when it is closed.
type releasingConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *releasingConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// Shutdown stops every server.
func (s *Server) Shutdown() {
	for _, srv := range s.servers {
		srv.Shutdown()
	}
}

// acceptQueries hands every query (QR = 0) to the handler, whatever its question count or opcode;
// the handler refuses and records what it cannot serve. Responses are dropped: replying to them
// could be used for reflection.
func acceptQueries(dh dns.Header) dns.MsgAcceptAction {
	if dh.Bits&(1<<15) != 0 {
		return dns.MsgIgnore
	}
	return dns.MsgAccept
}

// parsingReader drops messages that do not parse as DNS, after recording them under the identity
// of the socket that sent them: miekg/dns would drop them silently.
type parsingReader struct {
	dns.Reader
	s *Server
}

func (r parsingReader) ReadUDP(conn *net.UDPConn, timeout time.Duration) ([]byte, *dns.SessionUDP, error) {
	for {
		m, sess, err := r.Reader.ReadUDP(conn, timeout)
		if err != nil || r.s.parses(m, sess.RemoteAddr(), bpf.UDP) {
			return m, sess, err
		}
	}
}

func (r parsingReader) ReadTCP(conn net.Conn, timeout time.Duration) ([]byte, error) {
	m, err := r.Reader.ReadTCP(conn, timeout)
	if err != nil || r.s.parses(m, conn.RemoteAddr(), bpf.TCP) {
		return m, err
	}
	return nil, fmt.Errorf("%s", ReasonMalformed) // ends the TCP connection
}

// parses reports whether m is a DNS message; if not, the attempt is recorded as refused.
func (s *Server) parses(m []byte, from net.Addr, proto bpf.Proto) bool {
	var msg dns.Msg
	if msg.Unpack(m) == nil {
		return true
	}
	peer := addrPortOf(from)
	origin, err := s.o.Origins.LookupDNS(peer, proto)
	if err != nil {
		s.o.Log.Warn().Err(err).Str(logfields.Peer, peer.String()).Msg("unparsable dns message without origin record dropped")
		return false
	}
	s.o.Judge.Decide(context.Background(), s.o.Flow(origin), judge.Intent{Method: policies.MethodDNS, Host: "(malformed)",
		Port: int(origin.Dst.Port()), Transport: "dns", Mode: judge.ModeDNS, Refuse: ReasonMalformed})
	return false
}

// ServeDNS judges one query and answers it.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	peer := addrPortOf(w.RemoteAddr())
	proto := bpf.UDP
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		proto = bpf.TCP
	}
	origin, err := s.o.Origins.LookupDNS(peer, proto)
	if err != nil {
		s.o.Log.Warn().Err(err).Str(logfields.Peer, peer.String()).Msg("dns query without origin record refused")
		reply(w, req, dns.RcodeRefused)
		return
	}
	f := s.o.Flow(origin)
	ctx := context.Background()
	in := judge.Intent{Method: policies.MethodDNS, Port: int(origin.Dst.Port()), Transport: "dns", Mode: judge.ModeDNS}
	if len(req.Question) != 1 || req.Opcode != dns.OpcodeQuery {
		// Still a decision: every attempt leaves a record, malformed or not.
		in.Refuse = ReasonMalformed
		in.Host = "(malformed)"
		if len(req.Question) > 0 {
			in.Host = hostname.Normalize(req.Question[0].Name)
		}
		s.o.Judge.Decide(ctx, f, in)
		reply(w, req, dns.RcodeFormatError)
		return
	}
	q := req.Question[0]
	in.Host = hostname.Normalize(q.Name)
	in.QType = dns.TypeToString[q.Qtype]
	if name, port, err := hostname.Parse(q.Name); err != nil || port != 0 || name != in.Host {
		// A name that is not a hostname — a label holding a '.' or a '\', say — would be judged as
		// one name ("a\.b.example" matches *.b.example) and resolved as another (label "a.b" in
		// example): refused, like any malformed query.
		in.Refuse = ReasonMalformed
		s.o.Judge.Decide(ctx, f, in)
		reply(w, req, dns.RcodeFormatError)
		return
	}
	if v := s.o.Judge.Decide(ctx, f, in); !v.Allowed() {
		reply(w, req, dns.RcodeRefused)
		return
	}
	resp, err := s.answer(ctx, req, in.Host, q.Qtype)
	if err != nil {
		s.o.Log.Warn().Err(err).Str(logfields.Host, in.Host).Msg("dns forward failed")
		reply(w, req, dns.RcodeServerFailure)
		return
	}
	stripECH(resp)
	s.learn(origin.CgroupID, in.Host, resp)
	resp.Id = req.Id
	w.WriteMsg(resp)
}

// answer resolves an allowed query: a static override answers A/AAAA itself, anything else is
// forwarded to the sidecar's nameservers.
func (s *Server) answer(ctx context.Context, req *dns.Msg, name string, qtype uint16) (*dns.Msg, error) {
	if s.o.Static != nil {
		if addr, ok := s.o.Static(name); ok {
			resp := new(dns.Msg)
			resp.SetReply(req)
			resp.Authoritative = true
			hdr := dns.RR_Header{Name: req.Question[0].Name, Class: dns.ClassINET, Ttl: 60}
			switch {
			case qtype == dns.TypeA && addr.Is4():
				hdr.Rrtype = dns.TypeA
				resp.Answer = append(resp.Answer, &dns.A{Hdr: hdr, A: addr.AsSlice()})
			case qtype == dns.TypeAAAA && addr.Is6():
				hdr.Rrtype = dns.TypeAAAA
				resp.Answer = append(resp.Answer, &dns.AAAA{Hdr: hdr, AAAA: addr.AsSlice()})
			}
			return resp, nil
		}
	}
	if len(s.forward) == 0 {
		return nil, fmt.Errorf("no nameservers configured")
	}
	var lastErr error
	for _, ns := range s.forward {
		resp, _, err := s.client.ExchangeContext(ctx, req, ns)
		if err == nil {
			return resp, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

// learn remembers, per cgroup, which name each answered address stands for.
func (s *Server) learn(cgroupID uint64, name string, resp *dns.Msg) {
	if s.o.Names == nil {
		return
	}
	for _, rr := range resp.Answer {
		var a netip.Addr
		switch rr := rr.(type) {
		case *dns.A:
			a, _ = netip.AddrFromSlice(rr.A)
		case *dns.AAAA:
			a, _ = netip.AddrFromSlice(rr.AAAA)
		default:
			continue
		}
		ttl := time.Duration(max(rr.Header().Ttl, 60)) * time.Second
		s.o.Names.Add(cgroupID, a.Unmap(), name, ttl)
	}
}

// stripECH removes Encrypted Client Hello configurations from HTTPS/SVCB answers: with ECH a client
// would hide the real server name behind a provider's public name, and SNI could no longer be
// judged. Clients then send a plain (or GREASE) hello with the real name.
func stripECH(m *dns.Msg) {
	for _, section := range [][]dns.RR{m.Answer, m.Extra} {
		for _, rr := range section {
			var svcb *dns.SVCB
			switch rr := rr.(type) {
			case *dns.HTTPS:
				svcb = &rr.SVCB
			case *dns.SVCB:
				svcb = rr
			default:
				continue
			}
			kept := svcb.Value[:0]
			for _, kv := range svcb.Value {
				if kv.Key() != dns.SVCB_ECHCONFIG {
					kept = append(kept, kv)
				}
			}
			svcb.Value = kept
		}
	}
}

func reply(w dns.ResponseWriter, req *dns.Msg, rcode int) {
	resp := new(dns.Msg)
	resp.SetRcode(req, rcode)
	w.WriteMsg(resp)
}

// addrPortOf is a peer's address as the kernel's records key it (IPv4 unmapped).
func addrPortOf(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	default:
		ap, _ = netip.ParseAddrPort(a.String())
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
