package l7

import (
	"io"
	"net/http"
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
