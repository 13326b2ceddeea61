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
