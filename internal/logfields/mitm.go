package logfields

// Field names used by daemon/mitm (the HTTPS interceptor and its CA).
const (
	ALPN           = "alpn"            // ALPN protocols a client offered, or the one negotiated
	Protocol       = "proto"           // HTTP protocol of a request: HTTP/1.1, HTTP/2.0
	Strict         = "strict"          // the host is in strict_hosts
	FallbackUntil  = "fallback_until"  // a host tunnels CONNECT-only until then after a failed MITM handshake
	UpstreamStatus = "upstream_status" // HTTP status the upstream answered
	Upstream       = "upstream"        // address of the upstream connection a request used
	ErrorClass     = "error_class"     // e.g. connector_network_error
	Error          = "error"
	InterceptHosts = "intercept_hosts" // how many patterns a list holds
	BypassHosts    = "bypass_hosts"
	StrictHosts    = "strict_hosts"
)
