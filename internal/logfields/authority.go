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
