package mitm

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"time"

	"github.com/openfirma/firma/internal/logfields"
)

// newTransport is the upstream pool: one http.Transport shared by every agent connection, so that
// requests to one host reuse verified TLS connections (HTTP/2 multiplexed when the upstream offers
// it). It dials only through dial and only when a request that Decide allowed needs a connection;
// it never uses proxy variables.
func newTransport(cfg *Config, dial DialFunc, roots *x509.CertPool) *http.Transport {
	return &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			host, p, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			port, err := strconv.Atoi(p)
			if err != nil {
				return nil, fmt.Errorf("upstream port %q: %w", p, err)
			}
			return dial(ctx, host, port)
		},
		// ServerName is taken from the request URL: the connection's host, never the agent's IP.
		TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:     true,
		MaxConnsPerHost:       cfg.UpstreamMaxConnsPerHost,
		MaxIdleConnsPerHost:   cfg.UpstreamMaxIdlePerHost,
		IdleConnTimeout:       cfg.UpstreamIdleTimeout.Duration,
		TLSHandshakeTimeout:   cfg.UpstreamTLSTimeout.Duration,
		ResponseHeaderTimeout: cfg.UpstreamResponseTimeout.Duration,
		ExpectContinueTimeout: time.Second,
		// Pass Accept-Encoding and compressed bodies through untouched.
		DisableCompression: true,
	}
}

// newReverseProxy forwards an allowed request to https://<connection host>:<port>, whatever URL
// form the agent used. Hop-by-hop headers are dropped and no X-Forwarded-* header is added.
func (i *Interceptor) newReverseProxy() *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			meta, _ := MetaFromContext(pr.In.Context())
			hostport := net.JoinHostPort(meta.Host, strconv.Itoa(meta.Port))
			pr.Out.URL.Scheme = "https"
			pr.Out.URL.Host = hostport
			pr.Out.Host = hostport
			if meta.Port == 443 {
				pr.Out.Host = bracketed(meta.Host)
			}
		},
		Transport:      i.transport,
		ModifyResponse: modifyResponse,
		ErrorHandler:   i.proxyError,
		ErrorLog:       log.New(debugWriter{i.log.With().Str(logfields.Component, "mitm-proxy").Logger()}, "", 0),
	}
}

// bracketed puts an IPv6 literal in brackets, as a Host header needs.
func bracketed(host string) string {
	if h := net.JoinHostPort(host, "0"); h[0] == '[' {
		return h[:len(h)-2]
	}
	return host
}
