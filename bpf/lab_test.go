//go:build linux

package bpf_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/internal/e2e"
	"github.com/openfirma/firma/internal/testutil"
)

// The lab's fixed ports: they only exist inside the lab's own network namespaces.
const (
	labSidecarPort = 15001
	labDNSPort     = 15053
	labOutsidePort = 9443 // where outside listeners wait for anything that escapes
	labMarkerPort  = 9    // the capture's sync datagrams
)

// lab is a NetLab with firma's programs attached to a fresh cgroup, a stand-in sidecar and
// resolver in the inside namespace, listeners and a capture on the outside, and every refusal the
// kernel reports collected.
type lab struct {
	*testutil.NetLab
	cg       *testutil.Cgroup
	cfg      bpf.Config
	progs    *bpf.Programs
	sidecar  *standIn
	sentry   *testutil.Sentry
	capture  *testutil.Capture
	refusals *refusalLog
}

// newLab builds a lab; adjust changes the programs' configuration before they are attached.
func newLab(t *testing.T, adjust func(*bpf.Config)) *lab {
	t.Helper()
	testutil.RequireRoot(t)
	l := &lab{NetLab: testutil.NewNetLab(t), cg: testutil.NewCgroup(t, nil)}
	l.cfg = bpf.Config{
		Cgroup:       l.cg.Path,
		PinDir:       filepath.Join("/sys/fs/bpf", "firma-test-"+filepath.Base(l.cg.Path)),
		SidecarPort:  labSidecarPort,
		DNSPort:      labDNSPort,
		IPv6:         true,
		RefusalBurst: 10000, // every refusal reported: the rate limit has its own test
		RefusalRate:  10000,
	}
	if adjust != nil {
		adjust(&l.cfg)
	}
	l.progs = attachCfg(t, l.cfg)
	l.refusals = collectRefusals(t, l.progs)
	// Let ping sockets past the kernel's own group check, so that firma is what refuses them.
	l.Inside.Sysctl(t, "net.ipv4.ping_group_range", "0 2147483647")
	// Let the kernel choose the sidecar's port for bind(…, 0), as it would on a host whose
	// ephemeral range covers it, so that post_bind is what refuses it.
	l.Inside.Sysctl(t, "net.ipv4.ip_local_port_range", "10000 60999")
	l.sidecar = startStandIn(t, l.Inside, l.progs, l.Outside4, l.Outside6)
	l.sentry = l.Watch(t, []uint16{labOutsidePort}, []uint16{labOutsidePort, 53}, labMarkerPort)
	l.capture = l.sentry.Capture
	return l
}

// attachCfg attaches the programs with cfg, cleaning up after the test even when it fails.
func attachCfg(t *testing.T, cfg bpf.Config) *bpf.Programs {
	t.Helper()
	t.Cleanup(func() {
		if err := bpf.Cleanup(cfg.PinDir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	progs, err := bpf.Attach(cfg, zerolog.Nop())
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	t.Cleanup(func() { progs.Close() })
	return progs
}

// assertSealed checks that nothing left the inside namespace: no frame arrived on the outside
// end of the link and no outside listener saw a connection or datagram.
func (l *lab) assertSealed(t *testing.T) {
	t.Helper()
	l.sentry.AssertSealed(t)
}

// command runs name inside the lab's inside namespace and its enforced cgroup.
func (l *lab) command(t *testing.T, name string, args ...string) *exec.Cmd {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return l.Inside.Command(ctx, t, l.cg, name, args...)
}

// escapeArgs are the attacker's arguments for this lab.
func (l *lab) escapeArgs(extra ...string) []string {
	return append([]string{
		"-target4", l.Outside4.String(), "-target6", l.Outside6.String(),
		"-src4", l.Inside4.String(), "-src6", l.Inside6.String(),
		"-port", fmt.Sprint(labOutsidePort), "-ifname", l.InsideIf,
		"-sidecar-port", fmt.Sprint(labSidecarPort), "-dns-port", fmt.Sprint(labDNSPort),
	}, extra...)
}

// attempt is one line of the escape program's output.
type attempt = e2e.Attempt

// runEscape runs the attacker with args and returns its lines by technique, and its pid.
func (l *lab) runEscape(t *testing.T, args ...string) (map[string]attempt, int) {
	t.Helper()
	return e2e.RunEscape(t, l.command(t, escapeBinary(t), l.escapeArgs(args...)...))
}

func escapeBinary(t *testing.T) string { return e2e.EscapeBinary(t) }

// standIn plays the sidecar: it accepts on both loopbacks, looks up each peer's origin as the
// sidecar would, and answers; its resolver answers *.firma.test with the outside addresses.
type standIn struct {
	mu    sync.Mutex
	flows []flow
	dns   []flow
}

// flow is what the stand-in learned of one connection or query.
type flow struct {
	Origin bpf.Origin
	Err    error
	First  string // the first line the client sent, or the name it looked up
}

func startStandIn(t *testing.T, ns *testutil.NetNS, origins bpf.Origins, out4, out6 netip.Addr) *standIn {
	t.Helper()
	s := &standIn{}
	err := ns.Do(func() error {
		for _, host := range []string{"127.0.0.1", "::1"} {
			ln, err := net.Listen("tcp", net.JoinHostPort(host, fmt.Sprint(labSidecarPort)))
			if err != nil {
				return err
			}
			t.Cleanup(func() { ln.Close() })
			go s.serveTCP(ln, origins)

			pc, err := net.ListenPacket("udp", net.JoinHostPort(host, fmt.Sprint(labDNSPort)))
			if err != nil {
				return err
			}
			t.Cleanup(func() { pc.Close() })
			go s.serveDNS(pc, origins, out4, out6)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("stand-in sidecar: %v", err)
	}
	return s
}

func (s *standIn) serveTCP(ln net.Listener, origins bpf.Origins) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			f := flow{}
			f.Origin, f.Err = origins.Lookup(netip.MustParseAddrPort(c.RemoteAddr().String()))
			c.SetDeadline(time.Now().Add(5 * time.Second))
			r := bufio.NewReader(c)
			line, _ := r.ReadString('\n')
			f.First = strings.TrimSpace(line)
			s.mu.Lock()
			s.flows = append(s.flows, f)
			s.mu.Unlock()
			answer := "stand-in " + f.Origin.Dst.String()
			if strings.HasPrefix(line, "GET ") {
				for {
					h, err := r.ReadString('\n')
					if err != nil || strings.TrimSpace(h) == "" {
						break
					}
				}
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(answer), answer)
				return
			}
			fmt.Fprintln(c, answer)
		}()
	}
}

func (s *standIn) serveDNS(pc net.PacketConn, origins bpf.Origins, out4, out6 netip.Addr) {
	buf := make([]byte, 1500)
	for {
		n, peer, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		var q dns.Msg
		if err := q.Unpack(buf[:n]); err != nil || len(q.Question) != 1 {
			continue
		}
		f := flow{First: q.Question[0].Name}
		f.Origin, f.Err = origins.LookupDNS(netip.MustParseAddrPort(peer.String()), bpf.UDP)
		s.mu.Lock()
		s.dns = append(s.dns, f)
		s.mu.Unlock()
		resp := new(dns.Msg)
		resp.SetReply(&q)
		name := q.Question[0].Name
		hdr := dns.RR_Header{Name: name, Class: dns.ClassINET, Ttl: 5}
		switch {
		case !strings.HasSuffix(name, ".firma.test."):
			resp.Rcode = dns.RcodeNameError
		case q.Question[0].Qtype == dns.TypeA:
			hdr.Rrtype = dns.TypeA
			resp.Answer = append(resp.Answer, &dns.A{Hdr: hdr, A: out4.AsSlice()})
		case q.Question[0].Qtype == dns.TypeAAAA:
			hdr.Rrtype = dns.TypeAAAA
			resp.Answer = append(resp.Answer, &dns.AAAA{Hdr: hdr, AAAA: out6.AsSlice()})
		}
		if b, err := resp.Pack(); err == nil {
			pc.WriteTo(b, peer)
		}
	}
}

// seen returns the flows accepted so far whose first line starts with prefix.
func (s *standIn) seen(prefix string) []flow {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []flow
	for _, f := range s.flows {
		if strings.HasPrefix(f.First, prefix) {
			out = append(out, f)
		}
	}
	return out
}

func (s *standIn) lookups() []flow {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]flow(nil), s.dns...)
}

// refusalLog collects the kernel's refusal reports for the whole test.
type refusalLog struct {
	mu   sync.Mutex
	all  []bpf.Refusal
	more chan struct{}
}

func collectRefusals(t *testing.T, progs *bpf.Programs) *refusalLog {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := progs.Refusals(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l := &refusalLog{more: make(chan struct{}, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for r := range ch {
			l.mu.Lock()
			l.all = append(l.all, r)
			l.mu.Unlock()
			select {
			case l.more <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return l
}

func (l *refusalLog) snapshot() []bpf.Refusal {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]bpf.Refusal(nil), l.all...)
}

// await returns the first report that match accepts, waiting up to 10 s for it to arrive: the
// ring buffer is read asynchronously.
func (l *refusalLog) await(match func(bpf.Refusal) bool) (bpf.Refusal, bool) {
	deadline := time.After(10 * time.Second)
	for {
		for _, r := range l.snapshot() {
			if match(r) {
				return r, true
			}
		}
		select {
		case <-l.more:
		case <-deadline:
			return bpf.Refusal{}, false
		}
	}
}

// awaitCount waits up to 10 s until n reports have been read, and returns them.
func (l *refusalLog) awaitCount(n int) ([]bpf.Refusal, bool) {
	_, ok := l.await(func(bpf.Refusal) bool { return len(l.snapshot()) >= n })
	return l.snapshot(), ok || len(l.snapshot()) >= n
}
