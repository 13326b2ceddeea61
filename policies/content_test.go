package policies

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/cedar-policy/cedar-go/types"
)

func TestSecretName(t *testing.T) {
	for _, name := range []string{
		"Authorization", "proxy-authorization", "Cookie", "X-Api-Key", "api-key", "x-goog-api-key",
		"Private-Token", "X-Amz-Security-Token", "x-auth-user", "X-CSRF-Token", "client_secret",
		"password", "x-session-id", "X-Amz-Signature", "X-Amz-Credential", "key", "api_key", "apikey",
		"access_token", "code", "sig",
	} {
		if !SecretName(name) {
			t.Errorf("SecretName(%q) = false", name)
		}
	}
	for _, name := range []string{
		"content-type", "user-agent", "accept", "anthropic-version", "openai-beta", "x-request-id",
		"model", "api-version", "q", "page", "host",
	} {
		if SecretName(name) {
			t.Errorf("SecretName(%q) = true", name)
		}
	}
}

func TestRedactQuery(t *testing.T) {
	for _, tc := range [][2]string{
		{"", ""},
		{"a=1&b=2", "a=1&b=2"},
		{"key=AIza123&alt=json", "key=REDACTED&alt=json"},
		{"access_token=x;page=2", "access_token=REDACTED&page=2"},
		{"X-Amz-Signature=abc&X-Amz-Expires=60", "X-Amz-Signature=REDACTED&X-Amz-Expires=60"},
		{"api%5Fkey=secret", "api%5Fkey=REDACTED"},
		{"token", "token"}, // a bare name carries no value
		{"%zz=1", "REDACTED"},
	} {
		if got := RedactQuery(tc[0]); got != tc[1] {
			t.Errorf("RedactQuery(%q) = %q, want %q", tc[0], got, tc[1])
		}
	}
}

func TestParseQuery(t *testing.T) {
	q, err := parseQuery("model=a&model=b;x=%2F+y&flag&=empty&&z=")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"model", "x", "flag", "", "z"}; !slices.Equal(q.names, want) {
		t.Errorf("names %q, want %q", q.names, want)
	}
	if !slices.Equal(q.values["model"], []string{"a", "b"}) || !slices.Equal(q.values["x"], []string{"/ y"}) ||
		!slices.Equal(q.values["flag"], []string{""}) {
		t.Errorf("values %q", q.values)
	}
	ent := q.entity()
	v, _ := ent.Tags.Get("model")
	if !v.Equal(types.NewSet(types.String("b"), types.String("a"))) {
		t.Errorf("model tag %v", v)
	}
	for _, bad := range []string{"a=%zz", "%g1=1", "a=%ff"} {
		if _, err := parseQuery(bad); !errors.Is(err, errQueryMalformed) {
			t.Errorf("parseQuery(%q): %v", bad, err)
		}
	}
}

func TestHeaderEntity(t *testing.T) {
	h := http.Header{
		"Authorization":    {"Bearer sk-secret"},
		"X-Api-Key":        {"k"},
		"Cookie":           {"c=1"},
		"X-Goog-Api-Key":   {"g"},
		"X-Injected":       {"cred"},
		"User-Agent":       {"curl/8"},
		"Accept":           {"a", "b"},
		"Openai-Beta":      {"assistants=v2"},
		":authority":       {"x"},
		"X-Internal-Token": {"t"},
	}
	got := stringTags(headerEntity(h, map[string]bool{"x-injected": true}))
	if want := []string{"accept=a, b", "openai-beta=assistants=v2", "user-agent=curl/8"}; !slices.Equal(got, want) {
		t.Errorf("headers %q, want %q", got, want)
	}
}

func TestMediaType(t *testing.T) {
	for _, tc := range [][2]string{
		{"", ""},
		{"application/json", "application/json"},
		{"Application/JSON; charset=utf-8", "application/json"},
		{"text/plain;;bad=", "text/plain"},
	} {
		h := http.Header{}
		if tc[0] != "" {
			h.Set("Content-Type", tc[0])
		}
		if got := MediaType(h); got != tc[1] {
			t.Errorf("MediaType(%q) = %q, want %q", tc[0], got, tc[1])
		}
	}
}

func jsonAttr(t *testing.T, ent types.Entity, name string) types.Value {
	t.Helper()
	v, ok := ent.Attributes.Get(types.String(name))
	if !ok {
		return nil
	}
	return v
}

func TestJSONEntity(t *testing.T) {
	ent, err := jsonEntity([]byte(`{"model":"claude-haiku-4-5","max_tokens":1024,"stream":true,
		"temperature":0.70005,"top_p":1,"user":null,"metadata":{"user_id":"u"},"messages":[{"role":"user"}],
		"custom":"x","count":3.5,"flag":false}`), "application/json")
	if err != nil {
		t.Fatal(err)
	}
	temp, _ := types.ParseDecimal("0.7001") // rounded half away from zero to four places
	one, _ := types.ParseDecimal("1.0")
	for name, want := range map[string]types.Value{
		"model": types.String("claude-haiku-4-5"), "max_tokens": types.Long(1024), "stream": types.True,
		"temperature": temp, "top_p": one,
	} {
		if got := jsonAttr(t, ent, name); got == nil || !got.Equal(want) {
			t.Errorf("json.%s = %v, want %v", name, got, want)
		}
	}
	if jsonAttr(t, ent, "user") != nil {
		t.Error("a null field is present")
	}
	if tags, want := stringTags(ent), []string{"count=3.5", "custom=x", "flag=false"}; !slices.Equal(tags, want) {
		t.Errorf("tags %q, want %q (objects and arrays are not tags)", tags, want)
	}

	// Not JSON, and not claiming to be: no fields, no error.
	for _, tc := range []struct{ body, mt string }{
		{"hello", "text/plain"}, {"", "application/json"}, {"a=b&c=d", "application/x-www-form-urlencoded"},
		{"[1,2]", "application/json"}, {`"s"`, "application/vnd.api+json"},
	} {
		ent, err := jsonEntity([]byte(tc.body), tc.mt)
		if err != nil || ent.Attributes.Len() != 0 || ent.Tags.Len() != 0 {
			t.Errorf("%q as %s: %v %v", tc.body, tc.mt, ent, err)
		}
	}
	// Read as JSON whatever the Content-Type says when it starts with '{': a server may parse it
	// anyway, so a policy must see it.
	ent, err = jsonEntity([]byte(` {"model":"gpt-4o"}`), "text/plain")
	if err != nil || !jsonAttr(t, ent, "model").Equal(types.String("gpt-4o")) {
		t.Errorf("JSON sent as text/plain: %v %v", ent, err)
	}

	for _, tc := range []struct{ body, want string }{
		{`{"model":"a","model":"b"}`, `key "model" given twice`},
		{`{"model":"a","MODEL":"b"}`, `key "model" given twice (as "model" and "MODEL")`},
		{`{"mod\u0065l":"a","model":"b"}`, `given twice`},
		{`{"model":1}`, `json.model: want a string, got 1`},
		{`{"max_tokens":"100"}`, `json.max_tokens: want an integer, got "100"`},
		{`{"max_tokens":1e3}`, `json.max_tokens: want an integer, got 1e3`},
		{`{"max_tokens":99999999999999999999}`, `want an integer`},
		{`{"stream":"true"}`, `json.stream: want true or false`},
		{`{"temperature":"hot"}`, `json.temperature: want a number`},
		{`{"temperature":1e300}`, `out of a decimal's range`},
		{`{"model":"a"} {"model":"b"}`, `invalid JSON at byte 15`},
		{`{"model":"a"`, `invalid JSON`},
		{"{\"model\":\"\xff\"}", `invalid UTF-8`},
		{`[1,`, `invalid JSON`},
	} {
		_, err := jsonEntity([]byte(tc.body), "application/json")
		if !errors.Is(err, errBodyMalformed) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.body, err, tc.want)
		}
	}
}

func gzipped(t testing.TB, data []byte) []byte {
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	w.Write(data)
	w.Close()
	return b.Bytes()
}

func TestDecodeBody(t *testing.T) {
	plain := []byte(`{"model":"m"}`)
	var z bytes.Buffer
	zw := zlib.NewWriter(&z)
	zw.Write(plain)
	zw.Close()
	for _, tc := range []struct {
		enc  string
		body []byte
	}{
		{"", plain}, {"identity", plain}, {"gzip", gzipped(t, plain)}, {"x-gzip", gzipped(t, plain)},
		{"deflate", z.Bytes()}, {"gzip, gzip", gzipped(t, gzipped(t, plain))},
	} {
		h := http.Header{}
		if tc.enc != "" {
			h.Set("Content-Encoding", tc.enc)
		}
		got, cut, err := decodeBody(h, tc.body, 1<<20, false)
		if err != nil || cut || !bytes.Equal(got, plain) {
			t.Errorf("%q: %q %v", tc.enc, got, err)
		}
	}
	// A decompression bomb inflates no further than the limit.
	bomb := gzipped(t, make([]byte, 10<<20))
	if out, cut, err := decodeBody(http.Header{"Content-Encoding": {"gzip"}}, bomb, 1<<20, false); err != nil || !cut || len(out) != 1<<20 {
		t.Errorf("bomb: %d bytes, cut %v, %v", len(out), cut, err)
	}
	if _, _, err := decodeBody(http.Header{"Content-Encoding": {"br"}}, plain, 1<<20, false); !errors.Is(err, errBodyMalformed) {
		t.Errorf("br: %v", err)
	}
	if _, _, err := decodeBody(http.Header{"Content-Encoding": {"gzip"}}, plain, 1<<20, false); !errors.Is(err, errBodyMalformed) {
		t.Errorf("not gzip: %v", err)
	}
	// A body cut at max_body_bytes decodes as far as it goes.
	long := gzipped(t, bytes.Repeat([]byte("0123456789"), 10000))
	prefix, cut, err := decodeBody(http.Header{"Content-Encoding": {"gzip"}}, long[:len(long)/2], 1<<20, true)
	if err != nil || !cut || len(prefix) == 0 || !bytes.HasPrefix(bytes.Repeat([]byte("0123456789"), 10000), prefix) {
		t.Errorf("partial: %d bytes, cut %v, %v", len(prefix), cut, err)
	}
	if _, _, err := decodeBody(http.Header{"Content-Encoding": {"gzip"}}, long[:len(long)/2], 1<<20, false); err == nil {
		t.Error("a gzip body cut short decoded as whole")
	}
}

func TestParseDecimal(t *testing.T) {
	for _, tc := range [][2]string{
		{"0", "0.0"}, {"1", "1.0"}, {"-0.5", "-0.5"}, {"0.00005", "0.0001"}, {"-0.00005", "-0.0001"},
		{"0.00004", "0.0"}, {"2.5e-1", "0.25"}, {"1E2", "100.0"}, {"922337203685477.5807", "922337203685477.5807"},
	} {
		d, err := parseDecimal(tc[0])
		if err != nil || d.String() != tc[1] {
			t.Errorf("parseDecimal(%s) = %v %v, want %s", tc[0], d, err, tc[1])
		}
	}
	if _, err := parseDecimal("922337203685478"); err == nil {
		t.Error("out of range accepted")
	}
}

// stringTags lists an entity's String tags as sorted "name=value".
func stringTags(ent types.Entity) []string {
	var out []string
	for k, v := range ent.Tags.All() {
		out = append(out, string(k)+"="+string(v.(types.String)))
	}
	slices.Sort(out)
	return out
}
