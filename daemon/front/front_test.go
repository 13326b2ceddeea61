package front

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/daemon/judge"
	"github.com/openfirma/firma/daemon/l7"
	"github.com/openfirma/firma/policies"
)

// fakeOrigins attests every peer as a connect from cgroup 7 to dst, unless none is set.
type fakeOrigins struct{ dst netip.AddrPort }

func (o fakeOrigins) Lookup(netip.AddrPort) (bpf.Origin, error) {
	if !o.dst.IsValid() {
		return bpf.Origin{}, bpf.ErrNoOrigin
	}
	return bpf.Origin{Dst: o.dst, Proto: bpf.TCP, PID: 42, CgroupID: 7, Comm: "agent"}, nil
}

// recorder is a fake judge (allowing all but denied hosts) and a fake L7 engine in one, recording
// every call in order.
type recorder struct {
	mu          sync.Mutex
	calls       []string
	denied      map[string]bool
	intercepted map[string]bool
	fallback    map[string]bool
	intents     []judge.Intent
	results     []judge.Result
}

func (r *recorder) log(format string, a ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, strings.TrimSpace(fmt.Sprintf(format, a...)))
}

func (r *recorder) Decide(_ context.Context, f *judge.Flow, in judge.Intent) judge.Verdict {
	r.mu.Lock()
	r.intents = append(r.intents, in)
	r.mu.Unlock()
	r.log("decide %s %s:%d %s %s", in.Mode, in.Host, in.Port, in.SNI, in.Refuse)
	if in.Refuse != "" || r.denied[in.Host] {
		return judge.Verdict{Decision: policies.Decision{Outcome: policies.Deny}}
	}
	return judge.Verdict{Decision: policies.Decision{Outcome: policies.Allow, Reason: in.Note}}
}

func (r *recorder) Complete(_ judge.Verdict, res judge.Result) {
	r.mu.Lock()
	r.results = append(r.results, res)
	r.mu.Unlock()
	r.log("complete up=%d down=%d err=%s", res.BytesUp, res.BytesDown, res.ErrClass)
}

func (r *recorder) Route(f *judge.Flow, host string) l7.Mode {
	switch {
	case r.fallback[host]:
		return l7.ModeFallback
	case r.intercepted[host]:
		return l7.ModeIntercept
	}
	return l7.ModeDefault
}

func (r *recorder) Intercepted(host string) bool { return r.intercepted[host] }

func (r *recorder) ServeTLS(_ context.Context, conn net.Conn, f *judge.Flow, tc l7.TLSConn) error {
	hello := make([]byte, 5)
	io.ReadFull(conn, hello) // the replayed ClientHello starts the stream
	r.log("mitm host=%s sni=%s port=%d replayed=%v", tc.Host, tc.SNI, tc.Port, hello[0] == 0x16)
	return nil
}

func (r *recorder) ServePlain(_ context.Context, conn net.Conn, f *judge.Flow, pc l7.PlainConn) {
	line := make([]byte, 3)
	io.ReadFull(conn, line)
	r.log("plain name=%s port=%d proxy=%v agent=%s first=%q", pc.Name, pc.Port, pc.Proxy, f.AgentID, line)
}

func (r *recorder) snapshot() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.calls...)
}

// upstreamPipes is a fake connector: each dial returns one end of a pipe whose other end echoes a
// greeting (when set) and then everything it reads, uppercased.
type upstreamPipes struct {
	greeting string
	mu       sync.Mutex
	dialed   []string
}

func (u *upstreamPipes) dial(_ context.Context, host string, port int) (net.Conn, netip.AddrPort, error) {
	u.mu.Lock()
	u.dialed = append(u.dialed, fmt.Sprintf("%s:%d", host, port))
	u.mu.Unlock()
	a, b := net.Pipe()
	// Reads and writes run apart (a pipe has no buffer): the echo must not block the sender.
	echo := make(chan []byte, 256)
	go func() {
		defer close(echo)
		buf := make([]byte, 1024)
		for {
			n, err := b.Read(buf)
			if n > 0 {
				echo <- bytes.ToUpper(append([]byte(nil), buf[:n]...))
			}
			if err != nil {
				return
			}
		}
	}()
	go func() {
		defer b.Close()
		if u.greeting != "" {
			io.WriteString(b, u.greeting)
		}
		for msg := range echo {
			b.Write(msg)
		}
	}()
	return a, netip.MustParseAddrPort("127.0.0.9:443"), nil
}

func newServer(r *recorder, up *upstreamPipes, dst string) *Server {
	o := Options{
		Flow: func(o bpf.Origin) *judge.Flow { return &judge.Flow{AgentID: "a1", PID: o.PID, OrigDst: o.Dst} },
		Names: func(cg uint64, a netip.Addr) (string, bool) {
			return map[string]string{"127.0.8.8": "learned.test"}[a.String()], a.String() == "127.0.8.8"
		},
		Judge:            r,
		Dial:             up.dial,
		L7:               r,
		ProxyAddr:        netip.MustParseAddrPort("127.0.0.1:8080"),
		ServerFirstPorts: map[int]bool{25: true, 443: true, 80: true},
		FirstByteWait:    100 * time.Millisecond,
		FirstSpeakerWait: time.Second,
		SniffTimeout:     500 * time.Millisecond,
		Log:              zerolog.Nop(),
	}
	if dst != "" {
		o.Origins = fakeOrigins{netip.MustParseAddrPort(dst)}
	} else {
		o.Origins = fakeOrigins{}
	}
	return New(o)
}

func helloFor(t *testing.T, sni string) []byte {
	t.Helper()
	return realHello(t, &tls.Config{ServerName: sni, InsecureSkipVerify: sni == ""})
}

// run serves one connection whose client writes send (after delay) and then reads until EOF.
func run(t *testing.T, s *Server, delay time.Duration, send ...[]byte) string {
	t.Helper()
	client, server := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.ServeTransparent(context.Background(), server)
	}()
	time.Sleep(delay)
	go func() {
		for _, b := range send {
			client.Write(b)
		}
	}()
	// A pipe cannot half-close: read what comes within a moment, then hang up.
	client.SetReadDeadline(time.Now().Add(delay + 400*time.Millisecond))
	got, _ := io.ReadAll(client)
	client.Close()
	<-done
	return string(got)
}

func TestRouting(t *testing.T) {
	for _, tc := range []struct {
		name      string
		dst       string
		send      []byte
		delay     time.Duration
		greeting  string
		intercept []string
		fallback  []string
		deny      []string
		want      []string // calls, in order
		reply     string   // what the client reads back (for tunnels)
	}{
		{
			name: "tls tunnelled by sni", dst: "127.0.9.9:443", send: helloFor(t, "api.test"),
			want: []string{"decide connect api.test:443 api.test", "complete"},
		},
		{
			name: "tls to an intercepted host", dst: "127.0.9.9:443", send: helloFor(t, "api.test"), intercept: []string{"api.test"},
			want: []string{"decide mitm api.test:443 api.test", "mitm host=api.test sni=api.test port=443 replayed=true", "complete up=1"},
		},
		{
			name: "a refused intercepted host is refused before TLS is terminated", dst: "127.0.9.9:443", send: helloFor(t, "api.test"),
			intercept: []string{"api.test"}, deny: []string{"api.test"},
			want: []string{"decide mitm api.test:443 api.test"}, reply: "\x15\x03\x03\x00\x02\x02\x31",
		},
		{
			name: "tls without sni to a learned intercepted name", dst: "127.0.8.8:443", send: helloFor(t, ""), intercept: []string{"learned.test"},
			want: []string{"decide mitm learned.test:443", "mitm host=learned.test sni= port=443 replayed=true", "complete up=1"},
		},
		{
			name: "tls without sni, no name: judged by address", dst: "127.0.9.9:443", send: helloFor(t, ""),
			want: []string{"decide connect 127.0.9.9:443", "complete"},
		},
		{
			name: "fallback tunnel is noted", dst: "127.0.9.9:443", send: helloFor(t, "pinned.test"), intercept: []string{"pinned.test"}, fallback: []string{"pinned.test"},
			want: []string{"decide connect pinned.test:443 pinned.test", "complete"},
		},
		{
			name: "denied tls gets an alert", dst: "127.0.9.9:443", send: helloFor(t, "evil.test"), deny: []string{"evil.test"},
			want: []string{"decide connect evil.test:443 evil.test"}, reply: "\x15\x03\x03\x00\x02\x02\x31",
		},
		{
			name: "bad hello refused with an alert", dst: "127.0.9.9:443", send: []byte{0x16, 3, 1, 0, 4, 2, 0, 0, 0},
			want: []string{"decide connect 127.0.9.9:443  " + judge.ReasonBadHello}, reply: "\x15\x03\x03\x00\x02\x02\x31",
		},
		{
			name: "plain http to the l7 engine", dst: "127.0.8.8:80", send: []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
			want: []string{`plain name=learned.test port=80 proxy=false agent=a1 first="GET"`},
		},
		{
			name: "any method is http", dst: "127.0.9.9:80", send: []byte("PROPFIND /x HTTP/1.1\r\n\r\n"),
			want: []string{`plain name=127.0.9.9 port=80 proxy=false agent=a1 first="PRO"`},
		},
		{
			name: "h2c preface is http", dst: "127.0.9.9:80", send: []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
			want: []string{`plain name=127.0.9.9 port=80 proxy=false agent=a1 first="PRI"`},
		},
		{
			name: "the explicit proxy from inside keeps the kernel identity", dst: "127.0.0.1:8080", send: []byte("CONNECT a:443 HTTP/1.1\r\n\r\n"),
			want: []string{`plain name= port=80 proxy=true agent=a1 first="CON"`},
		},
		{
			name: "raw tcp tunnelled by learned name", dst: "127.0.8.8:5432", send: []byte("\x00\x00\x00\x08ping"),
			want: []string{"decide tcp learned.test:5432", "complete up=8 down=8"}, reply: "\x00\x00\x00\x08PING",
		},
		{
			name: "server speaks first", dst: "127.0.9.9:25", delay: 300 * time.Millisecond, greeting: "220 hello\r\n", send: []byte("ehlo x\r\n"),
			want: []string{"decide tcp 127.0.9.9:25", "complete up=8 down=19"}, reply: "220 hello\r\nEHLO X\r\n",
		},
		{
			name: "late clienthello is still tls", dst: "127.0.9.9:443", delay: 300 * time.Millisecond, send: helloFor(t, "late.test"), intercept: []string{"late.test"},
			want: []string{"decide tcp 127.0.9.9:443", "complete up=0 down=0", "decide mitm late.test:443 late.test", "mitm host=late.test sni=late.test port=443 replayed=true", "complete up=1"},
		},
		{
			name: "a slow client on an ordinary port is sniffed as usual", dst: "127.0.9.9:8443", delay: 300 * time.Millisecond, send: helloFor(t, "slow.test"),
			want: []string{"decide connect slow.test:8443 slow.test", "complete"},
		},
		{
			name: "late request line is still http", dst: "127.0.9.9:80", delay: 300 * time.Millisecond, send: []byte("GET /x HTTP/1.1\r\n\r\n"),
			want: []string{"decide tcp 127.0.9.9:80", "complete up=0 down=0", `plain name=127.0.9.9 port=80 proxy=false agent=a1 first="GET"`},
		},
		{
			name: "a late hello to an intercepted learned name is terminated", dst: "127.0.8.8:443", delay: 300 * time.Millisecond, send: helloFor(t, ""), intercept: []string{"learned.test"},
			want: []string{"decide mitm learned.test:443", "mitm host=learned.test sni= port=443 replayed=true", "complete up=1"},
		},
		{
			name: "silent on a port where clients speak first: nothing judged, nothing dialed", dst: "127.0.9.9:8443", delay: 1500 * time.Millisecond,
			want: nil,
		},
		{
			name: "no origin: closed without a decision", dst: "", send: []byte("GET / HTTP/1.1\r\n\r\n"),
			want: nil,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set := func(l []string) map[string]bool {
				m := map[string]bool{}
				for _, h := range l {
					m[h] = true
				}
				return m
			}
			r := &recorder{denied: set(tc.deny), intercepted: set(tc.intercept), fallback: set(tc.fallback)}
			up := &upstreamPipes{greeting: tc.greeting}
			reply := run(t, newServer(r, up, tc.dst), tc.delay, tc.send)
			got := r.snapshot()
			if len(got) != len(tc.want) {
				t.Fatalf("calls %q, want %q", got, tc.want)
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tc.want[i]) {
					t.Fatalf("calls %q, want %q", got, tc.want)
				}
			}
			if tc.reply != "" && reply != tc.reply {
				t.Fatalf("client read %q, want %q", reply, tc.reply)
			}
			for _, in := range r.intents {
				if len(tc.fallback) > 0 && in.Note != judge.ReasonFallback {
					t.Fatalf("fallback tunnel without its note: %+v", in)
				}
			}
		})
	}
}

// TestSilentToIntercepted: a client that never speaks to an intercepted host is refused, never
// tunnelled.
func TestSilentToIntercepted(t *testing.T) {
	r := &recorder{intercepted: map[string]bool{"learned.test": true}}
	up := &upstreamPipes{greeting: "hello"}
	client, server := net.Pipe()
	defer client.Close()
	newServer(r, up, "127.0.8.8:443").ServeTransparent(context.Background(), server)
	got := r.snapshot()
	if len(got) != 1 || !strings.Contains(got[0], ReasonSilentIntercept) || len(up.dialed) != 0 {
		t.Fatalf("calls %q, dialed %v", got, up.dialed)
	}
}

// TestProxyOutside: an explicit-proxy client outside every cgroup is an unknown agent unless
// [sidecar.interceptor] agent_id names one.
func TestProxyOutside(t *testing.T) {
	r := &recorder{}
	s := newServer(r, &upstreamPipes{}, "")
	for _, agent := range []string{"", "proxy-agent"} {
		s.o.ProxyAgent = agent
		client, server := net.Pipe()
		go client.Write([]byte("GET http://x/ HTTP/1.1\r\n\r\n"))
		s.ServeProxy(context.Background(), server)
		client.Close()
	}
	got := r.snapshot()
	if len(got) != 2 || !strings.Contains(got[0], "proxy=true agent= ") || !strings.Contains(got[1], "agent=proxy-agent") {
		t.Fatalf("calls %q", got)
	}
}

// TestTunnelFromConnect: a CONNECT tunnel is named by its target and judged by what flows in it,
// starting with what the agent sent along with the CONNECT.
func TestTunnelFromConnect(t *testing.T) {
	r := &recorder{intercepted: map[string]bool{"api.test": true}}
	s := newServer(r, &upstreamPipes{}, "")
	hello := helloFor(t, "")
	client, server := net.Pipe()
	defer client.Close()
	go client.Write(hello[10:])
	s.Tunnel(context.Background(), server, hello[:10], &judge.Flow{AgentID: "a1"}, "api.test", 443)
	got := r.snapshot()
	if len(got) != 3 || got[0] != "decide mitm api.test:443" || got[1] != "mitm host=api.test sni= port=443 replayed=true" {
		t.Fatalf("calls %q", got)
	}
}

// fakeLimits admits up to max flows at once and counts what it was asked.
type fakeLimits struct {
	mu                          sync.Mutex
	max, active, asked, refused int
	agents                      []string
}

func (l *fakeLimits) Admit(f *judge.Flow) (func(), bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.asked++
	l.agents = append(l.agents, f.AgentID)
	if l.active >= l.max {
		l.refused++
		return nil, false
	}
	l.active++
	return func() { l.mu.Lock(); l.active--; l.mu.Unlock() }, true
}

// TestLimits: a flow over its agent's limits is closed before anything is read, judged or dialed
// (the limiter records the refusal); an admitted one gives its slot back when it ends, on both
// entry points.
func TestLimits(t *testing.T) {
	r := &recorder{}
	up := &upstreamPipes{}
	s := newServer(r, up, "127.0.0.9:443")
	lim := &fakeLimits{max: 0}
	s.o.Limits = lim
	if got := run(t, s, 0, helloFor(t, "a.test")); got != "" {
		t.Errorf("a refused flow got %q", got)
	}
	client, server := net.Pipe()
	go client.Write([]byte("GET http://x/ HTTP/1.1\r\n\r\n"))
	s.ServeProxy(context.Background(), server)
	client.Close()
	if calls := r.snapshot(); len(calls) != 0 || len(up.dialed) != 0 || lim.refused != 2 {
		t.Fatalf("over the limit: calls %q, dialed %v, refused %d", calls, up.dialed, lim.refused)
	}

	lim.max = 1
	if got := run(t, s, 0, helloFor(t, "a.test")); !strings.Contains(got, "\x16") {
		t.Errorf("an admitted flow was not tunnelled: %q", got)
	}
	if lim.active != 0 || lim.asked != 3 || lim.agents[2] != "a1" {
		t.Fatalf("after the flow: active %d, asked %d, agents %v", lim.active, lim.asked, lim.agents)
	}
}
