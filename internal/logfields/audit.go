package logfields

// Field names of the audit writer (daemon/audit).
const (
	AuditSeq       = "seq"
	AuditKeyID     = "key_id"
	AuditSigned    = "signed"
	AuditRotatedTo = "rotated_to"
	AuditRefused   = "refused"
	AuditBytes     = "bytes"
	AuditSavedTo   = "saved_to"
	AuditHash      = "hash"
)

// Field names of the audit sinks and the refusal limiter (daemon/audit).
const (
	AuditSink         = "sink"
	AuditDropped      = "dropped"
	AuditDroppedTotal = "dropped_total"
	AuditFirstSeq     = "first_seq"
	AuditLastSeq      = "last_seq"
	AuditAttempts     = "attempts"
	AuditQueued       = "queued"
	AuditSent         = "sent"
	AuditUnsent       = "unsent"
	AuditRetries      = "retries"
	AuditClass        = "class"
	AuditSuppressed   = "suppressed"
)
