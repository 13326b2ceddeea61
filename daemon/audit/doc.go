// Package audit owns firma's audit log: one JSON object per line, append-only, hash-chained and
// optionally signed, written before any upstream byte of the connection it records. It owns the
// file (creation, resuming after a crash, rotation, retention, fsync), the canonical form, key
// loading and verification. It does not decide anything, fill attribution (the daemon does), or
// log record contents: a record may name hosts and paths, so only seq numbers, file names and
// errors reach the process log.
//
// # Canonical form
//
// A third party needs only the files and the PEM public key to check a log. For every line L (the
// bytes before its "\n"):
//
//   - The writer emits the members of the object in a fixed order: id, seq, time, prev_hash, kind,
//     decision_id, envelope, capability, decision, result, log, and, on a signed log, sig last.
//   - body(L): when L ends with `,"sig":"` + S + `"}`, where S is standard padded base64 (no quote or
//     backslash), body(L) is L with that suffix replaced by `}`; otherwise body(L) is L. Equivalently,
//     body(L) is the line as it would be without its sig member.
//   - prev_hash of line n is the lowercase hex SHA-256 of body(line n-1), the previous line in the
//     chain, which for the first line of a file is the last line of the previous file. The first
//     line of a chain has seq 1 and prev_hash "0000…0000" (64 zeros).
//   - seq rises by exactly one from each line to the next, across files.
//   - sig is base64(ASN.1 DER ECDSA P-256 signature over SHA-256(body(L))): what
//     `openssl dgst -sha256 -sign audit.key` prints for body(L), and what
//     `openssl dgst -sha256 -verify audit.pub -signature SIG.der BODY` accepts.
//
// prev_hash covers the body rather than the whole line so that the chain can be built before the
// signatures exist: the writer chains a batch in order, then signs it on every core. Nothing is
// left uncovered: the signature covers the body, and the body covers the previous body.
//
// # Records
//
// A decision record (kind "decision") carries the envelope — who (agent: agent_id, session_id,
// cgroup, pid, exe, comm, uid, as the kernel attested them), what (intent: action_class,
// resource, raw_transport, content, git) and how (transport: mode, sni, orig_dst) — the
// capability's token_id when Stage 1 ran, and the decision: outcome (ALLOW, DENY, PASSTHROUGH,
// MODIFY, DEFER, STEP_UP), matched_policies, reason, enforced (false in monitor mode), fields (the
// context and resource attributes the determining policies read, such as "context.json.model")
// and remediation (kind, and redact_headers, retry_after_ms or challenge). A MITM or plain-HTTP
// record's resource has method, path (normalized, without the query), query (credential-like
// values replaced by REDACTED) and provider; its intent.content has content_type, body_size
// (Content-Length or the counted length; -1 when neither was known), body_buffered (a policy read
// the body) and body_truncated (longer than max_body_bytes); a git smart-HTTP request's intent.git
// has service, owner, repo and, for a push, its ref updates (ref, old, new, create, delete,
// force, protected: at most MaxGitUpdates, updates_total saying how many there were) and
// pack_problem. No header value and no body is ever recorded.
//
// A completion record (kind "completion", decision_id naming the decision) repeats the envelope
// with transport.dialed and has result: bytes_up, bytes_down, duration_ms, upstream_status,
// injected (the names of the credential headers set), path (how a tunnel's bytes were carried:
// offload, splice or copy) and error; an allowed flow that failed has
// decision.outcome ABORT. Members added later are optional: verification reads only seq,
// prev_hash, kind, log and sig, so old and new records verify alike.
//
// # Files
//
// file_path is the live file, always the one being written (`tail -f file_path` works). Rotation
// (by size, or Rotate on SIGHUP/SIGUSR1) renames it to file_path + "." + the seq of its first line
// as 20 zero-padded digits (audit.jsonl.00000000000000000001), so that names sort in chain order,
// and starts a new live file. Every file begins with a KindLog "open" record that chains to the
// last line of the previous file and names it. A restart appends a "resume" record to the live
// file; a crash's incomplete last line is cut off first, saved beside the file as
// file_path + ".torn-" + unix nanoseconds, and the resume record says so. A clean Close appends
// a "close" record. With max_files set, rotation deletes the oldest rotated files.
//
// # Durability
//
// Append returns once write(2) of its line has completed; a goroutine fsyncs the file every
// fsync_interval. One writer goroutine takes records in batches: it assigns seq and prev_hash,
// signs the batch in parallel, and writes it with one write(2). If the write fails (disk full,
// I/O error, file removed) the partial batch is cut off the file, every record in it gets the
// error, and Healthy reports it until a write succeeds again; the chain continues from the last
// line on disk, and the first line after the outage is a "recovered" record that says since when
// and how many records were refused. A failed fsync is reported by Healthy in the same way.
//
// # Forwarding
//
// Each [[sidecar.audit.sinks]] entry forwards every line, after it is in the file, to journald
// (native protocol: MESSAGE is the line, FIRMA_* fields index it, MESSAGE_ID is
// JournalMessageID) or to a syslog receiver (RFC 5424 over unix datagram or stream, UDP, TCP or
// TCP+TLS, octet-counted on streams; MSG is the line). A sink has a bounded queue and a sender
// goroutine: a sink that is down is retried with backoff, and when its queue is full records are
// dropped for that sink alone, counted (Stats) and logged at most every 10s. Forwarding never
// holds up Append and never loses a record from the file. VerifyWith checks the chain in what a
// journal or syslog receiver exported, exactly as in the files.
//
// # Refusal records
//
// AppendLimited is Append behind a token bucket per agent and class (refusal_rate,
// refusal_burst), for refusals an agent can repeat at will: what goes over the budget is counted,
// and within refusal_window a "suppressed" log record says how many records of which class the
// agent lost, and between which times.
//
// # Use
//
// The sidecar opens one Writer at start (Open fails when the log cannot be written then), checks
// Healthy before accepting a connection, appends the decision record and waits for Append to
// return before any byte goes upstream, appends a completion record (DecisionID = the decision's
// ID) when the connection ends, appends refusals that no decision stands behind with
// AppendLimited, exports Stats as metrics, calls Rotate on SIGHUP/SIGUSR1 and Close at exit. Verify and Tail
// back `firma audit verify` and `firma audit tail`; both work on files alone.
package audit
