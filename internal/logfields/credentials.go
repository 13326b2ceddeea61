package logfields

// Field names used by daemon/credentials. No field ever carries a credential value.
const (
	Header = "header" // name of an injected header
	Source = "source" // where a credential comes from: "env:NAME" or "file:PATH"
	Entry  = "entry"  // a config entry, e.g. "credentials[0]"
)
