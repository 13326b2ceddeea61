package policies

import (
	"fmt"
	"strings"
)

// Observed is one decision as an audit record kept it, for Suggester and Replayer: the intent
// (with the kernel-attested attribution), and what was decided. The sidecar's judge reads it from
// the record; this package knows nothing of the log.
type Observed struct {
	// Where names the record for people ("audit.jsonl:12"); Seq is its place in the chain.
	Where string
	Seq   uint64
	// Request is the intent as recorded: agent, session, method, host, port, path, transport, time
	// and attribution. Its Content holds what the record carries of the request (see Carried); its
	// Capability is nil, so Stage 1 never runs on an observed intent.
	Request Request
	Carried Carried
	// ActionClass is the class the rules in force gave the intent ("" when none did); Provider the
	// provider their rule named.
	ActionClass string
	Provider    string
	// Outcome, Reason and Policies are the recorded decision. In monitor mode (Enforced false)
	// Outcome is what enforce mode would have done, and the flow went ahead whatever it says.
	Outcome  Outcome
	Reason   string
	Policies []string
	Enforced bool
}

// Carried says which request content an audit record carries. What a record does not carry, a
// replayed decision cannot read: Replayer reports the decisions whose policies would read it
// instead of judging them without it.
type Carried struct {
	Query       bool // Request.Path carries the request's query (secret values redacted)
	BodySize    bool // Request.Content.BodySize is the size of the body as sent
	ContentType bool // Request.Content.Header holds the request's Content-Type
}

// Describe renders the intent for people: "GET https://api.example.com/v1/items",
// "TLS api.example.com:443", "TCP db.example.com:5432", "DNS api.example.com". A name that cannot
// be normalized is shown as recorded, quoted.
func (o *Observed) Describe() string {
	n, err := normalize(&o.Request)
	if err != nil {
		return fmt.Sprintf("%s %q", o.Request.Method, o.Request.Host)
	}
	return describe(&n)
}

func describe(n *normalized) string {
	switch n.kind {
	case intentDNS:
		return "DNS " + n.host
	case intentConnect:
		proto := "TLS"
		if n.transport == "tcp" {
			proto = "TCP"
		}
		return proto + " " + joinHostPort(n.host, n.port)
	}
	scheme := "https"
	if n.transport == "http" {
		scheme = "http"
	}
	host := n.host
	if n.port != 0 && n.port != defaultPort(n.kind, scheme) {
		host = joinHostPort(n.host, n.port)
	} else if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return n.method + " " + scheme + "://" + host + n.path
}

// joinHostPort is host:port, with an IPv6 literal bracketed.
func joinHostPort(host string, port int) string {
	if strings.Contains(host, ":") {
		return fmt.Sprintf("[%s]:%d", host, port)
	}
	return fmt.Sprintf("%s:%d", host, port)
}
