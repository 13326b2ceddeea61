package l7

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/daemon/judge"
	"github.com/openfirma/firma/internal/hostname"
	"github.com/openfirma/firma/internal/logfields"
)

// DialFunc opens an upstream TCP connection to "host:port" on network "tcp". The sidecar passes its
// connector's, which resolves the name itself, refuses addresses an agent must not reach and dials
// exactly the classified address.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// TunnelFunc serves the tunnel a CONNECT request opened on a plain-HTTP or explicit-proxy
// connection: conn is the agent's side (after "200 Connection established"), prefix what the agent
// already sent into the tunnel, host and port the CONNECT target. It is the front end's job: it
// sniffs and judges what flows inside.
type TunnelFunc func(ctx context.Context, conn net.Conn, prefix []byte, f *judge.Flow, host string, port int)

// Injector sets upstream credentials on an allowed request. *credentials.Injector implements it.
type Injector interface {
	// Apply strips the agent's credential headers and sets the sidecar's for host. It returns the
	// names of the headers it set; an error means the request must not be sent.
	Apply(host string, h http.Header) ([]string, error)
}

// Options configure New.
type Options struct {
	Config Config // [sidecar.interceptor.https_mitm], validated
	// CA signs the leaves of intercepted connections; nil when MITM is off (ServeTLS then refuses).
	CA    *CA
	Judge judge.RequestDecider
	Dial  DialFunc
	// RootCAs verifies upstreams; nil = system roots (UpstreamRoots adds [sidecar.upstream] ca_file).
	RootCAs     *x509.CertPool
	Credentials Injector // nil = inject nothing (Proxy-Authorization is still stripped)
	Tunnel      TunnelFunc
	Log         zerolog.Logger
}

// Engine is the sidecar's one HTTP engine. It is safe for concurrent use.
type Engine struct {
	cfg    Config
	hosts  *hostLists
	leaves *leafCache // nil without a CA
	judge  judge.RequestDecider
	bodies *bodyBudget // request bodies buffered for policies, across connections
	creds  Injector
	tunnel TunnelFunc
	log    zerolog.Logger
	now    func() time.Time

	schemes map[string]*upstream // "https", "http"

	mu       sync.Mutex
	fallback map[fallbackKey]time.Time // end of an agent's CONNECT-only period for a host
}

type fallbackKey struct{ agent, host string }

// New builds an Engine. It opens no connection.
func New(o Options) (*Engine, error) {
	switch {
	case o.Judge == nil:
		return nil, errors.New("l7: no judge")
	case o.Dial == nil:
		return nil, errors.New("l7: no dial function")
	case o.Config.Enabled && o.CA == nil:
		return nil, errors.New("l7: https_mitm is enabled without a CA")
	}
	cfg := o.Config
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("https_mitm config: %w", err)
	}
	e := &Engine{
		cfg:      cfg,
		hosts:    cfg.compiled,
		judge:    o.Judge,
		bodies:   &bodyBudget{cap: cfg.BodyBufferBytes},
		creds:    o.Credentials,
		tunnel:   o.Tunnel,
		log:      o.Log,
		now:      time.Now,
		fallback: map[fallbackKey]time.Time{},
	}
	if o.CA != nil {
		e.leaves = newLeafCache(o.CA, cfg.LeafLifetime.Duration, cfg.LeafCacheSize)
	}
	e.schemes = map[string]*upstream{
		"https": newUpstream(e, "https", o.Dial, o.RootCAs),
		"http":  newUpstream(e, "http", o.Dial, nil),
	}
	if cfg.Enabled {
		o.Log.Info().Int(logfields.InterceptHosts, len(e.hosts.intercept)).
			Int(logfields.BypassHosts, len(e.hosts.bypass)).Int(logfields.StrictHosts, len(e.hosts.strict)).
			Str(logfields.Fingerprint, o.CA.Fingerprint()).
			Msgf("https mitm enabled for %d hosts (%d bypass, %d strict)",
				len(e.hosts.intercept), len(e.hosts.bypass), len(e.hosts.strict))
	}
	return e, nil
}

// Close drops idle upstream connections. Connections in flight end with their contexts.
func (e *Engine) Close() error {
	for _, u := range e.schemes {
		u.transport.CloseIdleConnections()
	}
	return nil
}

// Route is how the front end treats a TLS flow of agent f to host: ModeIntercept (call ServeTLS),
// ModeBypass or ModeDefault (CONNECT-only), or ModeFallback (CONNECT-only, audited as a fallback,
// because this agent rejected firma's certificate for this non-strict host recently).
func (e *Engine) Route(f *judge.Flow, host string) Mode {
	m := e.cfg.Mode(host)
	if m == ModeIntercept && e.inFallback(f, host) {
		return ModeFallback
	}
	return m
}

// Intercepted reports whether host is to be TLS-terminated (intercept_hosts and not bypass_hosts),
// whatever fallback is in force: a flow to such a host is never tunnelled unjudged.
func (e *Engine) Intercepted(host string) bool { return e.cfg.Mode(host) == ModeIntercept }

// Strict reports whether host is in strict_hosts.
func (e *Engine) Strict(host string) bool { return e.hosts.strict.Match(host) }

// inFallback reports whether agent f is inside its fallback period for host. Strict hosts never fall
// back.
func (e *Engine) inFallback(f *judge.Flow, host string) bool {
	host = hostname.Normalize(host)
	if e.hosts.strict.Match(host) {
		return false
	}
	k := fallbackKey{f.AgentID, host}
	e.mu.Lock()
	defer e.mu.Unlock()
	until, ok := e.fallback[k]
	if ok && !e.now().Before(until) {
		delete(e.fallback, k)
		return false
	}
	return ok
}

// Stats are counters for metrics and tests.
type Stats struct {
	LeafMints     int64 // leaves signed
	LeafCacheHits int64 // handshakes served from the cache
	LeafCached    int   // leaves currently cached
	// BodyBuffered is the bytes of request bodies buffered for policies right now.
	BodyBuffered int64
}

func (e *Engine) Stats() Stats {
	s := Stats{BodyBuffered: e.bodies.inUse()}
	if e.leaves != nil {
		s.LeafMints, s.LeafCacheHits, s.LeafCached = e.leaves.mints.Load(), e.leaves.hits.Load(), e.leaves.len()
	}
	return s
}
