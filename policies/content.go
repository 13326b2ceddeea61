package policies

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/cedar-policy/cedar-go/types"
	"github.com/cedar-policy/cedar-go/x/exp/schema/resolved"
)

// Reasons for refusing a request whose content a policy needs but cannot have. They start with
// "malformed request body" or name the limit, so the audit record says why.
var (
	errBodyMalformed  = errors.New("malformed request body")
	errBodyTooLarge   = errors.New(ReasonBodyTooLarge)
	errBodyNotGiven   = errors.New("request body not buffered for a policy that reads it")
	errQueryMalformed = errors.New("malformed request: query")
)

// DefaultMaxBodyBytes bounds a buffered request body (and what it decompresses to) when
// [sidecar.policy] max_body_bytes is not set: 16 MiB.
const DefaultMaxBodyBytes = 16 << 20

// credentialHeaders are never exposed to policies, whatever their configuration.
var credentialHeaders = []string{
	"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key",
	"x-goog-api-key", "private-token", "x-amz-security-token",
}

// SecretName reports whether a header or query parameter name says that it carries a credential:
// the well-known credential headers, and names containing auth, token, secret, passw, cookie,
// credential, session, signature or ending in key (x-goog-api-key, api_key, key). Such headers
// never reach policies; such query parameters are redacted by RedactQuery.
func SecretName(name string) bool {
	n := strings.ToLower(name)
	if slices.Contains(credentialHeaders, n) {
		return true
	}
	switch n {
	case "code", "sig", "pwd", "apikey":
		return true
	}
	for _, s := range []string{"auth", "token", "secret", "passw", "cookie", "credential", "session", "signature"} {
		if strings.Contains(n, s) {
			return true
		}
	}
	return strings.HasSuffix(n, "key")
}

// RedactQuery returns a raw query with the value of every parameter SecretName flags replaced by
// "REDACTED", for the audit record; policies see the query unredacted. A query that does not parse
// is redacted whole.
func RedactQuery(rawQuery string) string {
	if rawQuery == "" {
		return ""
	}
	var b strings.Builder
	for i, pair := range splitQuery(rawQuery) {
		if i > 0 {
			b.WriteByte('&')
		}
		name, _, hasValue := strings.Cut(pair, "=")
		decoded, err := url.QueryUnescape(name)
		if err != nil {
			return "REDACTED"
		}
		if hasValue && SecretName(decoded) {
			b.WriteString(name + "=REDACTED")
			continue
		}
		b.WriteString(pair)
	}
	return b.String()
}

// splitQuery splits on both '&' and ';': some servers treat ';' as a separator, so a policy sees
// every parameter any server could.
func splitQuery(q string) []string {
	return strings.FieldsFunc(q, func(r rune) bool { return r == '&' || r == ';' })
}

// parsedQuery is a query string as policies see it: every value of every parameter.
type parsedQuery struct {
	names  []string // in first-seen order
	values map[string][]string
}

func parseQuery(raw string) (parsedQuery, error) {
	q := parsedQuery{values: map[string][]string{}}
	for _, pair := range splitQuery(raw) {
		name, value, _ := strings.Cut(pair, "=")
		n, err := url.QueryUnescape(name)
		if err != nil {
			return q, fmt.Errorf("%w: parameter %q: invalid percent-encoding", errQueryMalformed, name)
		}
		v, err := url.QueryUnescape(value)
		if err != nil {
			return q, fmt.Errorf("%w: parameter %q: invalid percent-encoding", errQueryMalformed, n)
		}
		if !utf8.ValidString(n) || !utf8.ValidString(v) {
			return q, fmt.Errorf("%w: parameter %q: invalid UTF-8", errQueryMalformed, n)
		}
		if _, seen := q.values[n]; !seen {
			q.names = append(q.names, n)
		}
		q.values[n] = append(q.values[n], v)
	}
	return q, nil
}

func (q parsedQuery) entity() types.Entity {
	tags := make(types.RecordMap, len(q.values))
	for name, vals := range q.values {
		set := make([]types.Value, len(vals))
		for i, v := range vals {
			set[i] = types.String(v)
		}
		tags[types.String(name)] = types.NewSet(set...)
	}
	return types.Entity{UID: queryUID, Tags: record(tags)}
}

func (q parsedQuery) params() types.Set {
	vals := make([]types.Value, len(q.names))
	for i, n := range q.names {
		vals[i] = types.String(n)
	}
	return types.NewSet(vals...)
}

// headerEntity exposes the request's headers, by lowercase name, minus every header that may carry
// a credential: SecretName's, and the hidden ones (injected credential headers, configuration).
func headerEntity(h http.Header, hidden map[string]bool) types.Entity {
	tags := make(types.RecordMap, len(h))
	for name, vals := range h {
		n := strings.ToLower(name)
		if len(vals) == 0 || strings.HasPrefix(n, ":") || hidden[n] || SecretName(n) {
			continue
		}
		tags[types.String(n)] = types.String(strings.Join(vals, ", "))
	}
	return types.Entity{UID: headersUID, Tags: record(tags)}
}

// MediaType is the Content-Type's media type, lowercased, without parameters: context.content_type,
// and the audit record's content.content_type.
func MediaType(h http.Header) string {
	ct := h.Get("Content-Type")
	if ct == "" {
		return ""
	}
	if mt, _, err := mime.ParseMediaType(ct); err == nil {
		return mt
	}
	mt, _, _ := strings.Cut(ct, ";")
	return strings.ToLower(strings.TrimSpace(mt))
}

func isJSONType(mt string) bool {
	return mt == "application/json" || strings.HasSuffix(mt, "+json")
}

// decodeBody undoes the request's Content-Encoding (gzip, deflate, in the order listed), refusing
// an encoding it does not know. What decodes to more than max bytes is cut there (a decompression
// bomb inflates no further), and a partial body (cut at max_body_bytes) decodes as far as it goes:
// cut says either happened.
func decodeBody(h http.Header, body []byte, max int64, partial bool) ([]byte, bool, error) {
	var codings []string
	for _, v := range h.Values("Content-Encoding") {
		for _, c := range strings.Split(v, ",") {
			if c = strings.ToLower(strings.TrimSpace(c)); c != "" && c != "identity" {
				codings = append(codings, c)
			}
		}
	}
	cut := partial
	for i := len(codings) - 1; i >= 0; i-- {
		var r io.Reader
		var err error
		switch codings[i] {
		case "gzip", "x-gzip":
			r, err = gzip.NewReader(bytes.NewReader(body))
		case "deflate":
			// HTTP's deflate is zlib-wrapped; some clients send raw deflate.
			if r, err = zlib.NewReader(bytes.NewReader(body)); err != nil {
				r, err = flate.NewReader(bytes.NewReader(body)), nil
			}
		default:
			return nil, cut, fmt.Errorf("%w: content-encoding %q cannot be inspected", errBodyMalformed, codings[i])
		}
		if err != nil {
			return nil, cut, fmt.Errorf("%w: content-encoding %s: %v", errBodyMalformed, codings[i], err)
		}
		decoded, err := io.ReadAll(io.LimitReader(r, max+1))
		if cut && errors.Is(err, io.ErrUnexpectedEOF) {
			err = nil
		}
		if err != nil {
			return nil, cut, fmt.Errorf("%w: content-encoding %s: %v", errBodyMalformed, codings[i], err)
		}
		if int64(len(decoded)) > max {
			decoded, cut = decoded[:max], true
		}
		body = decoded
	}
	return body, cut, nil
}

// jsonEntity parses the top-level fields of a JSON object body into the Firma::Json entity: the
// fields the schema types as attributes, every other string, number or boolean as a tag. A body
// that is not a JSON object gives an empty entity, unless its Content-Type says JSON or it starts
// with '{': then anything a server could read differently from firma is refused — invalid JSON or
// UTF-8, trailing data, a key given twice (also differing only in case: some servers match keys
// case-insensitively) and a typed field of the wrong type.
func jsonEntity(body []byte, mt string) (types.Entity, error) {
	ent := types.Entity{UID: jsonUID}
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if !isJSONType(mt) && !bytes.HasPrefix(trimmed, []byte("{")) {
		return ent, nil
	}
	if len(trimmed) == 0 {
		return ent, nil
	}
	if !utf8.Valid(body) {
		return ent, fmt.Errorf("%w: invalid UTF-8", errBodyMalformed)
	}
	if !json.Valid(body) {
		var v json.RawMessage
		err := json.Unmarshal(body, &v)
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return ent, fmt.Errorf("%w: invalid JSON at byte %d: %v", errBodyMalformed, se.Offset, se)
		}
		return ent, fmt.Errorf("%w: invalid JSON", errBodyMalformed)
	}
	if trimmed[0] != '{' {
		return ent, nil // a JSON array or scalar has no fields
	}
	// The body is valid JSON: walk the top-level object without decoding what no policy can read.
	attrs, tags := types.RecordMap{}, types.RecordMap{}
	seen := map[string]string{}
	i := skipSpace(trimmed, 1)
	for trimmed[i] != '}' {
		end := scanJSON(trimmed, i)
		key, err := jsonString(trimmed[i:end])
		if err != nil {
			return ent, fmt.Errorf("%w: %v", errBodyMalformed, err)
		}
		i = skipSpace(trimmed, end) + 1 // past ':'
		i = skipSpace(trimmed, i)
		end = scanJSON(trimmed, i)
		folded := strings.ToLower(key)
		if first, dup := seen[folded]; dup {
			return ent, fmt.Errorf("%w: JSON key %q given twice (as %q and %q)", errBodyMalformed, folded, first, key)
		}
		seen[folded] = key
		if err := addJSONField(attrs, tags, key, trimmed[i:end]); err != nil {
			return ent, err
		}
		if i = skipSpace(trimmed, end); trimmed[i] == ',' {
			i = skipSpace(trimmed, i+1)
		}
	}
	ent.Attributes, ent.Tags = record(attrs), record(tags)
	return ent, nil
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// scanJSON returns the end of the JSON value starting at b[i], which must be valid JSON.
func scanJSON(b []byte, i int) int {
	switch b[i] {
	case '"':
		for i++; b[i] != '"'; i++ {
			if b[i] == '\\' {
				i++
			}
		}
		return i + 1
	case '{', '[':
		depth := 0
		for ; ; i++ {
			switch b[i] {
			case '"':
				i = scanJSON(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
	}
	for i < len(b) && !strings.ContainsRune(",}] \t\r\n", rune(b[i])) {
		i++
	}
	return i
}

// jsonString decodes a JSON string literal, escapes and all.
func jsonString(raw []byte) (string, error) {
	if bytes.IndexByte(raw, '\\') < 0 {
		return string(raw[1 : len(raw)-1]), nil
	}
	var s string
	err := json.Unmarshal(raw, &s)
	return s, err
}

func addJSONField(attrs, tags types.RecordMap, key string, raw json.RawMessage) error {
	kind := raw[0]
	if kind == 'n' { // null: as if absent
		return nil
	}
	want, typed := jsonFields[key]
	if !typed {
		switch kind {
		case '{', '[':
		case '"':
			s, err := jsonString(raw)
			if err != nil {
				return fmt.Errorf("%w: json.%s: %v", errBodyMalformed, key, err)
			}
			tags[types.String(key)] = types.String(s)
		default: // number or boolean, as written
			tags[types.String(key)] = types.String(raw)
		}
		return nil
	}
	v, err := typedJSONValue(raw, want)
	if err != nil {
		return fmt.Errorf("%w: json.%s: %v", errBodyMalformed, key, err)
	}
	attrs[types.String(key)] = v
	return nil
}

func typedJSONValue(raw json.RawMessage, want resolved.IsType) (types.Value, error) {
	kind := raw[0]
	isNumber := kind == '-' || kind >= '0' && kind <= '9'
	switch want {
	case resolved.IsType(resolved.StringType{}):
		if kind != '"' {
			return nil, fmt.Errorf("want a string, got %s", abbreviate(raw))
		}
		s, err := jsonString(raw)
		return types.String(s), err
	case resolved.IsType(resolved.BoolType{}):
		if kind != 't' && kind != 'f' {
			return nil, fmt.Errorf("want true or false, got %s", abbreviate(raw))
		}
		return types.Boolean(kind == 't'), nil
	case resolved.IsType(resolved.LongType{}):
		if !isNumber {
			return nil, fmt.Errorf("want an integer, got %s", abbreviate(raw))
		}
		return parseLong(string(raw))
	case resolved.IsType(resolved.ExtensionType("decimal")):
		if !isNumber {
			return nil, fmt.Errorf("want a number, got %s", abbreviate(raw))
		}
		return parseDecimal(string(raw))
	}
	return nil, fmt.Errorf("no conversion to %s", typeName(want))
}

// abbreviate shows at most 32 bytes of a JSON value in a message.
func abbreviate(raw []byte) string {
	if len(raw) > 32 {
		return string(raw[:32]) + "…"
	}
	return string(raw)
}

// parseDecimal converts a JSON number to a Cedar decimal, rounded half away from zero to the four
// places a decimal holds.
func parseDecimal(num string) (types.Decimal, error) {
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return types.Decimal{}, fmt.Errorf("%q is not a number", num)
	}
	r.Mul(r, big.NewRat(10000, 1))
	q, m := new(big.Int).QuoRem(r.Num(), r.Denom(), new(big.Int))
	if new(big.Int).Mul(new(big.Int).Abs(m), big.NewInt(2)).Cmp(r.Denom()) >= 0 {
		q.Add(q, big.NewInt(int64(r.Sign())))
	}
	if !q.IsInt64() {
		return types.Decimal{}, fmt.Errorf("%s is out of a decimal's range", num)
	}
	return types.NewDecimal(q.Int64(), -4)
}

func parseLong(num string) (types.Long, error) {
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("want an integer, got %s", num)
	}
	return types.Long(n), nil
}
