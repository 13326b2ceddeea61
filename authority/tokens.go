package authority

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/openfirma/firma/internal/keyfile"
	"github.com/pelletier/go-toml/v2"
)

// The tokens file (authority.tokens_file) lists the sidecars that may authenticate by bearer
// token, one entry per sidecar, holding only the SHA-256 of its token:
//
//	# firma authority: sidecar bearer tokens, as SHA-256 hashes.
//	[[sidecar]]
//	name = "web-1"
//	token_sha256 = "4c1b…"   # 64 hex digits
//
// The tokens themselves exist only in each sidecar's token_file, so a copy of this file (a
// backup, a config repository) lets nobody in. Tokens are 256 random bits, so a plain hash is as
// strong as a slow one. Remove an entry and that sidecar is refused from the next request: the
// authority rereads the file when it changes.
type tokensDoc struct {
	Sidecar []tokenEntry `toml:"sidecar"`
}

type tokenEntry struct {
	Name        string `toml:"name"`
	TokenSHA256 string `toml:"token_sha256"`
}

// tokenPrefix starts every token firma generates, so that secret scanners can recognise them.
const tokenPrefix = "firma-sidecar-"

// sidecarNamePattern is what a sidecar may be called: it names files (NAME.crt, NAME.token) and
// appears in logs and certificates.
var sidecarNamePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidSidecarName reports whether name may name a sidecar.
func ValidSidecarName(name string) bool { return sidecarNamePattern.MatchString(name) }

// SidecarTokens maps token hashes to sidecar names.
type SidecarTokens struct {
	byHash map[[sha256.Size]byte]string
	names  []string // in file order
}

// Names are the sidecars listed, in file order.
func (t *SidecarTokens) Names() []string { return append([]string(nil), t.names...) }

// Lookup returns the sidecar whose token is token.
func (t *SidecarTokens) Lookup(token string) (string, bool) {
	if t == nil || token == "" {
		return "", false
	}
	name, ok := t.byHash[sha256.Sum256([]byte(token))]
	return name, ok
}

// ParseTokens decodes a tokens file strictly. Errors name the file and the line or entry.
func ParseTokens(path string, data []byte) (*SidecarTokens, error) {
	var doc tokensDoc
	if err := decodeStrict(path, data, &doc); err != nil {
		return nil, err
	}
	t := &SidecarTokens{byHash: map[[sha256.Size]byte]string{}}
	seen := map[string]bool{}
	var errs []error
	for i, e := range doc.Sidecar {
		where := fmt.Sprintf("%s: sidecar[%d]", path, i)
		if !ValidSidecarName(e.Name) {
			errs = append(errs, fmt.Errorf("%s: name %q is not a valid sidecar name", where, e.Name))
			continue
		}
		where = fmt.Sprintf("%s (%s)", where, e.Name)
		if seen[e.Name] {
			errs = append(errs, fmt.Errorf("%s: name listed twice", where))
			continue
		}
		seen[e.Name] = true
		raw, err := hex.DecodeString(e.TokenSHA256)
		if err != nil || len(raw) != sha256.Size {
			errs = append(errs, fmt.Errorf("%s: token_sha256 must be 64 hex digits", where))
			continue
		}
		h := [sha256.Size]byte(raw)
		if other, dup := t.byHash[h]; dup {
			errs = append(errs, fmt.Errorf("%s: same token hash as %q", where, other))
			continue
		}
		t.byHash[h] = e.Name
		t.names = append(t.names, e.Name)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return t, nil
}

// ReadTokens reads and parses the tokens file at path.
func ReadTokens(path string) (*SidecarTokens, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseTokens(path, data)
}

// NewSidecarToken returns a fresh bearer token: the prefix and 256 random bits.
func NewSidecarToken() string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return tokenPrefix + base64.RawURLEncoding.EncodeToString(b[:])
}

// HashToken is the token_sha256 of token.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// AddTokens adds entries (name → token) to the tokens file at path, creating it (0600) if
// missing, and rewrites it atomically. A name already listed is an error: replace a token by
// removing its entry first.
func AddTokens(path string, tokens map[string]string, order []string) error {
	var existing []byte
	if data, err := os.ReadFile(path); err == nil {
		if _, err := ParseTokens(path, data); err != nil {
			return err
		}
		existing = data
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var doc tokensDoc
	if err := toml.Unmarshal(existing, &doc); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	var b bytes.Buffer
	if len(existing) == 0 {
		b.WriteString("# firma authority: sidecar bearer tokens, as SHA-256 hashes (the tokens are only on the\n" +
			"# sidecars). Remove an entry to refuse that sidecar; the authority rereads this file.\n")
	} else {
		b.Write(existing)
		if !bytes.HasSuffix(existing, []byte("\n")) {
			b.WriteByte('\n')
		}
	}
	for _, name := range order {
		for _, e := range doc.Sidecar {
			if e.Name == name {
				return fmt.Errorf("%s: sidecar %q already has a token; remove its entry to replace it", path, name)
			}
		}
		fmt.Fprintf(&b, "\n[[sidecar]]\nname = %q\ntoken_sha256 = %q\n", name, HashToken(tokens[name]))
	}
	if _, err := ParseTokens(path, b.Bytes()); err != nil {
		return err
	}
	return keyfile.WriteAtomic(path, b.Bytes(), 0o600)
}

// readTokenFile reads a sidecar's token_file: one token, surrounding whitespace ignored.
func readTokenFile(path string) (string, error) {
	data, err := keyfile.ReadPrivate(path) // the same rules as a private key: regular, 0600
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" || strings.ContainsFunc(tok, func(r rune) bool { return r <= ' ' || r > '~' }) {
		return "", fmt.Errorf("%s: not a token (one line of printable ASCII)", path)
	}
	return tok, nil
}

// decodeStrict decodes TOML data into v, refusing unknown keys; errors name path, line and column.
func decodeStrict(path string, data []byte, v any) error {
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		return nil
	}
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) && len(strict.Errors) > 0 {
		row, col := strict.Errors[0].Position()
		return fmt.Errorf("%s:%d:%d: unknown key %q", path, row, col, strings.Join(strict.Errors[0].Key(), "."))
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, col := de.Position()
		return fmt.Errorf("%s:%d:%d: %v", path, row, col, de)
	}
	return fmt.Errorf("%s: %w", path, err)
}
