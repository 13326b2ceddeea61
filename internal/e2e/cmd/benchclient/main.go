// Command benchclient measures what an agent sees: it is run inside an enforced cgroup and outside
// it, against the same upstream, by firma's benchmarks.
//
//	benchclient -mode conn -n N -cacert F URL   new TCP+TLS connection and one GET per iteration
//	benchclient -mode bulk -n N -cacert F URL   one keep-alive connection, N GETs of a large body
//	benchclient -mode stream -n N -cacert F HOST:PORT
//	                                            one TLS connection: writes N bytes of a pattern while
//	                                            reading N bytes back, which must be the same pattern
//
// It prints one line: "<mode> n=<N> p50_us=<…> p99_us=<…> mbps=<…>" (stream: "stream n=<N> mbps=<…>",
// the rate of the two directions together).
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"time"
)

func main() {
	mode := flag.String("mode", "conn", "conn or bulk")
	n := flag.Int("n", 100, "iterations")
	cacert := flag.String("cacert", "", "CA bundle")
	flag.Parse()
	pem, err := os.ReadFile(*cacert)
	if err != nil {
		fail(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	if *mode == "stream" {
		stream(pool, flag.Arg(0), int64(*n))
		return
	}
	tr := &http.Transport{Proxy: nil, TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: *mode == "conn"}
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	url := flag.Arg(0)
	lat := make([]time.Duration, 0, *n)
	var bytes int64
	start := time.Now()
	for i := 0; i < *n; i++ {
		t0 := time.Now()
		resp, err := client.Get(url)
		if err != nil {
			fail(err)
		}
		m, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			fail(fmt.Errorf("status %d: %v", resp.StatusCode, err))
		}
		bytes += m
		lat = append(lat, time.Since(t0))
	}
	total := time.Since(start)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	fmt.Printf("%s n=%d p50_us=%.1f p99_us=%.1f mbps=%.1f\n", *mode, *n,
		us(lat[len(lat)/2]), us(lat[len(lat)*99/100]), float64(bytes)/total.Seconds()/1e6)
}

// stream sends n bytes of a pattern to addr over TLS while it reads n bytes back, and checks them.
func stream(pool *x509.CertPool, addr string, n int64) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		fail(err)
	}
	start := time.Now()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: host})
	if err != nil {
		fail(err)
	}
	defer conn.Close()
	werr := make(chan error, 1)
	go func() {
		_, err := io.Copy(conn, io.LimitReader(pattern{}, n))
		if err == nil {
			err = conn.CloseWrite()
		}
		werr <- err
	}()
	got, err := io.Copy(checker{}, conn)
	if err != nil {
		fail(fmt.Errorf("reading after %d bytes: %w", got, err))
	}
	if got != n {
		fail(fmt.Errorf("read %d bytes, want %d", got, n))
	}
	if err := <-werr; err != nil {
		fail(fmt.Errorf("writing: %w", err))
	}
	fmt.Printf("stream n=%d mbps=%.1f\n", n, float64(2*n)/time.Since(start).Seconds()/1e6)
}

// pattern reads as the bytes 0, 1, …, 250, 0, 1, … (251 is prime: no chunk size lines up with it).
type pattern struct{}

var patternOff int64

func (pattern) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(patternOff % 251)
		patternOff++
	}
	return len(p), nil
}

// checker fails the run at the first byte that is not the pattern's.
type checker struct{}

var checkOff int64

func (checker) Write(p []byte) (int, error) {
	for i, b := range p {
		if b != byte(checkOff%251) {
			return i, fmt.Errorf("byte %d is %d, want %d", checkOff, b, checkOff%251)
		}
		checkOff++
	}
	return len(p), nil
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
