package daemon

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/internal/logfields"
	"github.com/openfirma/firma/policies"
)

// firstByteWait is how long the sidecar waits for a client to speak before treating the flow as a
// server-speaks-first protocol. TLS and HTTP clients send their first bytes immediately.
const firstByteWait = 300 * time.Millisecond

// handleTransparent serves one connection that the kernel redirected from an agent cgroup.
func (s *Sidecar) handleTransparent(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	peer := addrPortOf(conn.RemoteAddr())
	origin, err := s.origins.Lookup(peer)
	if err != nil {
		// Nobody may dial the sidecar directly: no record means no agent to judge.
		s.log.Warn().Err(err).Str(logfields.Peer, peer.String()).Msg("connection without origin record refused")
		return
	}
	f := s.newFlow(origin)
	if s.proxyAddr.IsValid() && origin.Dst == s.proxyAddr {
		// The agent dialed the explicit proxy: serve that protocol, with the kernel's identity.
		s.serveHTTP(ctx, conn, f, true)
		return
	}
	s.serveFlow(ctx, conn, f)
}

// newFlow resolves the identity the kernel attested for a redirected flow.
func (s *Sidecar) newFlow(o bpf.Origin) *flow {
	f := &flow{origin: o, hasOrigin: true, port: int(o.Dst.Port()), start: time.Now()}
	f.agent, f.cgroup, f.agentErr = s.ids.Resolve(o.CgroupID)
	f.exe = exeOf(o.PID)
	if name, ok := s.names.lookup(o.CgroupID, o.Dst.Addr()); ok {
		f.hint = name
	}
	return f
}

// serveFlow sniffs a flow's first bytes and judges it by what they say.
func (s *Sidecar) serveFlow(ctx context.Context, conn net.Conn, f *flow) {
	sn, err := Sniff(conn, firstByteWait, s.sniffTimeout)
	if err != nil {
		if errors.Is(err, ErrBadHello) {
			s.decide(ctx, f, intent{method: policies.MethodConnect, host: f.name(), port: f.port,
				transport: "tls", mode: modeConnect, refuse: reasonBadHello})
			writeTLSAlert(conn)
			return
		}
		s.log.Debug().Err(err).Msg("sniff failed")
		return
	}
	switch sn.Proto {
	case ProtoTLS:
		s.serveTLS(ctx, conn, f, sn)
	case ProtoHTTP:
		s.serveHTTP(ctx, withPrefix(conn, sn.Prefix), f, false)
	default:
		in := intent{method: policies.MethodConnect, host: f.name(), port: f.port, transport: "tcp", mode: modeTCP}
		s.tunnel(ctx, conn, f, in, sn.Prefix)
	}
}

// name is the best name the sidecar has for a flow's destination without reading it: the hint, or
// the original address.
func (f *flow) name() string {
	if f.hint != "" {
		return f.hint
	}
	if f.hasOrigin {
		return f.origin.Dst.Addr().String()
	}
	return ""
}

// serveTLS judges a TLS flow by its SNI and tunnels it, or hands it to the MITM engine.
func (s *Sidecar) serveTLS(ctx context.Context, conn net.Conn, f *flow, sn Sniffed) {
	host := sn.Hello.ServerName
	if host == "" {
		host = f.name()
	}
	in := intent{method: policies.MethodConnect, host: host, port: f.port, transport: "tls", mode: modeConnect,
		sni: sn.Hello.ServerName}
	if s.mitm != nil && sn.Hello.ServerName != "" && s.routeTLS(ctx, conn, f, sn, &in) {
		return
	}
	s.tunnel(ctx, conn, f, in, sn.Prefix)
}

// tunnel judges a connection-level intent and, when allowed, dials the name and splices.
func (s *Sidecar) tunnel(ctx context.Context, conn net.Conn, f *flow, in intent, prefix []byte) {
	v := s.decide(ctx, f, in)
	if !v.allowed() {
		if in.mode == modeConnect {
			writeTLSAlert(conn)
		}
		return
	}
	up, dialed, err := s.connector.Dial(ctx, in.host, in.port)
	if err != nil {
		s.log.Warn().Err(err).Str(logfields.Host, in.host).Msg(errConnector)
		s.complete(v, errorResult(err, f.start), netip.AddrPort{})
		if in.mode == modeConnect {
			writeTLSAlert(conn)
		}
		return
	}
	defer up.Close()
	start := time.Now()
	var upBytes int64
	if len(prefix) > 0 {
		n, err := up.Write(prefix)
		upBytes += int64(n)
		if err != nil {
			s.complete(v, errorResult(err, start), dialed)
			return
		}
	}
	n1, n2 := splice(conn, up)
	s.complete(v, audit.Result{BytesUp: upBytes + n1, BytesDown: n2, DurationMS: time.Since(start).Milliseconds()}, dialed)
}

// splice copies both ways until both directions end, half-closing as each side finishes. With two
// *net.TCPConn, io.Copy uses splice(2): the bytes never enter user space.
func splice(agent, upstream net.Conn) (up, down int64) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		up, _ = io.Copy(upstream, unwrap(agent))
		closeWrite(upstream)
	}()
	down, _ = io.Copy(agent, upstream)
	closeWrite(agent)
	wg.Wait()
	return up, down
}

// unwrap returns the TCP connection under a prefixConn whose prefix has been consumed, so that
// io.Copy can use splice(2).
func unwrap(c net.Conn) net.Conn {
	if p, ok := c.(*prefixConn); ok && p.prefix.Len() == 0 {
		return p.Conn
	}
	return c
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
		return ta.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
