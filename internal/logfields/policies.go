package logfields

// Field names of the policies package.
const (
	PolicySource = "policy_source" // "embedded", "authority bundle" or the policy dir
	Rules        = "rules_path"
	Errors       = "errors"
)
