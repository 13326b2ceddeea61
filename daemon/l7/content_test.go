package l7

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/daemon/judge"
	"github.com/openfirma/firma/internal/testutil"
	"github.com/openfirma/firma/policies"
)

// The tests in this file run the engine with the real judge and the real policy engine, so that
// what a policy reads of a request decides what the engine buffers, forwards and answers.

const contentPolicy = `@id("permit-all")
permit (principal, action, resource);

@id("forbid-big-upload")
forbid (principal, action == Firma::Action::"communication.external.send", resource)
when { resource.path == "/upload" && context.body_size > 1000 };

@id("only-haiku")
forbid (principal, action == Firma::Action::"model.inference.chat", resource)
unless { context.json has model && context.json.model == "claude-haiku-4-5" };

@id("redact-debug")
@modify("redact_header:x-debug")
forbid (principal, action, resource) when { resource.path == "/modify" };

@id("defer-busy")
@defer("1500")
forbid (principal, action, resource) when { resource.path == "/defer" };

@id("step-up-pay")
@step_up("approve the payment in the console")
forbid (principal, action, resource) when { resource.path == "/step-up" };
`

// contentRules: uploads to /stream/* are a class no body-reading policy applies to.
const contentRules = `[[rules]]
method = "*"
host = "*"
action_class = "communication.external.send"

[[rules]]
host = "*"
path = "/v1/messages"
action_class = "model.inference.chat"

[[rules]]
host = "*"
path = "/stream/*"
action_class = "communication.external.read"
`

// contentMaxBody is [sidecar.policy] max_body_bytes in these tests.
const contentMaxBody = 4096

// memRecorder keeps the judge's audit records in memory (or, with discard, none of them).
type memRecorder struct {
	mu      sync.Mutex
	events  []*audit.Event
	discard bool
	n       int
}

func (r *memRecorder) Append(ev *audit.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	ev.ID = fmt.Sprintf("ev%d", r.n)
	if !r.discard {
		r.events = append(r.events, ev)
	}
	return nil
}

func (r *memRecorder) AppendLimited(_ string, ev *audit.Event) (bool, error) {
	return true, r.Append(ev)
}

// decision returns the last decision record for path, failing the test when there is none.
func (r *memRecorder) decision(t *testing.T, path string) *audit.Event {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.events) - 1; i >= 0; i-- {
		ev := r.events[i]
		if ev.Kind == audit.KindDecision && ev.Envelope.Intent.Resource.Path == path {
			return ev
		}
	}
	t.Fatalf("no decision record for %s", path)
	return nil
}

// completion waits for the record that completes decision id (written after the response).
func (r *memRecorder) completion(t *testing.T, id string) *audit.Event {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.mu.Lock()
		for _, ev := range r.events {
			if ev.Kind == audit.KindCompletion && ev.DecisionID == id {
				r.mu.Unlock()
				return ev
			}
		}
		r.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no completion of %s", id)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type policyEnv struct {
	*env
	rec *memRecorder
	up  *testutil.Upstream
}

type policyEnvOptions struct {
	cfg     func(*Config)
	creds   Injector
	monitor bool
	discard bool // keep no audit records (benchmarks)
}

// newPolicyEnv runs the engine with a real judge deciding contentPolicy under contentRules, and an
// upstream for apiHost.
func newPolicyEnv(t testing.TB, o policyEnvOptions) *policyEnv {
	t.Helper()
	j, rec := newPolicyJudge(t, o.discard)
	e := newEnv(t, envOptions{decider: j, cfg: o.cfg, creds: o.creds, monitor: o.monitor})
	return &policyEnv{env: e, rec: rec, up: e.upstream(apiHost)}
}

// newPolicyJudge is the real judge deciding contentPolicy under contentRules.
func newPolicyJudge(t testing.TB, discard bool) (*judge.Judge, *memRecorder) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "content.cedar"), []byte(contentPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	rules := filepath.Join(t.TempDir(), "mapping-rules.toml")
	if err := os.WriteFile(rules, []byte(contentRules), 0o644); err != nil {
		t.Fatal(err)
	}
	eng, err := policies.New(policies.Config{Dir: dir, MaxBodyBytes: contentMaxBody},
		policies.MappingConfig{RulesPath: rules, DefaultProtected: true}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	rec := &memRecorder{discard: discard}
	return judge.New(judge.Options{Engine: eng, Audit: rec, Log: zerolog.Nop()}), rec
}

type reply struct {
	status int
	body   string
	header http.Header
}

// send sends body (nil: none) with a Content-Length, or chunked (HTTP/1.1) / without a length
// (HTTP/2).
func send(t testing.TB, c *http.Client, method, url string, body []byte, chunked bool, hdr http.Header) reply {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
		if chunked {
			rd = io.MultiReader(rd) // a reader of unknown length
		}
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, string(b), resp.Header}
}

// upstreamBodies are the bodies the upstream received for path.
func upstreamBodies(u *testutil.Upstream, path string) []string {
	var out []string
	for _, r := range u.Requests() {
		if r.Path == path {
			out = append(out, string(r.Body))
		}
	}
	return out
}

// TestBodySizePolicy: a policy forbidding bodies over 1000 bytes to /upload. A declared length is
// judged from the head, without reading the body; a chunked body is buffered and judged on its
// counted size; one longer than max_body_bytes cannot be judged and is refused 413. No refused
// body reaches the upstream; an allowed one arrives whole.
func TestBodySizePolicy(t *testing.T) {
	pe := newPolicyEnv(t, policyEnvOptions{})
	big := bytes.Repeat([]byte("B"), 2000)
	small := bytes.Repeat([]byte("s"), 500)
	huge := bytes.Repeat([]byte("H"), 3*contentMaxBody)
	url := pe.url(apiHost, "/upload")
	for _, h2 := range []bool{false, true} {
		c := pe.client(h2)
		for _, tc := range []struct {
			name     string
			body     []byte
			chunked  bool
			status   int
			outcome  string
			size     int64
			buffered bool
		}{
			{"declared over", big, false, 403, "DENY", 2000, false},
			{"chunked over", big, true, 403, "DENY", 2000, true},
			{"chunked past max_body_bytes", huge, true, 413, "DENY", -1, true},
			{"declared under", small, false, 200, "ALLOW", 500, false},
			{"chunked under", small, true, 200, "ALLOW", 500, true},
		} {
			r := send(t, c, "POST", url, tc.body, tc.chunked, nil)
			ev := pe.rec.decision(t, "/upload")
			d, content := ev.Decision, ev.Envelope.Intent.Content
			if r.status != tc.status || d.Outcome != tc.outcome || content == nil || content.BodySize != tc.size ||
				content.BodyBuffered != tc.buffered {
				t.Fatalf("h2=%v %s: %d %q; record %+v content %+v", h2, tc.name, r.status, r.body, d, content)
			}
			switch tc.status {
			case 403:
				if !slices.Contains(d.MatchedPolicies, "forbid-big-upload") || !slices.Contains(d.Fields, "context.body_size") ||
					r.header.Get("X-Firma-Decision") != "DENY" {
					t.Errorf("h2=%v %s: %+v %v", h2, tc.name, d, r.header)
				}
			case 413:
				if !strings.Contains(d.Reason, policies.ReasonBodyTooLarge) || !content.BodyTruncated ||
					!strings.Contains(r.body, policies.ReasonBodyTooLarge) {
					t.Errorf("h2=%v %s: %+v %+v %q", h2, tc.name, d, content, r.body)
				}
			case 200:
				if comp := pe.rec.completion(t, ev.ID); comp.Result.BytesUp != 500 || comp.Result.UpstreamStatus != 200 {
					t.Errorf("h2=%v %s: completion %+v", h2, tc.name, comp.Result)
				}
			}
		}
	}
	got := upstreamBodies(pe.up, "/upload")
	if len(got) != 4 {
		t.Fatalf("the upstream got %d /upload requests, want the 4 allowed ones", len(got))
	}
	for _, b := range got {
		if b != string(small) {
			t.Fatalf("the upstream got a body of %d bytes, want the 500 that were allowed", len(b))
		}
	}
	if n := pe.icpt.Stats().BodyBuffered; n != 0 {
		t.Fatalf("%d bytes still held in the body budget", n)
	}
}

// TestJSONModelPolicy: only one model may be called; the record names the field that decided; an
// ambiguous body is refused before Cedar; the allowed body reaches the upstream as sent.
func TestJSONModelPolicy(t *testing.T) {
	pe := newPolicyEnv(t, policyEnvOptions{})
	url := pe.url(apiHost, "/v1/messages")
	jsonHdr := http.Header{"Content-Type": {"application/json"}}
	for _, h2 := range []bool{false, true} {
		c := pe.client(h2)
		r := send(t, c, "POST", url, []byte(`{"model":"claude-opus-4","max_tokens":10}`), h2, jsonHdr)
		ev := pe.rec.decision(t, "/v1/messages")
		if r.status != 403 || ev.Decision.Outcome != "DENY" || !slices.Equal(ev.Decision.Fields, []string{"context.json.model"}) ||
			!slices.Equal(ev.Decision.MatchedPolicies, []string{"only-haiku"}) || *ev.Envelope.Intent.ActionClass != "model.inference.chat" {
			t.Fatalf("h2=%v other model: %d %q; %+v", h2, r.status, r.body, ev.Decision)
		}
		if ct := ev.Envelope.Intent.Content.ContentType; ct != "application/json" {
			t.Errorf("content_type %q", ct)
		}
		allowed := `{"model":"claude-haiku-4-5","max_tokens":10}`
		if r := send(t, c, "POST", url, []byte(allowed), h2, jsonHdr); r.status != 200 {
			t.Fatalf("h2=%v allowed model: %d %q", h2, r.status, r.body)
		}
		if ev := pe.rec.decision(t, "/v1/messages"); ev.Decision.Outcome != "ALLOW" {
			t.Fatalf("allowed model: %+v", ev.Decision)
		}
		// The same key twice, in another case: servers differ on which wins, so firma refuses.
		r = send(t, c, "POST", url, []byte(`{"model":"claude-haiku-4-5","Model":"claude-opus-4"}`), h2, jsonHdr)
		if ev := pe.rec.decision(t, "/v1/messages"); r.status != 403 || !strings.Contains(ev.Decision.Reason, "malformed request body") {
			t.Fatalf("h2=%v duplicate key: %d %+v", h2, r.status, ev.Decision)
		}
	}
	got := upstreamBodies(pe.up, "/v1/messages")
	if len(got) != 2 || got[0] != `{"model":"claude-haiku-4-5","max_tokens":10}` || got[1] != got[0] {
		t.Fatalf("the upstream got %q", got)
	}
}

// TestStreamingUploadNotBuffered: a body no policy reads streams — the upstream reads its first
// bytes while the agent has not sent the rest. (Were it buffered, the upstream would see nothing
// until the agent finished, and the agent waits for the upstream: the test would not finish.)
func TestStreamingUploadNotBuffered(t *testing.T) {
	pe := newPolicyEnv(t, policyEnvOptions{})
	firstSeen := make(chan string, 1)
	pe.up.SetHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		first := make([]byte, 5)
		if _, err := io.ReadFull(r.Body, first); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		firstSeen <- string(first)
		rest, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s+%s", first, rest)
	}), true)
	for _, h2 := range []bool{false, true} {
		pr, pw := io.Pipe()
		go func() {
			pw.Write([]byte("first"))
			select {
			case <-firstSeen:
				pw.Write([]byte("second"))
				pw.Close()
			case <-time.After(10 * time.Second):
				pw.CloseWithError(fmt.Errorf("the upstream never saw the first bytes: the body was not streamed"))
			}
		}()
		req, _ := http.NewRequest("POST", pe.url(apiHost, "/stream/up"), pr)
		resp, err := pe.client(h2).Do(req)
		if err != nil {
			t.Fatalf("h2=%v: %v", h2, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "first+second" {
			t.Fatalf("h2=%v: %d %q", h2, resp.StatusCode, b)
		}
		ev := pe.rec.decision(t, "/stream/up")
		if c := ev.Envelope.Intent.Content; c.BodyBuffered || c.BodySize != -1 {
			t.Errorf("h2=%v: content %+v", h2, c)
		}
	}
}

// TestBodyBudget: bodies buffered for policies share one budget. While one request holds it, the
// next that needs buffering is refused (503, recorded) rather than buffered; once the first ends,
// the budget is whole again.
func TestBodyBudget(t *testing.T) {
	pe := newPolicyEnv(t, policyEnvOptions{cfg: func(c *Config) { c.BodyBufferBytes = contentMaxBody + 1 }})
	pr, pw := io.Pipe()
	done := make(chan reply, 1)
	go func() {
		req, _ := http.NewRequest("POST", pe.url(apiHost, "/upload"), pr)
		resp, err := pe.client(false).Do(req)
		if err != nil {
			done <- reply{body: err.Error()}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- reply{status: resp.StatusCode, body: string(b)}
	}()
	pw.Write(bytes.Repeat([]byte("x"), 100))
	deadline := time.Now().Add(5 * time.Second)
	for pe.icpt.Stats().BodyBuffered == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the first request never started buffering")
		}
		time.Sleep(5 * time.Millisecond)
	}

	for _, h2 := range []bool{false, true} {
		r := send(t, pe.client(h2), "POST", pe.url(apiHost, "/upload"), []byte("tiny"), true, nil)
		ev := pe.rec.decision(t, "/upload")
		if r.status != 503 || r.header.Get("Retry-After") != "1" || !strings.Contains(r.body, judge.ReasonBodyBudget) ||
			ev.Decision.Outcome != "DENY" || ev.Decision.Reason != judge.ReasonBodyBudget {
			t.Fatalf("h2=%v: %d %q %v; %+v", h2, r.status, r.body, r.header, ev.Decision)
		}
	}
	// A body that needs no buffering is not held up by the budget.
	if r := send(t, pe.client(false), "POST", pe.url(apiHost, "/stream/ok"), []byte("tiny"), true, nil); r.status != 200 {
		t.Fatalf("streamed body while the budget is spent: %d %q", r.status, r.body)
	}

	pw.Write(bytes.Repeat([]byte("x"), 2000))
	pw.Close()
	if r := <-done; r.status != 403 {
		t.Fatalf("first request: %d %q", r.status, r.body)
	}
	for pe.icpt.Stats().BodyBuffered != 0 {
		if time.Now().After(deadline.Add(5 * time.Second)) {
			t.Fatalf("%d bytes still held after the request ended", pe.icpt.Stats().BodyBuffered)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if r := send(t, pe.client(false), "POST", pe.url(apiHost, "/upload"), []byte("tiny"), true, nil); r.status != 200 {
		t.Fatalf("after the budget was released: %d %q", r.status, r.body)
	}
}

// TestMaxRequestBodyBytes: the configured cap on every body. A declared length over it is refused
// before anything is sent; a streamed body is cut off where it passes the cap and its request
// aborted (recorded as an ABORT); a buffered one is refused before it is forwarded.
func TestMaxRequestBodyBytes(t *testing.T) {
	const limit = 3000
	pe := newPolicyEnv(t, policyEnvOptions{cfg: func(c *Config) { c.MaxRequestBodyBytes = limit }})
	over := bytes.Repeat([]byte("o"), 5000)
	for _, h2 := range []bool{false, true} {
		c := pe.client(h2)
		r := send(t, c, "POST", pe.url(apiHost, "/stream/declared"), over, false, nil)
		ev := pe.rec.decision(t, "/stream/declared")
		if r.status != 413 || ev.Decision.Outcome != "DENY" || !strings.HasPrefix(ev.Decision.Reason, judge.ReasonBodyLimit) {
			t.Fatalf("h2=%v declared: %d %q %+v", h2, r.status, r.body, ev.Decision)
		}

		r = send(t, c, "POST", pe.url(apiHost, "/stream/chunked"), over, true, nil)
		ev = pe.rec.decision(t, "/stream/chunked")
		comp := pe.rec.completion(t, ev.ID)
		if r.status != 413 || ev.Decision.Outcome != "ALLOW" || comp.Decision == nil || comp.Decision.Outcome != "ABORT" ||
			!strings.HasPrefix(comp.Result.Error, judge.ErrorBodyLimit) || comp.Result.BytesUp > limit {
			t.Fatalf("h2=%v streamed: %d %q; %+v %+v", h2, r.status, r.body, comp.Decision, comp.Result)
		}

		r = send(t, c, "POST", pe.url(apiHost, "/upload"), over, true, nil)
		if ev := pe.rec.decision(t, "/upload"); r.status != 413 || !strings.HasPrefix(ev.Decision.Reason, judge.ReasonBodyLimit) {
			t.Fatalf("h2=%v buffered: %d %q %+v", h2, r.status, r.body, ev.Decision)
		}

		if r := send(t, c, "POST", pe.url(apiHost, "/stream/under"), over[:limit], true, nil); r.status != 200 {
			t.Fatalf("h2=%v at the cap: %d %q", h2, r.status, r.body)
		}
	}
	for _, r := range pe.up.Requests() {
		if len(r.Body) > limit || r.Path == "/stream/declared" || r.Path == "/upload" {
			t.Errorf("the upstream got %s with %d bytes", r.Path, len(r.Body))
		}
	}
}

// setHeader is an Injector that sets one header, as a credential would be.
type setHeader struct{ name, value string }

func (s setHeader) Apply(_ string, h http.Header) ([]string, error) {
	h.Set(s.name, s.value)
	return []string{s.name}, nil
}

// TestRemediations: @modify forwards without the header (credentials still injected after it),
// @defer answers 429 with Retry-After, @step_up refuses with the challenge; each is recorded with
// its outcome and what it asked.
func TestRemediations(t *testing.T) {
	pe := newPolicyEnv(t, policyEnvOptions{creds: setHeader{"X-Api-Key", "sidecar-key"}})
	for _, h2 := range []bool{false, true} {
		c := pe.client(h2)
		r := send(t, c, "GET", pe.url(apiHost, "/modify"), nil, false, http.Header{"X-Debug": {"dump-everything"}, "X-Keep": {"1"}})
		ev := pe.rec.decision(t, "/modify")
		d := ev.Decision
		if r.status != 200 || d.Outcome != "MODIFY" || d.Remediation == nil || d.Remediation.Kind != "modify" ||
			!slices.Equal(d.Remediation.RedactHeaders, []string{"x-debug"}) || !slices.Equal(d.MatchedPolicies, []string{"permit-all", "redact-debug"}) ||
			!strings.HasPrefix(d.Reason, policies.ReasonModified) {
			t.Fatalf("h2=%v modify: %d %q; %+v %+v", h2, r.status, r.body, d, d.Remediation)
		}
		reqs := pe.up.Requests()
		last := reqs[len(reqs)-1]
		if last.Path != "/modify" || last.Header.Get("X-Debug") != "" || last.Header.Get("X-Keep") != "1" || last.Header.Get("X-Api-Key") != "sidecar-key" {
			t.Fatalf("h2=%v the upstream saw %s %v", h2, last.Path, last.Header)
		}
		if comp := pe.rec.completion(t, ev.ID); !slices.Equal(comp.Result.Injected, []string{"X-Api-Key"}) {
			t.Errorf("completion %+v", comp.Result)
		}

		r = send(t, c, "GET", pe.url(apiHost, "/defer"), nil, false, nil)
		d = pe.rec.decision(t, "/defer").Decision
		if r.status != 429 || r.header.Get("Retry-After") != "2" || r.header.Get("X-Firma-Decision") != "DEFER" ||
			d.Outcome != "DEFER" || d.Remediation == nil || d.Remediation.RetryAfterMS != 1500 || !strings.Contains(r.body, "retry after 1500 ms") {
			t.Fatalf("h2=%v defer: %d %q %v; %+v", h2, r.status, r.body, r.header, d)
		}

		r = send(t, c, "GET", pe.url(apiHost, "/step-up"), nil, false, nil)
		d = pe.rec.decision(t, "/step-up").Decision
		if r.status != 403 || r.header.Get("X-Firma-Decision") != "STEP_UP" || !strings.Contains(r.body, "approve the payment in the console") ||
			d.Outcome != "STEP_UP" || d.Remediation == nil || d.Remediation.Challenge != "approve the payment in the console" {
			t.Fatalf("h2=%v step-up: %d %q %v; %+v", h2, r.status, r.body, r.header, d)
		}
	}
	for _, r := range pe.up.Requests() {
		if r.Path == "/defer" || r.Path == "/step-up" {
			t.Errorf("a refused request reached the upstream: %s", r.Path)
		}
	}
}

// TestMonitorModeProceeds: in monitor mode every decision is made and recorded (enforced: false),
// but nothing is refused and nothing modified: a DEFER, a STEP_UP and a body-size DENY go through,
// and a MODIFY forwards the header it would have removed.
func TestMonitorModeProceeds(t *testing.T) {
	pe := newPolicyEnv(t, policyEnvOptions{monitor: true})
	c := pe.client(false)
	for path, outcome := range map[string]string{"/defer": "DEFER", "/step-up": "STEP_UP"} {
		r := send(t, c, "GET", pe.url(apiHost, path), nil, false, nil)
		d := pe.rec.decision(t, path).Decision
		if r.status != 200 || d.Outcome != outcome || d.Enforced == nil || *d.Enforced {
			t.Fatalf("%s: %d %q; %+v", path, r.status, r.body, d)
		}
	}
	r := send(t, c, "POST", pe.url(apiHost, "/upload"), bytes.Repeat([]byte("m"), 2000), true, nil)
	if d := pe.rec.decision(t, "/upload").Decision; r.status != 200 || d.Outcome != "DENY" || *d.Enforced {
		t.Fatalf("upload: %d %+v", r.status, d)
	}
	r = send(t, c, "GET", pe.url(apiHost, "/modify"), nil, false, http.Header{"X-Debug": {"on"}})
	reqs := pe.up.Requests()
	if d := pe.rec.decision(t, "/modify").Decision; r.status != 200 || d.Outcome != "MODIFY" || *d.Enforced ||
		reqs[len(reqs)-1].Header.Get("X-Debug") != "on" {
		t.Fatalf("modify: %d %+v %v", r.status, d, reqs[len(reqs)-1].Header)
	}
	if got := upstreamBodies(pe.up, "/upload"); len(got) != 1 || len(got[0]) != 2000 {
		t.Fatalf("upload in monitor mode: the upstream got %d requests", len(got))
	}
}

// TestRecordQueryRedacted: the record carries the query with credential-like values redacted;
// the policy saw it whole.
func TestRecordQueryRedacted(t *testing.T) {
	pe := newPolicyEnv(t, policyEnvOptions{})
	if r := send(t, pe.client(false), "GET", pe.url(apiHost, "/q?api_key=sk-123&page=2&access_token=t"), nil, false, nil); r.status != 200 {
		t.Fatalf("%d %q", r.status, r.body)
	}
	res := pe.rec.decision(t, "/q").Envelope.Intent.Resource
	if res.Query != "api_key=REDACTED&page=2&access_token=REDACTED" {
		t.Fatalf("query %q", res.Query)
	}
}

// TestPlainHTTPContent: plain HTTP is judged on its content the same way: a chunked body over the
// size limit is buffered and refused, the JSON model policy applies, and neither refused body
// reaches the upstream.
func TestPlainHTTPContent(t *testing.T) {
	j, rec := newPolicyJudge(t, false)
	p := newPlainEnvWith(t, envOptions{decider: j}, false)
	up := p.plainUpstream("plain.example.test")
	chunk := strings.Repeat("c", 1500)
	resp := p.roundTrip(t, fmt.Sprintf("POST /upload HTTP/1.1\r\nHost: plain.example.test\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", len(chunk), chunk))
	if b := body(t, resp); resp.StatusCode != 403 || !strings.Contains(b, "forbidden by policy") {
		t.Fatalf("chunked upload: %d %q", resp.StatusCode, b)
	}
	if c := rec.decision(t, "/upload").Envelope.Intent.Content; c.BodySize != 1500 || !c.BodyBuffered {
		t.Fatalf("content %+v", c)
	}
	for model, want := range map[string]int{"claude-opus-4": 403, "claude-haiku-4-5": 200} {
		js := `{"model":"` + model + `"}`
		resp = p.roundTrip(t, fmt.Sprintf("POST /v1/messages HTTP/1.1\r\nHost: plain.example.test\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(js), js))
		if b := body(t, resp); resp.StatusCode != want {
			t.Fatalf("%s: %d %q", model, resp.StatusCode, b)
		}
	}
	for _, r := range up.Requests() {
		if r.Path == "/upload" || strings.Contains(string(r.Body), "opus") {
			t.Errorf("a refused request reached the upstream: %s %q", r.Path, r.Body)
		}
	}
	if n := len(up.Requests()); n != 1 {
		t.Errorf("the upstream got %d requests, want the allowed one", n)
	}
}

// TestRequestTrailersDropped: a header sent as a trailer, after the body, never reaches the
// upstream — no policy saw it, and it would undo a @modify.
func TestRequestTrailersDropped(t *testing.T) {
	pe := newPolicyEnv(t, policyEnvOptions{})
	var seen http.Header
	var mu sync.Mutex
	pe.up.SetHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		mu.Lock()
		seen = r.Trailer.Clone()
		mu.Unlock()
	}), true)
	for _, h2 := range []bool{false, true} {
		req, _ := http.NewRequest("POST", pe.url(apiHost, "/modify"), io.MultiReader(strings.NewReader("body")))
		req.Trailer = http.Header{"X-Debug": {"smuggled"}}
		resp, err := pe.client(h2).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		mu.Lock()
		if resp.StatusCode != 200 || len(seen) != 0 {
			t.Fatalf("h2=%v: %d, the upstream saw trailers %v", h2, resp.StatusCode, seen)
		}
		mu.Unlock()
	}
}
