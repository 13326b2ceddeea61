package logfields

// Field names used by the authority and its sidecar-side client.
const (
	Actions         = "actions"
	ResourceScope   = "resource_scope"
	Expires         = "expires"
	TTLClamped      = "ttl_clamped"
	PreviousTokenID = "previous_token_id"
	LastContact     = "last_contact"
	Feed            = "feed"
	Stale           = "stale"
	Deadline        = "deadline"
)

// Field names for the fleet: authenticated sidecars, TLS, replicas and failover.
const (
	Sidecar     = "sidecar"      // a sidecar's name (client certificate CN or tokens_file entry)
	Scheme      = "scheme"       // http or https
	ClientCerts = "client_certs" // the authority accepts client certificates
	Tokens      = "tokens"       // the authority accepts bearer tokens
	URL         = "url"          // the authority URL a client uses
	Next        = "next"         // the authority URL a client fails over to
	Rejections  = "rejections"   // how many times a reason has been seen
)
