package load

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openfirma/firma/internal/testutil"
)

const (
	testAddr = "bench.test:443"
	testKey  = "sk-bench-test-key-0123456789"
)

// testWorld is an upstream serving the contract over TLS (h2 and HTTP/1.1) for bench.test, with
// a certificate from a fresh CA.
type testWorld struct {
	ca    *testutil.CA
	up    *Upstream
	srv   *httptest.Server
	conns atomic.Int64 // connections open right now
}

// newTestWorld starts an upstream; wrap, when set, sits in front of its handler (to break it).
func newTestWorld(t *testing.T, wrap func(http.Handler) http.Handler) *testWorld {
	t.Helper()
	w := &testWorld{ca: testutil.NewCA(t, "load test CA"), up: NewUpstream(testKey)}
	var h http.Handler = w.up
	if wrap != nil {
		h = wrap(h)
	}
	w.srv = httptest.NewUnstartedServer(h)
	w.srv.TLS = &tls.Config{Certificates: []tls.Certificate{w.ca.Leaf(t, "bench.test")}}
	w.srv.EnableHTTP2 = true
	w.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			w.conns.Add(1)
		case http.StateClosed, http.StateHijacked:
			w.conns.Add(-1)
		}
	}
	w.srv.StartTLS()
	t.Cleanup(w.srv.Close)
	return w
}

func (w *testWorld) spec(wl Workload) Spec {
	return Spec{
		Workload:    wl,
		Addr:        testAddr,
		Dial:        w.srv.Listener.Addr().String(),
		RootCAs:     w.ca.Pool(),
		WantKey:     KeyAgent,
		Concurrency: 3,
		Duration:    150 * time.Millisecond,
		Bytes:       3*chunkSize + 17,
		Conns:       20,
		Hold:        func(int) {},
	}
}

func TestWorkloadsDirect(t *testing.T) {
	w := newTestWorld(t, nil)
	for _, wl := range Workloads {
		t.Run(string(wl), func(t *testing.T) {
			s := w.spec(wl)
			var heldConns int64
			s.Hold = func(n int) {
				if n != s.Conns {
					t.Errorf("Hold(%d), want %d", n, s.Conns)
				}
				heldConns = w.conns.Load()
			}
			w.up.Reset()
			r, err := Run(context.Background(), s)
			if err != nil {
				t.Fatal(err)
			}
			checkResult(t, s, r)
			if n := w.up.Counts()[KeyAgent]; n < r.Requests {
				t.Errorf("the upstream answered %d requests with the decoy, the client counted %d", n, r.Requests)
			}
			if wl == Idle && heldConns != int64(s.Conns) {
				t.Errorf("upstream had %d connections open during Hold, want %d", heldConns, s.Conns)
			}
		})
	}
}

// checkResult asserts what every good run of s reports.
func checkResult(t *testing.T, s Spec, r Result) {
	t.Helper()
	if r.Workload != s.Workload || r.Requests < 1 || r.Seconds <= 0 {
		t.Fatalf("result = %+v", r)
	}
	wantProto := "HTTP/1.1"
	if s.Workload == KeepAliveH2 {
		wantProto = "HTTP/2.0"
	}
	if r.Proto != wantProto {
		t.Errorf("proto %q, want %q", r.Proto, wantProto)
	}
	switch s.Workload {
	case NewConn, KeepAliveH1, KeepAliveH2:
		if r.P50us <= 0 || r.P99us < r.P50us || r.RequestsPerSec() <= 0 {
			t.Errorf("latencies = %+v", r)
		}
	case Download, Upload:
		if r.Bytes != s.Bytes || r.MBPerSec() <= 0 {
			t.Errorf("bytes %d, want %d", r.Bytes, s.Bytes)
		}
	case Idle:
		if r.Conns != s.Conns || r.Requests != int64(s.Conns) {
			t.Errorf("conns %d requests %d, want %d", r.Conns, r.Requests, s.Conns)
		}
	}
	if !slices.Contains(r.Headers, KeySeenHeader+": "+string(s.WantKey)) {
		t.Errorf("headers %q lack the key report", r.Headers)
	}
}

// connectProxy is a minimal explicit proxy: CONNECT to testAddr only, tunnelled to dial.
func connectProxy(t *testing.T, dial string) (proxyURL string, tunnels *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	tunnels = new(atomic.Int64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil || req.Method != http.MethodConnect || req.Host != testAddr {
					io.WriteString(c, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
					return
				}
				up, err := net.Dial("tcp", dial)
				if err != nil {
					io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
					return
				}
				defer up.Close()
				tunnels.Add(1)
				io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
				go func() { io.Copy(up, br); up.(*net.TCPConn).CloseWrite() }()
				io.Copy(c, up)
			}()
		}
	}()
	return "http://" + ln.Addr().String(), tunnels
}

func TestWorkloadsThroughProxy(t *testing.T) {
	w := newTestWorld(t, nil)
	proxy, tunnels := connectProxy(t, w.srv.Listener.Addr().String())
	for _, wl := range Workloads {
		t.Run(string(wl), func(t *testing.T) {
			s := w.spec(wl)
			s.Proxy, s.Dial = proxy, "127.0.0.1:1" // Dial must not be used with a proxy
			before := tunnels.Load()
			r, err := Run(context.Background(), s)
			if err != nil {
				t.Fatal(err)
			}
			checkResult(t, s, r)
			if tunnels.Load() == before {
				t.Error("nothing went through the proxy")
			}
		})
	}
}

// injectingProxy terminates TLS with its own CA, sets KeyHeader to testKey (replacing the
// client's, or adding beside it when add is set) and forwards to the upstream, as a MITM proxy
// with credential injection does.
func injectingProxy(t *testing.T, w *testWorld, add bool) (dial string, ca *testutil.CA) {
	t.Helper()
	ca = testutil.NewCA(t, "injecting proxy CA")
	target, _ := url.Parse("https://" + w.srv.Listener.Addr().String())
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: w.ca.Pool(), ServerName: "bench.test"}}
	inner := rp.Director
	rp.Director = func(r *http.Request) {
		inner(r)
		if add {
			r.Header.Add(KeyHeader, testKey)
		} else {
			r.Header.Set(KeyHeader, testKey)
		}
	}
	srv := httptest.NewUnstartedServer(rp)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Leaf(t, "bench.test")}}
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), ca
}

func TestInjectedKeyIsChecked(t *testing.T) {
	w := newTestWorld(t, nil)
	dial, ca := injectingProxy(t, w, false)
	for _, wl := range []Workload{KeepAliveH2, Upload, Idle} {
		s := w.spec(wl)
		s.Dial, s.RootCAs, s.WantKey = dial, ca.Pool(), KeyInjected
		w.up.Reset()
		r, err := Run(context.Background(), s)
		if err != nil {
			t.Fatalf("%s: %v", wl, err)
		}
		checkResult(t, s, r)
		if c := w.up.Counts(); c[KeyInjected] < r.Requests || c[KeyAgent]+c[KeyNone]+c[KeyOther] != 0 {
			t.Errorf("%s: upstream counts %v for %d requests", wl, c, r.Requests)
		}
		for _, h := range r.Headers {
			if strings.Contains(h, testKey) {
				t.Errorf("the key came back to the client: %q", h)
			}
		}
	}

	// The client trusts only the proxy's CA: reaching the upstream's own certificate fails.
	s := w.spec(KeepAliveH1)
	s.RootCAs, s.WantKey = ca.Pool(), KeyInjected
	if _, err := Run(context.Background(), s); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("no MITM, want a certificate error: %v", err)
	}
	// A tunnel must not have injected anything.
	s = w.spec(KeepAliveH1)
	s.Dial, s.RootCAs = dial, ca.Pool()
	if _, err := Run(context.Background(), s); err == nil || !strings.Contains(err.Error(), `saw key "injected", want "agent"`) {
		t.Errorf("want a key error: %v", err)
	}
	// A proxy that adds the key beside the agent's is caught.
	dial, ca = injectingProxy(t, w, true)
	s = w.spec(NewConn)
	s.Dial, s.RootCAs, s.WantKey = dial, ca.Pool(), KeyInjected
	if _, err := Run(context.Background(), s); err == nil || !strings.Contains(err.Error(), `saw key "other"`) {
		t.Errorf("want a key error: %v", err)
	}
}

// A system that answers fast but wrongly fails the run.
func TestWrongAnswersFail(t *testing.T) {
	cases := []struct {
		name string
		wl   Workload
		wrap func(http.Handler) http.Handler
		want string
	}{
		{"error status", KeepAliveH1, func(http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set(KeySeenHeader, string(KeyAgent))
				http.Error(w, "boom", http.StatusBadGateway)
			})
		}, "status 502"},
		{"short body", NewConn, bodyRewrite(func(b []byte) []byte { return b[:len(b)-1] }), "body is not the payload"},
		{"long body", KeepAliveH2, bodyRewrite(func(b []byte) []byte { return append(b, 'x') }), "body longer"},
		{"altered body", KeepAliveH1, bodyRewrite(func(b []byte) []byte { b[5] ^= 1; return b }), "body is not the payload"},
		{"altered download", Download, bodyRewrite(func(b []byte) []byte { b[chunkSize+100] ^= 1; return b }), "payload corrupted at byte 65636"},
		{"short download", Download, bodyRewrite(func(b []byte) []byte { return b[:len(b)-10] }), "download: 196615 bytes arrived, want 196625"},
		{"lost upload", Upload, func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				r.URL.RawQuery = "bytes=10" // the upstream expects fewer bytes than were sent
				h.ServeHTTP(w, r)
			})
		}, "status 422"},
		{"miscounted upload", Upload, func(http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				w.Header().Set(KeySeenHeader, string(KeyAgent))
				io.WriteString(w, `{"bytes":5}`)
			})
		}, "upload: 5 bytes arrived, want 196625"},
		{"no key report", Idle, func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Write(SmallBody)
			})
		}, `saw key "", want "agent"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := newTestWorld(t, c.wrap)
			_, err := Run(context.Background(), w.spec(c.wl))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
		})
	}
}

// bodyRewrite buffers the upstream's response and changes its body (and Content-Length).
func bodyRewrite(f func([]byte) []byte) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			body := f(rec.Body.Bytes())
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.Header().Del("Content-Length")
			w.WriteHeader(rec.Code)
			w.Write(body)
		})
	}
}

// Connections that the other side closes while they are held are counted as failures.
func TestIdleNoticesClosedConnections(t *testing.T) {
	w := newTestWorld(t, nil)
	w.srv.Config.SetKeepAlivesEnabled(false)
	s := w.spec(Idle)
	s.Hold = func(int) { time.Sleep(50 * time.Millisecond) }
	if _, err := Run(context.Background(), s); err == nil || !strings.Contains(err.Error(), "closed by the other side") {
		t.Fatalf("err = %v", err)
	}
}

// An idle run that cannot open every connection says how far it got.
func TestIdleReportsHowManyWereOpen(t *testing.T) {
	var served atomic.Int64
	w := newTestWorld(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			if served.Add(1) > 5 {
				http.Error(rw, "full", http.StatusServiceUnavailable)
				return
			}
			h.ServeHTTP(rw, r)
		})
	})
	s := w.spec(Idle)
	r, err := Run(context.Background(), s)
	if err == nil || !strings.Contains(err.Error(), "of 20 connections open, then: status 503") || r.Conns < 1 || r.Conns > 5 {
		t.Fatalf("result %+v, err = %v", r, err)
	}
}

func TestUpstreamClassifiesTheKey(t *testing.T) {
	up := NewUpstream(testKey)
	for _, c := range []struct {
		values []string
		want   KeySeen
	}{
		{nil, KeyNone},
		{[]string{DecoyKey}, KeyAgent},
		{[]string{testKey}, KeyInjected},
		{[]string{DecoyKey, testKey}, KeyOther},
		{[]string{"something else"}, KeyOther},
	} {
		req := httptest.NewRequest(http.MethodGet, PathSmall, nil)
		req.Header[KeyHeader] = c.values
		rec := httptest.NewRecorder()
		up.ServeHTTP(rec, req)
		if got := rec.Header().Get(KeySeenHeader); got != string(c.want) {
			t.Errorf("%q: seen %q, want %q", c.values, got, c.want)
		}
	}
	want := map[KeySeen]int64{KeyNone: 1, KeyAgent: 1, KeyInjected: 1, KeyOther: 2}
	if got := up.Counts(); !maps.Equal(got, want) {
		t.Errorf("counts %v, want %v", got, want)
	}
	up.Reset()
	if got := up.Counts(); got[KeyOther] != 0 {
		t.Errorf("after Reset: %v", got)
	}
}

func TestSpecValidate(t *testing.T) {
	w := newTestWorld(t, nil)
	for name, mut := range map[string]func(*Spec){
		"workload":    func(s *Spec) { s.Workload = "nope" },
		"addr":        func(s *Spec) { s.Addr = "bench.test" },
		"proxy":       func(s *Spec) { s.Proxy = "socks5://127.0.0.1:1" },
		"CA":          func(s *Spec) { s.RootCAs = nil },
		"want key":    func(s *Spec) { s.WantKey = KeyNone },
		"concurrency": func(s *Spec) { s.Concurrency = 0 },
	} {
		s := w.spec(NewConn)
		mut(&s)
		if err := s.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	s := w.spec(Idle)
	s.Hold = nil
	if s.Validate() == nil {
		t.Error("idle without Hold accepted")
	}
}

// The error that happened first is the one reported, not the ones it caused in other workers.
func TestParallelReturnsTheFirstError(t *testing.T) {
	boom := errors.New("boom")
	err := parallel(context.Background(), 8, func(ctx context.Context, i int) error {
		if i == 5 {
			return boom
		}
		<-ctx.Done()
		return errors.New("EOF: a consequence of the cancellation")
	})
	if err != boom {
		t.Fatalf("err = %v, want boom", err)
	}
	if err := parallel(context.Background(), 3, func(context.Context, int) error { return nil }); err != nil {
		t.Fatal(err)
	}
}

// The upstream keeps why it refused a request, for the harness to quote when a run fails.
func TestUpstreamKeepsRefusals(t *testing.T) {
	up := NewUpstream(testKey)
	rec := httptest.NewRecorder()
	up.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, PathUpload+"?bytes=10", bytes.NewReader(SmallBody[:20])))
	if rec.Code != http.StatusUnprocessableEntity {
		t.Fatalf("status %d", rec.Code)
	}
	rec = httptest.NewRecorder()
	up.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, PathUpload+"?bytes=20", bytes.NewReader([]byte("not the payload, 20b"))))
	got := up.Refusals()
	want := []string{"POST /upload: upload: got 20 bytes, want 10", "POST /upload: upload: payload corrupted at byte 0 after 0 of 20 bytes"}
	if !slices.Equal(got, want) {
		t.Errorf("refusals %q, want %q", got, want)
	}
	up.Reset()
	if len(up.Refusals()) != 0 {
		t.Error("Reset kept the refusals")
	}
}
