package l7

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
)

// BenchmarkRequest is one allowed request on a warm agent connection, judged and forwarded over a
// pooled upstream connection.
func BenchmarkRequest(b *testing.B) {
	for _, h2 := range []bool{false, true} {
		name := map[bool]string{false: "http1", true: "h2"}[h2]
		b.Run(name, func(b *testing.B) {
			e := newEnv(b, envOptions{})
			e.upstream(apiHost)
			c := e.client(h2)
			url := e.url(apiHost, "/v1/models")
			for b.Loop() {
				resp, err := c.Get(url)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatal(resp.Status)
				}
			}
		})
	}
}

// BenchmarkPolicyRequest is one request decided by the real judge and policy engine on a warm
// HTTP/1.1 connection: without a body; with a JSON body a policy reads (buffered, parsed); and with
// a body no policy reads (streamed).
func BenchmarkPolicyRequest(b *testing.B) {
	json := []byte(`{"model":"claude-haiku-4-5","max_tokens":1024,"messages":[{"role":"user","content":"` +
		strings.Repeat("x", 900) + `"}]}`)
	stream := bytes.Repeat([]byte("s"), 64<<10)
	for _, tc := range []struct {
		name, method, path string
		body               []byte
	}{
		{"get", "GET", "/v1/models", nil},
		{"json-1KiB-buffered", "POST", "/v1/messages", json},
		{"64KiB-streamed", "POST", "/stream/up", stream},
	} {
		b.Run(tc.name, func(b *testing.B) {
			pe := newPolicyEnv(b, policyEnvOptions{discard: true})
			c := pe.client(false)
			url := pe.url(apiHost, tc.path)
			b.SetBytes(int64(len(tc.body)))
			for b.Loop() {
				if r := send(b, c, tc.method, url, tc.body, false, nil); r.status != http.StatusOK {
					b.Fatal(r.status, r.body)
				}
			}
		})
	}
}
