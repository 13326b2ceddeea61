package daemon

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/internal/logfields"
	"github.com/openfirma/firma/policies"
)

// dnsServer is the resolver that agents' DNS traffic (UDP and TCP port 53) is redirected to. Each
// query is judged by name under the agent's identity; allowed queries are answered from
// [sidecar.upstream] resolve overrides or forwarded to the sidecar's own nameservers, and the
// answers teach the sidecar which name an address stands for.
type dnsServer struct {
	s       *Sidecar
	servers []*dns.Server
	client  *dns.Client
	forward []string // nameserver host:port
}

func newDNSServer(s *Sidecar, nameservers []string) (*dnsServer, error) {
	d := &dnsServer{s: s, client: &dns.Client{Timeout: 5 * time.Second}}
	for _, ns := range nameservers {
		if ap, err := netip.ParseAddrPort(ns); err == nil {
			d.forward = append(d.forward, ap.String())
		} else {
			d.forward = append(d.forward, net.JoinHostPort(ns, "53"))
		}
	}
	if len(d.forward) == 0 {
		conf, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err == nil {
			for _, ns := range conf.Servers {
				d.forward = append(d.forward, net.JoinHostPort(ns, conf.Port))
			}
		}
	}
	return d, nil
}

// listen starts UDP and TCP servers on each address; it returns once they are bound.
func (d *dnsServer) listen(addrs []netip.AddrPort) error {
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
		for _, srv := range []*dns.Server{{PacketConn: pc, Handler: d}, {Listener: ln, Handler: d}} {
			d.servers = append(d.servers, srv)
			go srv.ActivateAndServe()
		}
	}
	return nil
}

func (d *dnsServer) shutdown() {
	for _, srv := range d.servers {
		srv.Shutdown()
	}
}

func (d *dnsServer) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) != 1 || req.Opcode != dns.OpcodeQuery {
		d.reply(w, req, dns.RcodeFormatError)
		return
	}
	peer := addrPortOf(w.RemoteAddr())
	proto := bpf.UDP
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		proto = bpf.TCP
	}
	origin, err := d.s.origins.LookupDNS(peer, proto)
	if err != nil {
		d.s.log.Warn().Err(err).Str(logfields.Peer, peer.String()).Msg("dns query without origin record refused")
		d.reply(w, req, dns.RcodeRefused)
		return
	}
	f := d.s.newFlow(origin)
	q := req.Question[0]
	name := strings.TrimSuffix(strings.ToLower(q.Name), ".")
	ctx := context.Background()
	v := d.s.decide(ctx, f, intent{method: policies.MethodDNS, host: name, port: int(origin.Dst.Port()),
		transport: "dns", mode: modeDNS, qtype: dns.TypeToString[q.Qtype]})
	if !v.allowed() {
		d.reply(w, req, dns.RcodeRefused)
		return
	}
	resp, err := d.answer(ctx, req, name, q.Qtype)
	if err != nil {
		d.s.log.Warn().Err(err).Str(logfields.Host, name).Msg("dns forward failed")
		d.reply(w, req, dns.RcodeServerFailure)
		return
	}
	stripECH(resp)
	d.learn(origin.CgroupID, name, resp)
	resp.Id = req.Id
	w.WriteMsg(resp)
}

// answer resolves an allowed query: a static override answers A/AAAA itself, anything else is
// forwarded to the sidecar's nameservers.
func (d *dnsServer) answer(ctx context.Context, req *dns.Msg, name string, qtype uint16) (*dns.Msg, error) {
	if addr, ok := d.s.connector.Static(name); ok {
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
	if len(d.forward) == 0 {
		return nil, fmt.Errorf("no nameservers configured")
	}
	var lastErr error
	for _, ns := range d.forward {
		resp, _, err := d.client.ExchangeContext(ctx, req, ns)
		if err == nil {
			return resp, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

// learn remembers, per cgroup, which name each answered address stands for, so that a later raw
// TCP flow to that address is judged and audited by name.
func (d *dnsServer) learn(cgroupID uint64, name string, resp *dns.Msg) {
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
		d.s.names.add(cgroupID, a.Unmap(), name, ttl)
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

func (d *dnsServer) reply(w dns.ResponseWriter, req *dns.Msg, rcode int) {
	resp := new(dns.Msg)
	resp.SetRcode(req, rcode)
	w.WriteMsg(resp)
}

// nameTable is the DNS-learned address → name map, per cgroup, with expiry.
type nameTable struct {
	mu      sync.Mutex
	entries map[nameKey]nameEntry
}

type nameKey struct {
	cgroup uint64
	addr   netip.Addr
}

type nameEntry struct {
	name    string
	expires time.Time
}

const maxNames = 100_000

func newNameTable() *nameTable { return &nameTable{entries: map[nameKey]nameEntry{}} }

func (t *nameTable) add(cgroup uint64, a netip.Addr, name string, ttl time.Duration) {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.entries) >= maxNames {
		for k, e := range t.entries {
			if now.After(e.expires) {
				delete(t.entries, k)
			}
		}
		if len(t.entries) >= maxNames {
			clear(t.entries)
		}
	}
	t.entries[nameKey{cgroup, a}] = nameEntry{name: name, expires: now.Add(ttl)}
}

func (t *nameTable) lookup(cgroup uint64, a netip.Addr) (string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.entries[nameKey{cgroup, a.Unmap()}]
	if !ok || time.Now().After(e.expires) {
		return "", false
	}
	return e.name, true
}
