package load

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Workload names one kind of traffic.
type Workload string

const (
	NewConn     Workload = "new"          // a new TCP+TLS connection and one small GET per request
	KeepAliveH1 Workload = "keepalive-h1" // small GETs over Concurrency HTTP/1.1 keep-alive connections
	KeepAliveH2 Workload = "keepalive-h2" // small GETs, Concurrency at a time, offering HTTP/2 (one connection)
	Download    Workload = "download"     // one GET of Bytes payload bytes on one connection
	Upload      Workload = "upload"       // one POST of Bytes payload bytes on one connection
	Idle        Workload = "idle"         // Conns connections, each verified with one GET, then held open
)

// Workloads lists every workload in the order the harness runs and reports them.
var Workloads = []Workload{NewConn, KeepAliveH1, KeepAliveH2, Download, Upload, Idle}

// ParseWorkload returns the workload named s.
func ParseWorkload(s string) (Workload, error) {
	if i := slices.Index(Workloads, Workload(s)); i >= 0 {
		return Workloads[i], nil
	}
	return "", fmt.Errorf("unknown workload %q (want one of %v)", s, Workloads)
}

// Spec is one run of one workload.
type Spec struct {
	Workload Workload
	// Addr is the name and port the client asks for: TLS server name, Host header, CONNECT target.
	Addr string
	// Dial, when set, is the address dialed for Addr, as curl --connect-to does. Unused with Proxy.
	Dial string
	// Proxy is an explicit HTTP proxy URL that every connection goes through (CONNECT).
	Proxy string
	// RootCAs are the only CAs the client trusts: the upstream's for a tunnel, the proxy's for MITM.
	RootCAs *x509.CertPool
	// WantKey is what the upstream must report having seen on every request.
	WantKey KeySeen

	Concurrency int           // request workloads: requests in flight
	Duration    time.Duration // request workloads: measured time, after one warm-up request per worker
	Bytes       int64         // download and upload
	Conns       int           // idle
	// Hold is called by the idle workload once Conns connections are open and verified. When it
	// returns, each connection is checked to be still open, then closed.
	Hold func(held int)
}

// Result is what one run measured; every request in it was verified.
type Result struct {
	Workload Workload `json:"workload"`
	Requests int64    `json:"requests"`
	Seconds  float64  `json:"seconds"` // measured time (idle: time to open every connection)
	Bytes    int64    `json:"bytes"`   // payload bytes verified (download, upload)
	P50us    float64  `json:"p50_us"`  // request latency (request workloads)
	P99us    float64  `json:"p99_us"`
	Conns    int      `json:"conns"` // connections held at once (idle)
	Proto    string   `json:"proto"` // HTTP version(s) the responses came in, e.g. "HTTP/2.0"
	// Headers are the distinct response header fields ("Name: value", Date left out), so that the
	// harness can check that no credential came back to the client.
	Headers []string `json:"headers"`
}

// RequestsPerSec is the request rate over the measured time.
func (r Result) RequestsPerSec() float64 { return float64(r.Requests) / r.Seconds }

// MBPerSec is the payload throughput in 10^6 bytes per second.
func (r Result) MBPerSec() float64 { return float64(r.Bytes) / r.Seconds / 1e6 }

// Validate checks a spec before anything is dialed.
func (s Spec) Validate() error {
	if _, err := ParseWorkload(string(s.Workload)); err != nil {
		return err
	}
	if _, port, err := net.SplitHostPort(s.Addr); err != nil || port == "" {
		return fmt.Errorf("addr %q is not host:port", s.Addr)
	}
	if s.Proxy != "" {
		if u, err := url.Parse(s.Proxy); err != nil || u.Scheme != "http" || u.Host == "" {
			return fmt.Errorf("proxy %q is not an http://host:port URL", s.Proxy)
		}
	}
	if s.RootCAs == nil {
		return errors.New("no CA to trust")
	}
	switch s.WantKey {
	case KeyInjected, KeyAgent:
	default:
		return fmt.Errorf("want key %q: must be %q or %q", s.WantKey, KeyInjected, KeyAgent)
	}
	switch s.Workload {
	case NewConn, KeepAliveH1, KeepAliveH2:
		if s.Concurrency < 1 || s.Duration <= 0 {
			return fmt.Errorf("%s needs a concurrency ≥ 1 and a positive duration", s.Workload)
		}
	case Download, Upload:
		if s.Bytes < 1 {
			return fmt.Errorf("%s needs a size ≥ 1 byte", s.Workload)
		}
	case Idle:
		if s.Conns < 1 || s.Hold == nil {
			return errors.New("idle needs conns ≥ 1 and a Hold function")
		}
	}
	return nil
}

// Run runs the workload and returns what it measured. The first wrong response — a status other
// than 200, a body that is not the payload, a key the upstream should not have seen — ends the
// run with an error.
func Run(ctx context.Context, s Spec) (Result, error) {
	if err := s.Validate(); err != nil {
		return Result{}, err
	}
	switch s.Workload {
	case NewConn:
		tr := s.transport(false)
		tr.DisableKeepAlives = true
		return s.runRequests(ctx, tr)
	case KeepAliveH1:
		return s.runRequests(ctx, s.transport(false))
	case KeepAliveH2:
		return s.runRequests(ctx, s.transport(true))
	case Download, Upload:
		return s.runTransfer(ctx)
	default:
		return s.runIdle(ctx)
	}
}

// host is Addr's name; authority is what goes in URLs and Host headers (the port left out when it
// is https's default).
func (s Spec) host() string {
	h, _, _ := net.SplitHostPort(s.Addr)
	return h
}

func (s Spec) authority() string {
	if _, port, _ := net.SplitHostPort(s.Addr); port == "443" {
		return s.host()
	}
	return s.Addr
}

func (s Spec) url(path string) string { return "https://" + s.authority() + path }

func (s Spec) dialAddr(addr string) string {
	if s.Dial != "" && addr == s.Addr {
		return s.Dial
	}
	return addr
}

// transport is an http.Transport that trusts RootCAs only, dials Dial for Addr, goes through Proxy
// when set, and offers HTTP/2 only when h2 is set. Its connections are limited to Concurrency.
func (s Spec) transport(h2 bool) *http.Transport {
	d := &net.Dialer{Timeout: 10 * time.Second}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: s.RootCAs},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return d.DialContext(ctx, network, s.dialAddr(addr))
		},
		TLSHandshakeTimeout: 10 * time.Second,
		MaxConnsPerHost:     max(s.Concurrency, 1),
		MaxIdleConnsPerHost: max(s.Concurrency, 1),
		DisableCompression:  true,
		// Large buffers so that bulk bodies go out in full TLS records, not 4 KiB ones.
		WriteBufferSize: 64 << 10,
		ReadBufferSize:  64 << 10,
		Protocols:       new(http.Protocols),
	}
	tr.Protocols.SetHTTP1(true)
	tr.Protocols.SetHTTP2(h2)
	if s.Proxy != "" {
		u, _ := url.Parse(s.Proxy) // checked by Validate
		tr.Proxy = http.ProxyURL(u)
	}
	return tr
}

// observer collects what one worker saw: latencies, protocols, header fields.
type observer struct {
	lat     []time.Duration
	protos  map[string]bool
	headers map[string]map[string]bool
	buf     []byte
}

// maxHeaderValues bounds how many distinct values of one header field an observer keeps.
const maxHeaderValues = 16

func newObserver() *observer {
	return &observer{protos: map[string]bool{}, headers: map[string]map[string]bool{}, buf: make([]byte, SmallSize+1)}
}

// check verifies a response's status and the key the upstream saw, and notes its protocol and
// header fields.
func (o *observer) check(resp *http.Response, want KeySeen) error {
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("status %s: %q", resp.Status, b)
	}
	if got := KeySeen(resp.Header.Get(KeySeenHeader)); got != want {
		return fmt.Errorf("the upstream saw key %q, want %q", got, want)
	}
	o.protos[resp.Proto] = true
	for k, vs := range resp.Header {
		if k == "Date" {
			continue
		}
		seen := o.headers[k]
		if seen == nil {
			seen = map[string]bool{}
			o.headers[k] = seen
		}
		for _, v := range vs {
			if !seen[v] && len(seen) < maxHeaderValues {
				seen[v] = true
			}
		}
	}
	return nil
}

// readSmall reads and verifies a small body.
func (o *observer) readSmall(body io.Reader) error {
	n, err := io.ReadFull(body, o.buf)
	switch {
	case err == nil:
		return fmt.Errorf("body longer than %d bytes", SmallSize)
	case !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF):
		return fmt.Errorf("reading the body: %w after %d bytes", err, n)
	case n != SmallSize || !bytes.Equal(o.buf[:n], SmallBody):
		return fmt.Errorf("body is not the payload (%d bytes)", n)
	}
	return nil
}

func (o *observer) merge(into *observer) {
	into.lat = append(into.lat, o.lat...)
	for p := range o.protos {
		into.protos[p] = true
	}
	for k, vs := range o.headers {
		if into.headers[k] == nil {
			into.headers[k] = map[string]bool{}
		}
		for v := range vs {
			into.headers[k][v] = true
		}
	}
}

// fill sets the result fields that come from observations.
func (o *observer) fill(r *Result) {
	r.Proto = strings.Join(slices.Sorted(maps.Keys(o.protos)), "+")
	for k, vs := range o.headers {
		for v := range vs {
			r.Headers = append(r.Headers, k+": "+v)
		}
	}
	sort.Strings(r.Headers)
	if len(o.lat) > 0 {
		slices.Sort(o.lat)
		r.P50us = micros(percentile(o.lat, 50))
		r.P99us = micros(percentile(o.lat, 99))
	}
}

// percentile is the nearest-rank p-th percentile of sorted.
func percentile(sorted []time.Duration, p int) time.Duration {
	i := (len(sorted)*p + 99) / 100
	return sorted[max(i-1, 0)]
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// smallGET sends one small GET with the decoy key and verifies the answer.
func (s Spec) smallGET(ctx context.Context, c *http.Client, o *observer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url(PathSmall), nil)
	if err != nil {
		return err
	}
	req.Header.Set(KeyHeader, DecoyKey)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := o.check(resp, s.WantKey); err != nil {
		return err
	}
	return o.readSmall(resp.Body)
}

// runRequests runs Concurrency workers that send small GETs back to back for Duration, after one
// warm-up request each (connections, leaf certificates, caches), and stops at the first error.
func (s Spec) runRequests(ctx context.Context, tr *http.Transport) (Result, error) {
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	obs := make([]*observer, s.Concurrency)
	for i := range obs {
		obs[i] = newObserver()
	}
	err := parallel(ctx, s.Concurrency, func(ctx context.Context, i int) error {
		if err := s.smallGET(ctx, client, obs[i]); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
		return nil
	})
	if err != nil {
		return Result{}, err
	}
	start := time.Now()
	end := start.Add(s.Duration)
	err = parallel(ctx, s.Concurrency, func(ctx context.Context, i int) error {
		o := obs[i]
		for time.Now().Before(end) {
			t0 := time.Now()
			if err := s.smallGET(ctx, client, o); err != nil {
				return fmt.Errorf("request %d of worker %d: %w", len(o.lat)+1, i, err)
			}
			o.lat = append(o.lat, time.Since(t0))
		}
		return nil
	})
	elapsed := time.Since(start)
	if err != nil {
		return Result{}, err
	}
	all := newObserver()
	for _, o := range obs {
		o.merge(all)
	}
	r := Result{Workload: s.Workload, Requests: int64(len(all.lat)), Seconds: elapsed.Seconds()}
	all.fill(&r)
	return r, nil
}

// parallel runs f(ctx, 0…n-1) in n goroutines and returns the first error. That error cancels
// the ctx the others run with, so failures it causes cannot be mistaken for it.
func parallel(ctx context.Context, n int, f func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var once sync.Once
	var first error
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if err := f(ctx, i); err != nil {
				once.Do(func() {
					first = err
					cancel()
				})
			}
		})
	}
	wg.Wait()
	return first
}

// runTransfer moves Bytes payload bytes in one request on one connection — the response body of
// a download, verified here; the request body of an upload, verified by the upstream, which
// reports the count — timed from the request to the last byte.
func (s Spec) runTransfer(ctx context.Context) (Result, error) {
	tr := s.transport(false)
	defer tr.CloseIdleConnections()
	method, path, body := http.MethodGet, PathDownload, io.Reader(nil)
	if s.Workload == Upload {
		method, path, body = http.MethodPost, PathUpload, Payload(s.Bytes)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.url(path+"?bytes="+strconv.FormatInt(s.Bytes, 10)), body)
	if err != nil {
		return Result{}, err
	}
	if body != nil {
		req.ContentLength = s.Bytes
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	req.Header.Set(KeyHeader, DecoyKey)
	o := newObserver()
	start := time.Now()
	moved, err := s.transfer(tr, req, o)
	elapsed := time.Since(start)
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", s.Workload, err)
	}
	r := Result{Workload: s.Workload, Requests: 1, Bytes: moved, Seconds: elapsed.Seconds()}
	o.fill(&r)
	return r, nil
}

// transfer sends req and returns how many payload bytes were verified: read here for a download,
// as the upstream reports them for an upload.
func (s Spec) transfer(tr *http.Transport, req *http.Request, o *observer) (int64, error) {
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if err := o.check(resp, s.WantKey); err != nil {
		return 0, err
	}
	var moved int64
	if s.Workload == Download {
		var v Verifier
		if _, err := io.CopyBuffer(&v, resp.Body, make([]byte, 256<<10)); err != nil {
			return 0, fmt.Errorf("%w after %d of %d bytes", err, v.Count(), s.Bytes)
		}
		moved = v.Count()
	} else {
		var rep UploadReport
		if err := json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&rep); err != nil {
			return 0, fmt.Errorf("the upstream's report: %w", err)
		}
		moved = rep.Bytes
	}
	if moved != s.Bytes {
		return 0, fmt.Errorf("%d bytes arrived, want %d", moved, s.Bytes)
	}
	return moved, nil
}
