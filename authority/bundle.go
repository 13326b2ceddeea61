package authority

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/openfirma/firma/policies"
)

// ErrBadBundle is wrapped by every bundle verification failure.
var ErrBadBundle = errors.New("bad policy bundle")

// errVersionMismatch: a bundle whose version is not the hash of its content.
var errVersionMismatch = errors.New("version does not match the content")

// Bundle is a policy set as the authority serves it: every *.cedar file of policy_dir by base name,
// and the schema they were validated against. The daemon hands Files and Schema to
// policies.(*Engine).LoadBundle.
type Bundle struct {
	Version    string            // content hash of Schema and Files: "sha256:<hex>"
	Files      map[string][]byte // base name ("claude-code.cedar") → contents
	SchemaName string            // e.g. "firma.cedarschema"
	Schema     []byte            // Cedar schema text
	TTL        time.Duration     // bundle_ttl_seconds: how long a sidecar may go without contact
	IssuedAt   time.Time         // when this copy was signed
}

// bundleFile is one file on the wire.
type bundleFile struct {
	Name    string `json:"name"`
	Content string `json:"content"`
}

// bundleClaims is a signed bundle's payload.
type bundleClaims struct {
	Version    string       `json:"version"`
	Files      []bundleFile `json:"files"`
	Schema     bundleFile   `json:"schema"`
	TTLSeconds int64        `json:"bundle_ttl_seconds"`
	IssuedAt   time.Time    `json:"iat"`
	Expires    time.Time    `json:"exp"`
	Issuer     string       `json:"iss"`
}

// freshnessClaims is the heartbeat that says "version V is still current" (sent with a 304).
type freshnessClaims struct {
	Version    string    `json:"version"`
	TTLSeconds int64     `json:"bundle_ttl_seconds"`
	IssuedAt   time.Time `json:"iat"`
	Issuer     string    `json:"iss"`
}

// bundleVersion hashes the schema and every file with length framing, in name order.
func bundleVersion(schemaName string, schema []byte, files map[string][]byte) string {
	h := sha256.New()
	var n [8]byte
	write := func(b []byte) {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	write([]byte(schemaName))
	write(schema)
	for _, name := range slices.Sorted(maps.Keys(files)) {
		write([]byte(name))
		write(files[name])
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// BuildBundle reads every *.cedar file directly in dir and validates them, through the policies
// package, against schema (nil: the embedded one). A policy that does not validate is an error
// naming file and line.
func BuildBundle(dir string, schema *policies.Schema, ttl time.Duration) (*Bundle, error) {
	if schema == nil {
		schema = policies.EmbeddedSchema()
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("reading policy dir: %w", err)
	}
	files := map[string][]byte{}
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".cedar") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("reading policy dir: %w", err)
		}
		if !utf8.Valid(data) {
			return nil, fmt.Errorf("%s: not UTF-8", filepath.Join(dir, e.Name()))
		}
		files[e.Name()] = data
	}
	if _, err := policies.ParseFiles(prefixed(dir, files), schema); err != nil {
		return nil, err
	}
	b := &Bundle{
		Files:      files,
		SchemaName: filepath.Base(schema.Name()),
		Schema:     schema.Source(),
		TTL:        ttl,
	}
	b.Version = bundleVersion(b.SchemaName, b.Schema, b.Files)
	return b, nil
}

// prefixed keys files by their path in dir, so that validation errors name the real file.
func prefixed(dir string, files map[string][]byte) map[string][]byte {
	out := make(map[string][]byte, len(files))
	for name, data := range files {
		out[filepath.Join(dir, name)] = data
	}
	return out
}

// signBundle signs b as of now.
func signBundle(key Signer, b *Bundle, now time.Time) (string, error) {
	c := bundleClaims{
		Version:    b.Version,
		Schema:     bundleFile{Name: b.SchemaName, Content: string(b.Schema)},
		TTLSeconds: int64(b.TTL / time.Second),
		IssuedAt:   now.UTC(),
		Expires:    now.UTC().Add(b.TTL),
		Issuer:     IssuerName,
	}
	for _, name := range slices.Sorted(maps.Keys(b.Files)) {
		c.Files = append(c.Files, bundleFile{Name: name, Content: string(b.Files[name])})
	}
	return signMessage(key, c, implicitBundle)
}

// VerifyBundle checks a signed bundle under pub: signature, issuer, file names, TTL, and that the
// version is the hash of the content. It does not judge freshness (see Client).
func VerifyBundle(pub ed25519.PublicKey, raw string) (*Bundle, error) {
	var c bundleClaims
	if err := verifyMessage(pub, raw, implicitBundle, &c); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadBundle, err)
	}
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %w: %s", ErrBadBundle, errMalformed, fmt.Sprintf(format, a...))
	}
	if c.Issuer != IssuerName {
		return nil, bad("issuer %q", c.Issuer)
	}
	if c.TTLSeconds <= 0 || c.TTLSeconds > maxBundleTTL {
		return nil, bad("bundle_ttl_seconds %d", c.TTLSeconds)
	}
	if c.IssuedAt.IsZero() {
		return nil, bad("no iat")
	}
	if c.Schema.Name == "" || strings.ContainsAny(c.Schema.Name, "/\\") {
		return nil, bad("schema name %q", c.Schema.Name)
	}
	b := &Bundle{
		Files:      map[string][]byte{},
		SchemaName: c.Schema.Name,
		Schema:     []byte(c.Schema.Content),
		TTL:        time.Duration(c.TTLSeconds) * time.Second,
		IssuedAt:   c.IssuedAt,
	}
	for _, f := range c.Files {
		if !strings.HasSuffix(f.Name, ".cedar") || strings.ContainsAny(f.Name, "/\\") || f.Name[0] == '.' {
			return nil, bad("file name %q", f.Name)
		}
		if _, dup := b.Files[f.Name]; dup {
			return nil, bad("file %q twice", f.Name)
		}
		b.Files[f.Name] = []byte(f.Content)
	}
	b.Version = bundleVersion(b.SchemaName, b.Schema, b.Files)
	if b.Version != c.Version {
		return nil, fmt.Errorf("%w: %w: %s, content is %s", ErrBadBundle, errVersionMismatch, c.Version, b.Version)
	}
	return b, nil
}

func signFreshness(key Signer, version string, ttl time.Duration, now time.Time) (string, error) {
	return signMessage(key, freshnessClaims{
		Version: version, TTLSeconds: int64(ttl / time.Second), IssuedAt: now.UTC(), Issuer: IssuerName,
	}, implicitFreshness)
}

func verifyFreshness(pub ed25519.PublicKey, raw string) (*freshnessClaims, error) {
	var c freshnessClaims
	if err := verifyMessage(pub, raw, implicitFreshness, &c); err != nil {
		return nil, fmt.Errorf("%w: freshness: %w", ErrBadBundle, err)
	}
	if c.Issuer != IssuerName || c.IssuedAt.IsZero() || c.Version == "" {
		return nil, fmt.Errorf("%w: %w: freshness token incomplete", ErrBadBundle, errMalformed)
	}
	return &c, nil
}

// revocationClaims is one signed page of the revocation list: entries [From, Next). Prefix is the
// chain hash of the entries before From, Head that of all entries up to Next (revocationChain), so
// a client can tell whether a page continues the list it holds whichever replica signed it.
//
// Epoch repeats Head for sidecars of earlier versions, which name their list by an epoch and
// send it back; the server answers them with whole lists (see handleRevocations).
type revocationClaims struct {
	From     int          `json:"from"`
	Next     int          `json:"next"`
	Prefix   string       `json:"prefix"`
	Head     string       `json:"head"`
	Epoch    string       `json:"epoch"`
	Entries  []Revocation `json:"entries"`
	IssuedAt time.Time    `json:"iat"`
	Issuer   string       `json:"iss"`
}

// revocationChainStart is the chain hash of the empty list.
var revocationChainStart = func() string {
	sum := sha256.Sum256([]byte("firma revocation list v1"))
	return hex.EncodeToString(sum[:])
}()

// revocationChain extends the chain hash prev over recs: each step hashes the previous hash and the
// record's fields, length-framed. Replicas reading the same file compute the same hashes.
func revocationChain(prev string, recs []Revocation) string {
	h := prev
	for _, r := range recs {
		d := sha256.New()
		var n [8]byte
		for _, field := range []string{h, r.TokenID, formatRevokedAt(r.RevokedAt), r.Reason} {
			binary.BigEndian.PutUint64(n[:], uint64(len(field)))
			d.Write(n[:])
			d.Write([]byte(field))
		}
		h = hex.EncodeToString(d.Sum(nil))
	}
	return h
}

func formatRevokedAt(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func signRevocations(key Signer, c revocationClaims) (string, error) {
	c.Issuer = IssuerName
	return signMessage(key, c, implicitRevocation)
}

func verifyRevocations(pub ed25519.PublicKey, raw string) (*revocationClaims, error) {
	var c revocationClaims
	if err := verifyMessage(pub, raw, implicitRevocation, &c); err != nil {
		return nil, fmt.Errorf("revocation list: %w", err)
	}
	bad := func(format string, a ...any) error {
		return fmt.Errorf("revocation list: %w: %s", errMalformed, fmt.Sprintf(format, a...))
	}
	if c.Issuer != IssuerName || c.IssuedAt.IsZero() || c.Prefix == "" {
		return nil, bad("incomplete")
	}
	if c.From < 0 || c.Next != c.From+len(c.Entries) {
		return nil, bad("entries [%d, %d) but %d given", c.From, c.Next, len(c.Entries))
	}
	if c.From == 0 && c.Prefix != revocationChainStart {
		return nil, bad("a list from 0 with a prefix")
	}
	if revocationChain(c.Prefix, c.Entries) != c.Head {
		return nil, bad("head does not match the entries")
	}
	return &c, nil
}
