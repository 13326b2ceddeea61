package l7

import (
	"container/list"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// leafBackdate covers clock skew between the sidecar and the agent's view of "now".
	leafBackdate    = time.Hour
	maxLeafLifetime = 30 * 24 * time.Hour
)

// leafCache mints one leaf per name and keeps the most recently used ones, so that repeated
// handshakes cost no signing. Concurrent requests for one name sign once.
type leafCache struct {
	ca       *CA
	lifetime time.Duration
	size     int
	now      func() time.Time

	mu       sync.Mutex
	lru      *list.List               // of *leafEntry, most recently used first
	items    map[string]*list.Element // name → element of lru
	inflight map[string]*mintCall

	mints, hits atomic.Int64
}

type leafEntry struct {
	name  string
	cert  *tls.Certificate
	renew time.Time // mint a fresh leaf from then on
}

type mintCall struct {
	done chan struct{}
	cert *tls.Certificate
	err  error
}

func newLeafCache(ca *CA, lifetime time.Duration, size int) *leafCache {
	return &leafCache{
		ca: ca, lifetime: lifetime, size: size, now: time.Now,
		lru: list.New(), items: map[string]*list.Element{}, inflight: map[string]*mintCall{},
	}
}

// get returns the leaf for name (a normalized host name or IP literal).
func (c *leafCache) get(name string) (*tls.Certificate, error) {
	now := c.now()
	c.mu.Lock()
	if el, ok := c.items[name]; ok {
		e := el.Value.(*leafEntry)
		if now.Before(e.renew) {
			c.lru.MoveToFront(el)
			c.mu.Unlock()
			c.hits.Add(1)
			return e.cert, nil
		}
	}
	if call, ok := c.inflight[name]; ok {
		c.mu.Unlock()
		<-call.done
		return call.cert, call.err
	}
	call := &mintCall{done: make(chan struct{})}
	c.inflight[name] = call
	c.mu.Unlock()

	call.cert, call.err = c.ca.mintLeaf(name, now, c.lifetime)
	c.mints.Add(1)

	c.mu.Lock()
	delete(c.inflight, name)
	if call.err == nil {
		c.put(name, call.cert, now.Add(c.lifetime*3/4))
	}
	c.mu.Unlock()
	close(call.done)
	return call.cert, call.err
}

// put stores a leaf and evicts the least recently used beyond size. c.mu is held.
func (c *leafCache) put(name string, cert *tls.Certificate, renew time.Time) {
	if el, ok := c.items[name]; ok {
		el.Value = &leafEntry{name: name, cert: cert, renew: renew}
		c.lru.MoveToFront(el)
		return
	}
	c.items[name] = c.lru.PushFront(&leafEntry{name: name, cert: cert, renew: renew})
	for c.lru.Len() > c.size {
		oldest := c.lru.Back()
		c.lru.Remove(oldest)
		delete(c.items, oldest.Value.(*leafEntry).name)
	}
}

func (c *leafCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// mintLeaf signs an ECDSA P-256 server certificate for name: a DNS SAN, or an IP SAN for an IP
// literal. It never outlives the CA.
func (ca *CA) mintLeaf(name string, now time.Time, lifetime time.Duration) (*tls.Certificate, error) {
	if name == "" {
		return nil, fmt.Errorf("minting leaf: empty name")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("minting leaf for %s: %w", name, err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("minting leaf for %s: %w", name, err)
	}
	notAfter := now.Add(lifetime)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name, Organization: []string{"firma"}},
		NotBefore:    now.Add(-leafBackdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip, err := netip.ParseAddr(name); err == nil {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip.AsSlice())
	} else {
		tmpl.DNSNames = append(tmpl.DNSNames, name)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("minting leaf for %s: %w", name, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("minting leaf for %s: %w", name, err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}
