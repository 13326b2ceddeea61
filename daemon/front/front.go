// Package front is where every TCP connection the sidecar accepts starts: a connection the kernel
// redirected from an enforced cgroup (the transparent listeners), or one to the explicit proxy. It
// finds the kernel's record of who connected where (no record: closed — nobody dials the sidecar
// directly), sniffs the first bytes (TLS ClientHello, an HTTP request line or the h2c preface, or
// other TCP) and routes the flow: TLS to an intercepted host and every plain-HTTP flow to the L7
// engine, other TLS and TCP to a CONNECT-level decision and, when allowed, a splice to the upstream
// the connector dials by name.
//
// An allowed tunnel is relayed both ways with splice(2) through pooled pipes that a tunnel holds
// only while bytes move (an idle tunnel holds its two sockets, nothing else); it ends when both
// sides are done, or when one is done and the other has been idle for the idle timeout. A TLS
// tunnel is offloaded when the kernel can take it: what the sidecar relays to the agent then goes
// straight into the agent's socket (bpf/offload.c), bounded by what the agent reads. The
// completion record says which (result.path).
//
// The routing is what keeps MITM from being sidestepped: a TLS flow is named by its SNI, else by
// the name the agent asked for (a CONNECT target, a name its DNS lookup returned for the address),
// else by the address; a flow whose name is an intercepted host is terminated or refused, never
// tunnelled; and a client that stays silent at first is watched until it speaks, so that a late
// ClientHello or request line is still judged as what it is.
//
// front decides nothing itself: every decision is the judge's.
package front

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/daemon/judge"
	"github.com/openfirma/firma/daemon/l7"
	"github.com/openfirma/firma/internal/logfields"
	"github.com/openfirma/firma/policies"
)

// Reasons for refusals made while routing.
const (
	ReasonSilentIntercept = "no ClientHello or request for an intercepted host"
)

// defaultFirstSpeakerWait is Options.FirstSpeakerWait's default.
const defaultFirstSpeakerWait = 2 * time.Minute

// Origins finds the kernel's record of a redirected TCP flow; *bpf.Programs implements it.
type Origins interface {
	Lookup(peer netip.AddrPort) (bpf.Origin, error)
}

// L7 is what front needs of the HTTP engine; *l7.Engine implements it.
type L7 interface {
	Route(f *judge.Flow, host string) l7.Mode
	Intercepted(host string) bool
	ServeTLS(ctx context.Context, conn net.Conn, f *judge.Flow, tc l7.TLSConn) error
	ServePlain(ctx context.Context, conn net.Conn, f *judge.Flow, pc l7.PlainConn)
}

// Limits admits a flow against its agent's flow limits; *judge.Limiter implements it. A refusal is
// the limiter's to record.
type Limits interface {
	Admit(f *judge.Flow) (release func(), ok bool)
}

// DialFunc dials the upstream for an allowed tunnel: the connector's Dial, which resolves the name,
// refuses what an agent must not reach and returns the address it dialed.
type DialFunc func(ctx context.Context, host string, port int) (net.Conn, netip.AddrPort, error)

// Options configure a Server.
type Options struct {
	Origins Origins
	// Flow builds the judged flow of a redirected connection (identity, executable).
	Flow func(bpf.Origin) *judge.Flow
	// Names returns the name a cgroup's DNS lookups last resolved to an address, if any.
	Names func(cgroupID uint64, a netip.Addr) (string, bool)
	Judge judge.Decider
	// Limits caps each agent's flows; nil = no caps.
	Limits Limits
	Dial   DialFunc
	L7     L7
	// ProxyAddr is the explicit proxy's listen address: a redirected flow to it speaks the proxy
	// protocol, with the kernel's identity.
	ProxyAddr netip.AddrPort
	// ProxyAgent is the agent id given to explicit-proxy clients outside every enforced cgroup
	// ([sidecar.interceptor] agent_id); "" denies them as unknown agents.
	ProxyAgent string
	// ServerFirstPorts are the destination ports of server-speaks-first protocols (SMTP, IMAP,
	// MySQL…): a client silent there for FirstByteWait gets its upstream dialed so that the server
	// can greet it. Elsewhere nothing is dialed until the client speaks; SniffTimeout bounds reading
	// its first message once it has begun.
	ServerFirstPorts map[int]bool
	FirstByteWait    time.Duration
	SniffTimeout     time.Duration
	// FirstSpeakerWait is how long a client may stay silent on a port where clients speak first,
	// and how long an allowed tunnel on a server-speaks-first port waits for either side to say
	// something; 0 = 2 minutes.
	FirstSpeakerWait time.Duration
	// IdleTimeout ends a tunnel once one side is gone (closed or half-closed) and the other has sent
	// nothing for this long ([sidecar.transparent] idle_timeout); 0 never ends it.
	IdleTimeout time.Duration
	// Offload, when set, hands allowed TLS tunnels to the kernel (bpf.Offload.Tunnel).
	Offload OffloadFunc
	Log     zerolog.Logger
}

// Server routes accepted connections. It is safe for concurrent use.
type Server struct{ o Options }

// New builds a Server.
func New(o Options) *Server {
	if o.FirstSpeakerWait == 0 {
		o.FirstSpeakerWait = defaultFirstSpeakerWait
	}
	return &Server{o: o}
}

// flow is one accepted connection before anything in it is judged.
type flow struct {
	*judge.Flow
	// name is what the agent asked for, when known without reading the flow: a CONNECT target, or
	// the name a DNS lookup of this cgroup returned for the original address.
	name string
	port int
	// explicit: name came from the agent's own CONNECT request, not from DNS.
	explicit bool
}

// destination is the best name for a flow's destination without reading it: the name the agent
// asked for, or the original address.
func (f *flow) destination() string {
	if f.name != "" {
		return f.name
	}
	if f.OrigDst.IsValid() {
		return f.OrigDst.Addr().String()
	}
	return ""
}

// ServeTransparent serves one connection the kernel redirected from an enforced cgroup.
func (s *Server) ServeTransparent(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	peer := addrPortOf(conn.RemoteAddr())
	origin, err := s.o.Origins.Lookup(peer)
	if err != nil {
		// Nobody may dial the sidecar directly: no record means no agent to judge.
		s.o.Log.Warn().Err(err).Str(logfields.Peer, peer.String()).Msg("connection without origin record refused")
		return
	}
	f := &flow{Flow: s.o.Flow(origin), port: int(origin.Dst.Port())}
	release, ok := s.admit(conn, f.Flow)
	if !ok {
		return
	}
	defer release()
	if s.o.Names != nil {
		if name, ok := s.o.Names(origin.CgroupID, origin.Dst.Addr()); ok {
			f.name = name
		}
	}
	if s.o.ProxyAddr.IsValid() && origin.Dst == s.o.ProxyAddr {
		// The agent dialed the explicit proxy: serve that protocol, with the kernel's identity.
		s.o.L7.ServePlain(ctx, conn, f.Flow, l7.PlainConn{Proxy: true, Port: 80})
		return
	}
	s.serve(ctx, conn, f, nil)
}

// ServeProxy serves the explicit proxy to a client outside every enforced cgroup: it has no
// kernel-attested identity, so it gets [sidecar.interceptor] agent_id, or none (denied).
func (s *Server) ServeProxy(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	f := &judge.Flow{AgentID: s.o.ProxyAgent, Start: time.Now()}
	if s.o.ProxyAgent == "" {
		f.Unknown = judge.ErrNoIdentity
	}
	release, ok := s.admit(conn, f)
	if !ok {
		return
	}
	defer release()
	s.o.L7.ServePlain(ctx, conn, f, l7.PlainConn{Proxy: true, Port: 80})
}

// admit takes a flow slot for f's agent. Over its limits, the connection is reset (the limiter
// records the refusal): the agent's client sees ECONNRESET at once rather than a silent close.
func (s *Server) admit(conn net.Conn, f *judge.Flow) (release func(), ok bool) {
	if s.o.Limits == nil {
		return func() {}, true
	}
	release, ok = s.o.Limits.Admit(f)
	if !ok {
		if tc, isTCP := conn.(*net.TCPConn); isTCP {
			tc.SetLinger(0)
		}
	}
	return release, ok
}

// Tunnel serves a tunnel opened by CONNECT host:port on a plain-HTTP or explicit-proxy connection
// (l7.TunnelFunc): what flows in it is judged like any transparent flow, named by the CONNECT target.
func (s *Server) Tunnel(ctx context.Context, conn net.Conn, prefix []byte, jf *judge.Flow, host string, port int) {
	s.serve(ctx, conn, &flow{Flow: jf, name: host, port: port, explicit: true}, prefix)
}

// serve sniffs a flow's first bytes (after prefix, bytes already read) and routes it by what they say.
func (s *Server) serve(ctx context.Context, conn net.Conn, f *flow, prefix []byte) {
	c := withPrefix(conn, prefix)
	// Only a server-speaks-first port gets its upstream dialed for a silent client; anywhere else
	// the sidecar waits for the client to say what it wants, and judges that.
	firstByte := s.o.FirstSpeakerWait
	if s.o.ServerFirstPorts[f.port] {
		firstByte = s.o.FirstByteWait
	}
	sn, err := Sniff(c, firstByte, s.o.SniffTimeout)
	if err != nil {
		if errors.Is(err, ErrBadHello) {
			s.o.Judge.Decide(ctx, f.Flow, judge.Intent{Method: policies.MethodConnect, Host: f.destination(), Port: f.port,
				Transport: "tls", Mode: judge.ModeConnect, Refuse: judge.ReasonBadHello})
			writeTLSAlert(conn)
			return
		}
		s.o.Log.Debug().Err(err).Msg("sniff failed")
		return
	}
	s.route(ctx, conn, f, sn)
}

// route hands a sniffed flow to the path its first bytes call for.
func (s *Server) route(ctx context.Context, conn net.Conn, f *flow, sn Sniffed) {
	switch {
	case sn.Proto == ProtoTLS:
		s.serveTLS(ctx, conn, f, sn)
	case sn.Proto == ProtoHTTP:
		s.o.L7.ServePlain(ctx, withPrefix(conn, sn.Prefix), f.Flow, l7.PlainConn{Port: f.port, Name: f.destination()})
	case len(sn.Prefix) == 0 && !s.o.ServerFirstPorts[f.port]:
		// Silent for the whole wait on a port where clients speak first: nothing to judge, and
		// nothing is dialed.
		s.o.Log.Debug().Str(logfields.Host, f.destination()).Int(logfields.Port, f.port).Msg("client never spoke: closed")
	case len(sn.Prefix) == 0 && s.o.L7.Intercepted(f.destination()):
		// An intercepted host does not speak first, whatever port it is on: wait for the client
		// (a little longer), and judge what it says.
		s.awaitIntercepted(ctx, conn, f)
	default:
		in := judge.Intent{Method: policies.MethodConnect, Host: f.destination(), Port: f.port, Transport: "tcp", Mode: judge.ModeTCP}
		s.tunnel(ctx, conn, f, in, sn.Prefix, len(sn.Prefix) == 0)
	}
}

// serveTLS judges a TLS flow by its server name — or, without one, by the name the agent asked for
// — and terminates it when that host is intercepted, or tunnels it.
func (s *Server) serveTLS(ctx context.Context, conn net.Conn, f *flow, sn Sniffed) {
	sni := sn.Hello.ServerName
	host := sni
	if host == "" {
		host = f.destination()
	}
	in := judge.Intent{Method: policies.MethodConnect, Host: host, Port: f.port, Transport: "tls", Mode: judge.ModeConnect, SNI: sni}
	switch s.o.L7.Route(f.Flow, host) {
	case l7.ModeIntercept:
		s.intercept(ctx, conn, f, in, sn)
		return
	case l7.ModeFallback:
		// This agent rejected firma's certificate for this host recently: CONNECT-only, and said so.
		in.Note = judge.ReasonFallback
	}
	s.tunnel(ctx, conn, f, in, sn.Prefix, false)
}

// intercept judges the connection to an intercepted host as a whole first — so that a connection
// that never sends a request still leaves a record, and a destination the policy refuses is refused
// before any TLS is terminated — then hands it to the L7 engine, which judges every request again,
// and completes the connection's decision with the bytes it carried.
func (s *Server) intercept(ctx context.Context, conn net.Conn, f *flow, in judge.Intent, sn Sniffed) {
	in.Mode = judge.ModeMITM
	v := s.o.Judge.Decide(ctx, f.Flow, in)
	if !v.Allowed() {
		writeTLSAlert(conn)
		return
	}
	start := time.Now()
	cc := &countingConn{Conn: conn}
	err := s.o.L7.ServeTLS(ctx, withPrefix(cc, sn.Prefix), f.Flow, l7.TLSConn{SNI: in.SNI, Host: in.Host, ALPN: sn.Hello.ALPN, Port: f.port})
	res := judge.Result{BytesUp: int64(len(sn.Prefix)) + cc.read.Load(), BytesDown: cc.written.Load(), Duration: time.Since(start)}
	if errors.Is(err, l7.ErrHandshake) {
		res.ErrClass, res.Err = judge.ErrorHandshake, err // recorded as refused by the L7 engine too
	} else if err != nil && ctx.Err() == nil {
		s.o.Log.Debug().Err(err).Str(logfields.Host, in.Host).Msg("intercepted connection ended")
	}
	s.o.Judge.Complete(v, res)
}

// countingConn counts what a connection carried each way.
type countingConn struct {
	net.Conn
	read, written atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

// awaitIntercepted waits (up to the sniff timeout) for a client that has not spoken yet to a host
// that is intercepted, then routes what it sends; a client that never speaks is refused.
func (s *Server) awaitIntercepted(ctx context.Context, conn net.Conn, f *flow) {
	sn, err := Sniff(conn, s.o.SniffTimeout, s.o.SniffTimeout)
	if err == nil && len(sn.Prefix) > 0 {
		s.route(ctx, conn, f, sn)
		return
	}
	if errors.Is(err, ErrBadHello) {
		s.o.Judge.Decide(ctx, f.Flow, judge.Intent{Method: policies.MethodConnect, Host: f.destination(), Port: f.port,
			Transport: "tls", Mode: judge.ModeConnect, Refuse: judge.ReasonBadHello})
		writeTLSAlert(conn)
		return
	}
	s.o.Judge.Decide(ctx, f.Flow, judge.Intent{Method: policies.MethodConnect, Host: f.destination(), Port: f.port,
		Transport: "tcp", Mode: judge.ModeTCP, Refuse: ReasonSilentIntercept})
}

// tunnel judges a connection-level intent and, when allowed, dials the name and splices. silent
// marks a flow whose client has not spoken: if the client speaks before the upstream does and what
// it says is TLS or HTTP, the raw tunnel is abandoned (completed with no bytes) and the flow is
// routed again by what it said — a late ClientHello is still TLS.
func (s *Server) tunnel(ctx context.Context, conn net.Conn, f *flow, in judge.Intent, prefix []byte, silent bool) {
	v := s.o.Judge.Decide(ctx, f.Flow, in)
	if !v.Allowed() {
		if in.Mode == judge.ModeConnect {
			writeTLSAlert(conn)
		}
		return
	}
	start := time.Now()
	up, dialed, err := s.o.Dial(ctx, in.Host, in.Port)
	if err != nil {
		s.o.Log.Warn().Err(err).Str(logfields.Host, in.Host).Msg(judge.ErrorNetwork)
		s.o.Judge.Complete(v, judge.Result{ErrClass: judge.ErrorNetwork, Err: err, Duration: time.Since(start)})
		if in.Mode == judge.ModeConnect {
			writeTLSAlert(conn)
		}
		return
	}
	defer up.Close()
	var greeting int64
	if silent {
		late, first, n, err := firstSpeaker(conn, up, s.o.FirstSpeakerWait)
		greeting = n
		if err != nil {
			s.o.Judge.Complete(v, judge.Result{BytesDown: greeting, Dialed: dialed, Duration: time.Since(start)})
			return
		}
		if late != nil {
			up.Close()
			s.o.Judge.Complete(v, judge.Result{Dialed: dialed, Duration: time.Since(start)})
			s.serve(ctx, conn, f, late)
			return
		}
		prefix = first
	}
	var upBytes int64
	if len(prefix) > 0 {
		n, err := up.Write(prefix)
		upBytes += int64(n)
		if err != nil {
			s.o.Judge.Complete(v, judge.Result{BytesUp: upBytes, Dialed: dialed, ErrClass: judge.ErrorNetwork, Err: err,
				Duration: time.Since(start)})
			return
		}
	}
	res := relay(conn, up, s.offload(conn, in), s.o.IdleTimeout)
	if res.idle {
		s.o.Log.Debug().Str(logfields.Host, in.Host).Dur("idle_timeout", s.o.IdleTimeout).
			Msg("tunnel ended: one side gone, the other idle")
	}
	s.o.Judge.Complete(v, judge.Result{BytesUp: upBytes + res.up, BytesDown: greeting + res.down, Duration: time.Since(start),
		Dialed: dialed, Path: res.path})
}

// offload hands a TLS tunnel's accepted connection to the kernel, when it can take it. Only TLS
// tunnels: their agents read with recv(2) through a TLS library, never with splice(2), which does
// not see what the kernel puts straight into the agent's socket.
func (s *Server) offload(conn net.Conn, in judge.Intent) Queue {
	if s.o.Offload == nil || in.Mode != judge.ModeConnect {
		return nil
	}
	tc, ok := unwrap(conn).(*net.TCPConn)
	if !ok {
		return nil
	}
	q, err := s.o.Offload(tc)
	if err != nil {
		s.o.Log.Debug().Err(err).Str(logfields.Host, in.Host).Msg("tunnel stays on TCP")
		return nil
	}
	return q
}

// firstSpeaker waits (at most wait) for whichever side of a fresh tunnel speaks first. When it is
// the upstream (a server-speaks-first protocol: SMTP, SSH banners, databases), its first bytes are
// forwarded to the agent and the tunnel proceeds. When it is the agent and its bytes start a TLS
// record or an HTTP request line, late holds them: the caller abandons the tunnel and routes the
// flow again by what the agent said. Other bytes come back as first, to be sent upstream. down counts
// what was forwarded to the agent.
func firstSpeaker(agent, up net.Conn, wait time.Duration) (late, first []byte, down int64, err error) {
	type read struct {
		b   []byte
		err error
	}
	reader := func(c net.Conn) chan read {
		ch := make(chan read, 1)
		go func() {
			b := make([]byte, 4096)
			n, err := c.Read(b)
			ch <- read{b[:n], err}
		}()
		return ch
	}
	deadline := time.Now().Add(wait)
	agent.SetReadDeadline(deadline)
	up.SetReadDeadline(deadline)
	defer agent.SetReadDeadline(time.Time{})
	defer up.SetReadDeadline(time.Time{})
	fromAgent, fromUp := reader(agent), reader(up)
	select {
	case r := <-fromUp:
		// The upstream spoke (or closed) first. Stop the agent's pending read; what it returned
		// meanwhile goes upstream after the greeting.
		agent.SetReadDeadline(time.Now())
		ar := <-fromAgent
		if len(r.b) == 0 {
			return nil, nil, 0, r.err
		}
		n, err := agent.Write(r.b)
		if err != nil {
			return nil, nil, int64(n), err
		}
		return nil, ar.b, int64(n), nil
	case r := <-fromAgent:
		up.SetReadDeadline(time.Now())
		ur := <-fromUp
		if len(r.b) == 0 {
			return nil, nil, 0, r.err
		}
		if r.b[0] == 0x16 || httpRequestLine(r.b) != lineNot {
			// TLS or HTTP after a silence (the upstream's bytes, if it spoke meanwhile, go with
			// the abandoned tunnel).
			return r.b, nil, 0, nil
		}
		n, err := agent.Write(ur.b)
		if err != nil {
			return nil, nil, int64(n), err
		}
		return nil, r.b, int64(n), nil
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		return
	}
	c.Close()
}

// writeTLSAlert sends a fatal access_denied alert, so that a TLS client reports a refusal rather
// than a reset.
func writeTLSAlert(conn net.Conn) {
	conn.SetWriteDeadline(time.Now().Add(time.Second))
	conn.Write([]byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 49})
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
