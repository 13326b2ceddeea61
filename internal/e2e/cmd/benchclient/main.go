// Command benchclient measures what an agent sees: it is run inside an enforced cgroup and outside
// it, against the same upstream, by firma's benchmarks.
//
//	benchclient -mode conn -n N -cacert F URL   new TCP+TLS connection and one GET per iteration
//	benchclient -mode bulk -n N -cacert F URL   one keep-alive connection, N GETs of a large body
//
// It prints one line: "<mode> n=<N> p50_us=<…> p99_us=<…> mbps=<…>".
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
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

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
