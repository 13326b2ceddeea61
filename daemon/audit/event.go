package audit

import "time"

// Kind tells a decision record from the completion record that later closes it.
type Kind string

const (
	KindDecision   Kind = "decision"
	KindCompletion Kind = "completion"
	// KindLog records are the writer's own: they open each file, mark restarts, recoveries and a
	// clean close. Callers cannot append them.
	KindLog Kind = "log"
)

// Event is one audit line. The writer fills ID (when empty), Seq, Time (when zero), PrevHash and Sig;
// the caller fills the rest. Field names are the stable contract in DESIGN.md.
type Event struct {
	ID         string      `json:"id"`
	Seq        uint64      `json:"seq"`
	Time       time.Time   `json:"time"`
	PrevHash   string      `json:"prev_hash"`
	Kind       Kind        `json:"kind"`
	DecisionID string      `json:"decision_id,omitempty"` // completion records: the decision they close
	Envelope   *Envelope   `json:"envelope,omitempty"`
	Capability *Capability `json:"capability,omitempty"`
	Decision   *Decision   `json:"decision,omitempty"`
	Result     *Result     `json:"result,omitempty"`
	Log        *LogRecord  `json:"log,omitempty"`
	Sig        string      `json:"sig,omitempty"` // must stay the last field: see the package doc
}

type Envelope struct {
	Agent     Agent     `json:"agent"`
	Intent    Intent    `json:"intent"`
	Transport Transport `json:"transport"`
}

// Agent is who made the call, as the kernel attested it at connect time.
type Agent struct {
	AgentID   string `json:"agent_id"`
	SessionID string `json:"session_id"`
	Cgroup    string `json:"cgroup"`
	PID       int    `json:"pid"`
	Exe       string `json:"exe"`
	Comm      string `json:"comm"`
	UID       int    `json:"uid"`
}

type Intent struct {
	ActionClass  *string  `json:"action_class"` // null when unclassified
	Resource     Resource `json:"resource"`
	RawTransport string   `json:"raw_transport"`
}

// Resource: for a CONNECT-level record Host is "name:port" and the rest are empty; a MITM or plain
// HTTP record carries method, path and provider.
type Resource struct {
	Host     string  `json:"host"`
	Path     string  `json:"path,omitempty"`
	Provider *string `json:"provider,omitempty"`
	Method   string  `json:"method,omitempty"`
}

type Transport struct {
	Mode    string `json:"mode"` // connect | mitm | http | tcp | dns
	SNI     string `json:"sni,omitempty"`
	OrigDst string `json:"orig_dst,omitempty"`
	Dialed  string `json:"dialed,omitempty"` // the resolved, classified address the sidecar dialed
}

type Capability struct {
	TokenID string `json:"token_id"`
}

type Decision struct {
	Outcome         string   `json:"outcome"`
	MatchedPolicies []string `json:"matched_policies"`
	Reason          string   `json:"reason"`
}

// Result is what happened after the decision: on a completion record, or on an ABORT decision.
type Result struct {
	BytesUp        int64 `json:"bytes_up"`
	BytesDown      int64 `json:"bytes_down"`
	DurationMS     int64 `json:"duration_ms"`
	UpstreamStatus int   `json:"upstream_status,omitempty"`
	// Injected names the credential headers the sidecar set on the request (never their values).
	Injected []string `json:"injected,omitempty"`
	// Path says how a tunnel's bytes were carried: "offload" (upstream to agent straight into the
	// agent's socket, by the kernel), "splice" (over TCP both ways, never through user space) or
	// "copy" (through a buffer). Absent on HTTP requests.
	Path  string `json:"path,omitempty"`
	Error string `json:"error,omitempty"`
}

// LogRecord is the body of a KindLog record: what happened to the log itself.
type LogRecord struct {
	Event LogEvent `json:"event"`
	// Reason says why a file was opened: "new chain", "rotated (size)", "rotated (signal)",
	// "restart", "reopened (file moved or removed)".
	Reason string `json:"reason,omitempty"`
	// PreviousFile is the base name of the file holding the line this one chains to, when that line
	// is in another file.
	PreviousFile string `json:"previous_file,omitempty"`
	// KeyID is the lowercase hex SHA-256 of the signing key's DER SubjectPublicKeyInfo; "" when the
	// log is unsigned. Every open and resume record carries it.
	KeyID string `json:"key_id,omitempty"`
	// Recovered: when the log first failed, how many records were refused since, the first error.
	Since   *time.Time `json:"since,omitempty"`
	Refused int64      `json:"refused,omitempty"`
	Error   string     `json:"error,omitempty"`
	// Resume after a crash: the incomplete tail that was cut off the file, and where it was saved.
	TornBytes   int64  `json:"torn_bytes,omitempty"`
	TornSavedTo string `json:"torn_saved_to,omitempty"`
}

// LogEvent names a KindLog record.
type LogEvent string

const (
	LogOpen      LogEvent = "open"      // the first line of every file
	LogResume    LogEvent = "resume"    // a writer continued an existing file
	LogRecovered LogEvent = "recovered" // writes succeed again after failures
	LogClose     LogEvent = "close"     // the writer closed cleanly
)
