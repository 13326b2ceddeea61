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
	// Content summarizes what an HTTP request carried (MITM and plain HTTP records only).
	Content *Content `json:"content,omitempty"`
	// Git is set on a git smart-HTTP request to a [sidecar.policy.git] host.
	Git *Git `json:"git,omitempty"`
}

// Resource: for a CONNECT-level record Host is "name:port" and the rest are empty; a MITM or plain
// HTTP record carries method, path (normalized, without the query), query and provider; a DNS
// record the name and the query type as the method. Port is the intent's port in every mode (a MITM
// or plain HTTP record's host has none), so that `firma policy replay` can judge the intent again as
// it was.
type Resource struct {
	Host string `json:"host"`
	Path string `json:"path,omitempty"`
	// Query is the request's raw query with the value of every parameter whose name says it
	// carries a credential replaced by REDACTED (policies.RedactQuery). Policies saw it unredacted.
	Query    string  `json:"query,omitempty"`
	Provider *string `json:"provider,omitempty"`
	Method   string  `json:"method,omitempty"`
	Port     int     `json:"port,omitempty"`
}

// Content is what an HTTP request carried, as far as the decision knew it. Header values are never
// recorded: they may hold credentials.
type Content struct {
	ContentType string `json:"content_type,omitempty"` // media type, lowercased, no parameters
	// BodySize is the body's length as sent: Content-Length, or what was counted while buffering it;
	// 0 without a body, -1 when unknown (chunked and not buffered: the completion's bytes_up says).
	BodySize int64 `json:"body_size"`
	// BodyBuffered: a policy read the body, so it was buffered before the decision.
	BodyBuffered bool `json:"body_buffered,omitempty"`
	// BodyTruncated: the body was longer than max_body_bytes; only that much was inspected.
	BodyTruncated bool `json:"body_truncated,omitempty"`
}

// MaxGitUpdates bounds the ref updates a record lists; UpdatesTotal then says how many there were.
const MaxGitUpdates = 64

// Git is a git smart-HTTP request: the repository and, for a push, what it changes.
type Git struct {
	Service string `json:"service"` // git-upload-pack (clone, fetch) or git-receive-pack (push)
	Owner   string `json:"owner"`
	Repo    string `json:"repo"`
	// Updates are a push's ref updates in the order sent, at most MaxGitUpdates of them.
	Updates []RefUpdate `json:"updates,omitempty"`
	// UpdatesTotal is the number of ref updates when Updates had to leave some out; 0 otherwise.
	UpdatesTotal int `json:"updates_total,omitempty"`
	// PackProblem says why the pushed pack proved nothing (a thin or truncated pack): every update
	// of an existing ref then counts as a force update.
	PackProblem string `json:"pack_problem,omitempty"`
}

// RefUpdate is one command of a push.
type RefUpdate struct {
	Ref    string `json:"ref"`
	Old    string `json:"old"`
	New    string `json:"new"`
	Create bool   `json:"create,omitempty"`
	Delete bool   `json:"delete,omitempty"`
	// Force: an update of an existing ref that the pack does not prove a fast-forward.
	Force     bool `json:"force,omitempty"`
	Protected bool `json:"protected,omitempty"` // a [sidecar.policy.git] protected branch
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
	// Outcome is ALLOW, DENY, PASSTHROUGH, MODIFY (allowed once modified), DEFER (429, retry
	// later), STEP_UP (refused until a human approves) or, on a completion, ABORT.
	Outcome         string   `json:"outcome"`
	MatchedPolicies []string `json:"matched_policies"`
	Reason          string   `json:"reason"`
	// Enforced is false on every decision about an agent in monitor mode: Outcome is what enforce
	// mode would have done, and the flow proceeded whatever it says. Absent (true) otherwise.
	Enforced *bool `json:"enforced,omitempty"`
	// SidecarRefusal: the sidecar refused by itself (an unknown agent, a malformed request, a stale
	// policy bundle, a kernel refusal…) without asking the policy. Such a decision says nothing about
	// the policy, so `firma policy replay` and `suggest` leave it out.
	SidecarRefusal bool `json:"sidecar_refusal,omitempty"`
	// Fields are the context and resource attributes the determining policies read
	// ("context.json.model", "resource.path"): what decided.
	Fields []string `json:"fields,omitempty"`
	// Remediation is what a MODIFY, DEFER or STEP_UP decision asked of the sidecar.
	Remediation *Remediation `json:"remediation,omitempty"`
}

// Remediation is a remediation annotation's effect (@modify, @defer, @step_up).
type Remediation struct {
	Kind          string   `json:"kind"`                     // modify | defer | step_up
	RedactHeaders []string `json:"redact_headers,omitempty"` // modify: headers removed before forwarding
	RetryAfterMS  int64    `json:"retry_after_ms,omitempty"` // defer: how long the agent was told to wait
	Challenge     string   `json:"challenge,omitempty"`      // step_up: what the agent was told to show its user
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
	// Suppressed: when the first suppressed record came.
	Since   *time.Time `json:"since,omitempty"`
	Refused int64      `json:"refused,omitempty"`
	Error   string     `json:"error,omitempty"`
	// Resume after a crash: the incomplete tail that was cut off the file, and where it was saved.
	TornBytes   int64  `json:"torn_bytes,omitempty"`
	TornSavedTo string `json:"torn_saved_to,omitempty"`
	// Suppressed: how many records of Class by AgentID were kept out of the log by the refusal
	// rate limit, the first at Since and the last at Until.
	AgentID    string     `json:"agent_id,omitempty"`
	Class      string     `json:"class,omitempty"`
	Suppressed int64      `json:"suppressed,omitempty"`
	Until      *time.Time `json:"until,omitempty"`
}

// LogEvent names a KindLog record.
type LogEvent string

const (
	LogOpen      LogEvent = "open"      // the first line of every file
	LogResume    LogEvent = "resume"    // a writer continued an existing file
	LogRecovered LogEvent = "recovered" // writes succeed again after failures
	LogClose     LogEvent = "close"     // the writer closed cleanly
	// LogSuppressed counts records that the refusal rate limit kept out of the log.
	LogSuppressed LogEvent = "suppressed"
)
