// Command httpclient is the Go client that firma's end-to-end tests run inside an enforced cgroup.
// It fetches URLs in order over one keep-alive client and prints "STATUS body" per URL. It trusts
// the CA in -cacert, or whatever the system trust (and SSL_CERT_FILE) says.
//
//	httpclient [-cacert F] [-resolve host:port:addr] [-split N -delay D] URL…
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	cacert := flag.String("cacert", "", "PEM file of CAs to trust instead of the system's")
	resolve := flag.String("resolve", "", "host:port:addr, like curl --resolve")
	split := flag.Int("split", 0, "write at most N bytes per TCP segment (0 = no limit)")
	delay := flag.Duration("delay", 20*time.Millisecond, "pause between split writes")
	flag.Parse()

	tlsCfg := &tls.Config{}
	if *cacert != "" {
		pem, err := os.ReadFile(*cacert)
		if err != nil {
			fail(err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			fail(fmt.Errorf("no certificates in %s", *cacert))
		}
		tlsCfg.RootCAs = pool
	}
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	tr := &http.Transport{
		Proxy:           nil,
		TLSClientConfig: tlsCfg,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if *resolve != "" {
				parts := strings.SplitN(*resolve, ":", 3)
				if len(parts) == 3 && net.JoinHostPort(parts[0], parts[1]) == addr {
					addr = net.JoinHostPort(strings.Trim(parts[2], "[]"), parts[1])
				}
			}
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil || *split == 0 {
				return c, err
			}
			c.(*net.TCPConn).SetNoDelay(true)
			return &splitConn{Conn: c, n: *split, delay: *delay}, nil
		},
	}
	client := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	code := 0
	for _, u := range flag.Args() {
		resp, err := client.Get(u)
		if err != nil {
			fmt.Printf("ERROR %v\n", err)
			code = 1
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Printf("%d %s\n", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	os.Exit(code)
}

// splitConn sends each write in small segments, as a slow or hostile client might.
type splitConn struct {
	net.Conn
	n     int
	delay time.Duration
}

func (c *splitConn) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		k := min(c.n, len(p))
		n, err := c.Conn.Write(p[:k])
		written += n
		if err != nil {
			return written, err
		}
		p = p[k:]
		time.Sleep(c.delay)
	}
	return written, nil
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(2)
}
