// Package keyfile is firma's one way to read and write private key material: a private key file must
// be a regular file that neither group nor others can read, hold exactly one unencrypted PEM private
// key, and is written temp → chmod → fsync → link/rename → fsync dir, never over an existing key.
// The audit signing key, the authority's key and the MITM CA's key all go through it; what kind of
// key each needs is the caller's check.
package keyfile

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

var (
	// ErrInsecure means a private key file is not a regular file or is readable by group or others.
	ErrInsecure = errors.New("private key file is readable by group or others")
	// ErrMalformed means a file does not hold exactly one usable PEM private key.
	ErrMalformed = errors.New("malformed private key file")
	// ErrExists means WriteNew found the file already there: keys are never overwritten.
	ErrExists = fmt.Errorf("key file already exists: %w", fs.ErrExist)
)

// maxSize bounds what is read: no key file is larger.
const maxSize = 64 << 10

// ReadPrivate reads a private key file after checking that it is a regular file with no group or
// other permission bits (chmod 600).
func ReadPrivate(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %w: not a regular file", path, ErrInsecure)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%s: %w: mode %04o (chmod 600 it)", path, ErrInsecure, perm)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxSize {
		return nil, fmt.Errorf("%s: %w: larger than %d bytes", path, ErrMalformed, maxSize)
	}
	return data, nil
}

// ParsePrivateKey parses the one private key in data: "PRIVATE KEY" (PKCS #8: ECDSA, Ed25519, RSA)
// or "EC PRIVATE KEY" (SEC 1, optionally after the "EC PARAMETERS" block openssl writes). Encrypted
// keys, other block types, a second key and trailing data are refused.
func ParsePrivateKey(data []byte) (crypto.Signer, error) {
	var key crypto.Signer
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if len(block.Headers) != 0 {
			return nil, fmt.Errorf("%w: PEM block %q has headers (encrypted keys are not supported)", ErrMalformed, block.Type)
		}
		var (
			k   any
			err error
		)
		switch block.Type {
		case "EC PARAMETERS":
			continue
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(block.Bytes)
		default:
			return nil, fmt.Errorf("%w: PEM block %q, want \"PRIVATE KEY\"", ErrMalformed, block.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
		}
		if key != nil {
			return nil, fmt.Errorf("%w: more than one private key", ErrMalformed)
		}
		signer, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%w: %T cannot sign", ErrMalformed, k)
		}
		key = signer
	}
	if key == nil {
		return nil, fmt.Errorf("%w: no PEM block holding a private key", ErrMalformed)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: trailing data after the PEM blocks", ErrMalformed)
	}
	return key, nil
}

// LoadPrivate is ReadPrivate and ParsePrivateKey; errors name the file.
func LoadPrivate(path string) (crypto.Signer, error) {
	data, err := ReadPrivate(path)
	if err != nil {
		return nil, err
	}
	key, err := ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return key, nil
}

// WriteNew writes data to path, which must not exist (ErrExists), through a temporary file in the same
// directory that is chmodded and fsynced before it is linked into place.
func WriteNew(path string, data []byte, perm os.FileMode) error {
	tmp, err := writeTemp(path, data, perm)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s: %w", path, ErrExists)
		}
		return err
	}
	return syncDir(filepath.Dir(path))
}

// WriteAtomic replaces path with data: temp → chmod → fsync → rename → fsync dir. Readers see the
// old content or the new, never a mix.
func WriteAtomic(path string, data []byte, perm os.FileMode) error {
	tmp, err := writeTemp(path, data, perm)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(path))
}

func writeTemp(path string, data []byte, perm os.FileMode) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return "", err
	}
	name := f.Name()
	fail := func(err error) (string, error) {
		f.Close()
		os.Remove(name)
		return "", err
	}
	if err := f.Chmod(perm); err != nil {
		return fail(err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(name)
		return "", err
	}
	return name, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
