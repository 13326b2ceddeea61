package load

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// HeldLine is what the load generator prints when its idle connections are open, before it
// waits for the harness to measure.
type HeldLine struct {
	Held int `json:"held"`
}

// openers is how many idle connections are being opened at once: enough to keep every process
// busy even where each connection waits on timers (Nagle, delayed ACKs), few enough not to
// overflow a listener's accept queue.
const openers = 32

// runIdle opens Conns connections, verifies one small GET on each, hands them to Hold, then checks
// that every one is still open before closing them all. The first connection is opened alone, as
// the request workloads warm up, so that a cold system (leaf certificates, pools) is not also met
// with a burst.
func (s Spec) runIdle(ctx context.Context) (Result, error) {
	conns := make([]*tls.Conn, s.Conns)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	obs := make([]*observer, openers)
	for i := range obs {
		obs[i] = newObserver()
	}
	var next, held atomic.Int64
	start := time.Now()
	c, err := s.openIdle(ctx, obs[0])
	if err != nil {
		return Result{Workload: Idle}, fmt.Errorf("idle: the first connection: %w", err)
	}
	conns[0] = c
	next.Store(1)
	held.Store(1)
	err = parallel(ctx, openers, func(ctx context.Context, w int) error {
		for {
			i := int(next.Add(1) - 1)
			if i >= s.Conns {
				return nil
			}
			c, err := s.openIdle(ctx, obs[w])
			if err != nil {
				return err
			}
			conns[i] = c
			held.Add(1)
		}
	})
	elapsed := time.Since(start)
	if err != nil {
		return Result{Workload: Idle, Conns: int(held.Load())}, fmt.Errorf("idle: %d of %d connections open, then: %w", held.Load(), s.Conns, err)
	}
	s.Hold(s.Conns)
	if closed := countClosed(conns); closed > 0 {
		return Result{Workload: Idle, Conns: s.Conns - closed}, fmt.Errorf("idle: %d of %d connections were closed by the other side while held", closed, s.Conns)
	}
	all := newObserver()
	for _, o := range obs {
		o.merge(all)
	}
	r := Result{Workload: Idle, Requests: int64(s.Conns), Conns: s.Conns, Seconds: elapsed.Seconds()}
	all.fill(&r)
	return r, nil
}

// openIdle opens one connection (through the proxy when there is one), completes the TLS
// handshake offering HTTP/1.1 only, and verifies one small GET on it.
func (s Spec) openIdle(ctx context.Context, o *observer) (*tls.Conn, error) {
	d := &net.Dialer{Timeout: 10 * time.Second}
	var raw net.Conn
	var err error
	if s.Proxy != "" {
		raw, err = s.dialViaProxy(ctx, d)
	} else {
		raw, err = d.DialContext(ctx, "tcp", s.dialAddr(s.Addr))
	}
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, &tls.Config{RootCAs: s.RootCAs, ServerName: s.host(), NextProtos: []string{"http/1.1"}})
	if err := s.verifyIdle(ctx, c, o); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (s Spec) verifyIdle(ctx context.Context, c *tls.Conn, o *observer) error {
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := c.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\n%s: %s\r\n\r\n", PathSmall, s.authority(), KeyHeader, DecoyKey); err != nil {
		return err
	}
	br := bufio.NewReaderSize(c, 1024)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return fmt.Errorf("reading the response: %w", err)
	}
	defer resp.Body.Close()
	if err := o.check(resp, s.WantKey); err != nil {
		return err
	}
	if err := o.readSmall(resp.Body); err != nil {
		return err
	}
	if br.Buffered() > 0 {
		return fmt.Errorf("%d unexpected bytes after the response", br.Buffered())
	}
	return c.SetDeadline(time.Time{})
}

// dialViaProxy opens a CONNECT tunnel to Addr through Proxy.
func (s Spec) dialViaProxy(ctx context.Context, d *net.Dialer) (net.Conn, error) {
	u, _ := url.Parse(s.Proxy) // checked by Validate
	c, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	req := &http.Request{Method: http.MethodConnect, URL: &url.URL{Opaque: s.Addr}, Host: s.Addr, Header: http.Header{}}
	br := bufio.NewReaderSize(c, 1024)
	err = req.Write(c)
	var resp *http.Response
	if err == nil {
		resp, err = http.ReadResponse(br, req)
	}
	switch {
	case err != nil:
		err = fmt.Errorf("CONNECT %s via %s: %w", s.Addr, u.Host, err)
	case resp.StatusCode != http.StatusOK:
		err = fmt.Errorf("CONNECT %s via %s: %s", s.Addr, u.Host, resp.Status)
	case br.Buffered() > 0:
		err = fmt.Errorf("CONNECT %s via %s: %d bytes before the tunnel", s.Addr, u.Host, br.Buffered())
	default:
		err = c.SetDeadline(time.Time{})
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// countClosed reads from every connection for a moment: a connection that is still open times
// out; one that returns data, EOF or an alert was closed (or broken) by the other side.
func countClosed(conns []*tls.Conn) int {
	var closed atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(200 * time.Millisecond)
	for _, c := range conns {
		wg.Go(func() {
			c.SetReadDeadline(deadline)
			var b [1]byte
			if _, err := c.Read(b[:]); !errors.Is(err, os.ErrDeadlineExceeded) {
				closed.Add(1)
			}
		})
	}
	wg.Wait()
	return int(closed.Load())
}
