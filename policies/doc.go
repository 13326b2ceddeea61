// Package policies is firma's policy language layer, shared by the sidecar, the authority and the
// CLI: the Cedar schema and action-class registry (firma.cedarschema), mapping rules that classify
// raw intents into action classes, loading and validating .cedar files with stable policy ids, and
// evaluation. It also ships the embedded defaults: the schema, a strict default policy set
// (default/*.cedar) and default mapping rules (default/mapping-rules.toml).
//
// It must not do I/O beyond reading policy, schema, rules and fixture files, and must not know about
// sockets, the kernel or the audit log: callers hand it a Request and get a Decision back.
//
// # Deciding
//
// Engine.Decide runs one pipeline for every intent:
//
//  1. normalize the request (see below); a request that cannot be normalized is denied with a
//     "malformed request: …" reason;
//  2. classify it: on a [sidecar.policy.git] host a git smart-HTTP request is classified by what it
//     does (code.read, code.write, code.destructive: see ClassifyGit and ParsePush); otherwise the
//     mapping rules classify; no rule ⇒ DENY "unclassified intent" when default_protected, else
//     PASSTHROUGH, and nothing further runs;
//  3. Stage 1: with Request.Capability set, Authorize(agent, action class, resource, now), where
//     resource is the normalized host+path without port or query ("api.anthropic.com/v1/messages",
//     or "api.anthropic.com" for CONNECT and DNS); an error denies with "capability: <error>" and
//     no token id (MatchedPolicies still lists the forbids that match, so an audit query for a
//     forbid finds every request it covers);
//  4. Stage 2: Cedar on the policies indexed under the agent and the action class. Default deny,
//     forbid beats permit, a forbid that fails to evaluate denies. MatchedPolicies are the
//     determining ids: the forbids for a forbid-deny, the permits for an allow, none for a default
//     deny ("no policy permits"). Decision.Fields names the attributes those policies read.
//  5. Remediation: when every forbid that matched carries @modify, @defer or @step_up and a permit
//     allows the request, the outcome is MODIFY, DEFER or STEP_UP (the strongest wins) and
//     Decision.Remediation says what to do; a plain forbid still denies.
//
// The Cedar request is principal Firma::Agent::"<agent_id>", action Firma::Action::"<class>",
// resource Firma::Resource::"<host><path>" with attributes host, path, method, port and (when the
// rule names one) provider, and the context firma.cedarschema declares: attribution (session_id,
// timestamp_ms, raw_transport, pid, exe, uid, cgroup), request content (body_size, content_type,
// query, query_params, headers, json), git (git_service, git_owner, git_repo, git_refs,
// git_delete, git_force) and session state (action_count, deny_count, prior_action_classes,
// last_resource, session_duration_s, actions_last_minute, actions_last_hour).
//
// # What a decision costs
//
// Each policy's conditions are walked once at load: which context attributes and resource
// attributes it reads (and so which fields an audit record names). A decision builds only the
// attributes its candidate policies read: the body is parsed as JSON, the query split, the session
// snapshotted only when a candidate asks. Engine.NeedsBody tells the HTTP engine, per request,
// whether to buffer the body (up to MaxBodyBytes) before deciding; otherwise it streams. A decision
// that needs content it cannot have — a body not buffered or over max_body_bytes, invalid or
// ambiguous JSON, an undecodable Content-Encoding, a malformed query — is denied with why, never
// decided without it. Credentials never reach policies: see SecretName.
//
// # Sessions
//
// Sessions tracks, per agent and session id, what earlier decisions were; Engine.Observe feeds it
// (the caller calls it once per decision, after the audit record). It is bounded (least recently
// active sessions are forgotten past [sidecar.policy] max_sessions) and sharded.
//
// # Normalization
//
// Host: lowercased, one trailing dot stripped, a port split off (it must agree with Request.Port),
// IPv6 brackets removed, IPv4-mapped IPv6 unmapped; only IP literals and ASCII names of letters,
// digits, '-' and '_' are accepted. Port 0 becomes the transport's default. Path (HTTP intents
// only): query and fragment dropped, percent-decoded once (so /v1/%6Dessages is /v1/messages and
// /%2e%2e/ is /../), then "." and ".." resolved and duplicate and trailing slashes removed; invalid
// escapes, control characters and invalid UTF-8 are refused. CONNECT and DNS intents have no path.
//
// # Mapping rules
//
// A mapping-rules file is a list of [[rules]] with method?, host, path?, action_class and
// provider?. method absent matches any HTTP method (L7 requests only); "CONNECT" matches
// connection-level intents, "DNS" name lookups, "*" every intent. host is exact, "*.suffix" (exactly
// one more label) or "*" (every host), optionally with a port the intent's port must equal
// ("127.0.0.1:9100", "[::1]:8080"; ":*" is any port, as no port is). path is a glob where '*'
// matches any run of characters, '/' included; "*" alone is every path, as no path is. Unknown
// keys, unknown action classes and duplicate rules are load errors naming file and line. The most
// specific matching rule wins:
//
//  1. host: exact, then "*.suffix", then "*"; then a port, then any port;
//  2. path: an exact path, then globs by number of literal characters (more first), then no path;
//  3. method: a named method, then absent (any HTTP method), then "*";
//  4. the rule written first.
//
// # Policy sets
//
// LoadDir, LoadFiles and ParseFiles parse every .cedar file and validate every policy against the
// schema (cedar-go's strict validation, plus a check that no `has` test names an attribute the
// schema cannot have, which Cedar would type as always false), reporting all problems at once as a
// *LoadError of "file:line:col: message" lines. Remediation annotations are checked too: only on
// forbids, one per policy, @modify("redact_header:<name>"), @defer("<ms>") up to a day,
// @step_up("<challenge>"); a bad one is reported at its own line. A policy's id is its @id("…") annotation, else
// <effect>_at_<file>_<line>, with the base name of the file and the line of the permit/forbid
// keyword; duplicate ids are an error. Set.Evaluate is a generic evaluation for other callers such
// as the authority's issuance policies.
//
// # Reloading
//
// An Engine's schema, set and rules form one immutable generation, swapped atomically by Reload
// (SIGHUP, wired by the daemon), Watch (fsnotify) and LoadBundle (authority bundles). A decision
// runs on the generation that was active when it started; a load that fails keeps the last good
// generation and logs why.
//
// # Learning from the audit log
//
// Observed is a decision as an audit record kept it (the daemon's judge reads it back from the
// record). Suggester turns an agent's observed decisions — what monitor mode let through included —
// into a mapping-rules file and a Cedar file that allow exactly that, generalized where the data
// supports it (one-label host wildcards below registrable domains, path prefixes), and forbid what
// the operator excluded; it proves its output before returning it. Replayer judges observed
// decisions again under a candidate policy, Stage 1 off and sessions rebuilt in order, and groups
// what would change by host and action class; a decision whose policies read content the record
// lacks is reported, not guessed. `firma policy suggest` and `firma policy replay` are their CLI.
//
// # Fixtures
//
// LoadFixtures reads golden cases (request → expected decision) in the TOML format documented on
// FixtureFile; `firma policy test` and this package's tests run them.
package policies
