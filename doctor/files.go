package doctor

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/openfirma/firma/authority"
	"github.com/openfirma/firma/daemon"
	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/daemon/control"
	"github.com/openfirma/firma/daemon/l7"
	"github.com/openfirma/firma/policies"
)

// Files checks every file and directory cfg names, as the sidecar and the authority would use
// them, without starting either: policy and mapping files, schemas, the audit log's directory and
// signing key, the CA, upstream roots, credential files, capability files, authority keys and
// revocation lists, the control socket's directory.
func Files(cfg Config) []Check {
	var checks []Check
	if s := cfg.Sidecar; s != nil {
		checks = append(checks, sidecarPolicy(s))
		checks = append(checks, auditDir(s.Audit))
		checks = append(checks, auditKey(s.Audit))
		checks = append(checks, caFiles(s))
		if s.Upstream.CAFile != "" {
			checks = append(checks, upstreamCA(s.Upstream.CAFile))
		}
		for i, c := range s.Credentials {
			checks = append(checks, credentialFile(i, c.Host, c.ValueFromFile, c.ValueFromEnv))
		}
		checks = append(checks, sidecarAuthority(s.Authority)...)
		checks = append(checks, capabilityFiles(s)...)
		if s.Control.Socket != "" {
			checks = append(checks, socketDir(s.Control.Socket))
		}
	}
	if a := cfg.Authority; a != nil {
		checks = append(checks, authorityFiles(a)...)
	}
	return checks
}

// cedarFiles counts the *.cedar files directly in dir, as the policy loaders read them.
func cedarFiles(dir string) (int, error) {
	m, err := filepath.Glob(filepath.Join(dir, "*.cedar"))
	if err != nil {
		return 0, err
	}
	return len(m), nil
}

// policyDir checks that dir is a directory and says how many .cedar files it holds; ok is false
// when it is not usable (the returned check says why).
func policyDir(name, key, dir, empty string) (Check, bool) {
	fi, err := os.Stat(dir)
	switch {
	case err != nil:
		return fail(name, "create it, or point "+key+" at the directory of your .cedar files", "%s: %v", key, err), false
	case !fi.IsDir():
		return fail(name, "point "+key+" at a directory of .cedar files", "%s: %s is not a directory", key, dir), false
	}
	n, err := cedarFiles(dir)
	if err != nil {
		return fail(name, "", "%s: %v", key, err), false
	}
	if n == 0 {
		return warn(name, "add .cedar files to "+dir+", or fix "+key, "%s: %s holds no .cedar file: %s", key, dir, empty), true
	}
	return ok(name, "%s: %d .cedar files in %s", key, n, dir), true
}

func sidecarPolicy(s *daemon.Config) Check {
	const name = "config.policy"
	var dirCheck *Check
	if s.Policy.Dir != "" {
		c, usable := policyDir(name, "sidecar.policy.dir", s.Policy.Dir, "every request is denied (default deny)")
		if !usable {
			return c
		}
		if c.Status != OK {
			dirCheck = &c
		}
	}
	e, err := policies.New(s.PolicyConfig(), s.Mapping, zerolog.Nop())
	if err != nil {
		return fail(name, "fix the file and line named; `firma policy validate -c` lists every problem", "%v", err)
	}
	if dirCheck != nil {
		return *dirCheck
	}
	source := "the embedded default policy"
	if s.Policy.Dir != "" {
		source = s.Policy.Dir
	}
	rules := "embedded mapping rules"
	if s.Mapping.RulesPath != "" {
		rules = s.Mapping.RulesPath
	}
	schema := "embedded schema"
	if s.Policy.Schema != "" {
		schema = s.Policy.Schema
	}
	return ok(name, "%d policies from %s, %d mapping rules from %s, %s; default_protected=%v",
		e.Set().Len(), source, len(e.Rules().All()), rules, schema, s.Mapping.DefaultProtected)
}

// writableDir reports whether this process could create files in dir, or in the directory the
// sidecar would create it under (nearest existing ancestor).
func writableDir(dir string) (existing string, err error) {
	p := dir
	for {
		fi, err := os.Stat(p)
		if err == nil {
			if !fi.IsDir() {
				return p, fmt.Errorf("%s is not a directory", p)
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return p, err
		}
		parent := filepath.Dir(p)
		if parent == p {
			return p, err
		}
		p = parent
	}
	if err := unix.Access(p, unix.W_OK|unix.X_OK); err != nil {
		return p, fmt.Errorf("%s is not writable (uid %d): %w", p, os.Geteuid(), err)
	}
	return p, nil
}

func auditDir(a audit.Config) Check {
	const name = "config.audit_dir"
	if a.FilePath == "" {
		return fail(name, "set [sidecar.audit] file_path", "sidecar.audit.file_path is not set")
	}
	dir := filepath.Dir(a.FilePath)
	existing, err := writableDir(dir)
	if err != nil {
		return fail(name, "make "+existing+" writable by the sidecar (a read-only or full filesystem denies every new connection)",
			"audit log %s: %v", a.FilePath, err)
	}
	if fi, err := os.Lstat(a.FilePath); err == nil {
		if !fi.Mode().IsRegular() {
			return fail(name, "move it away; the audit log must be a regular file", "audit log %s is not a regular file", a.FilePath)
		}
		if err := unix.Access(a.FilePath, unix.W_OK); err != nil {
			return fail(name, "make it writable by the sidecar", "audit log %s is not writable: %v", a.FilePath, err)
		}
		return ok(name, "%s: writable, %d bytes", a.FilePath, fi.Size())
	}
	if existing != dir {
		return ok(name, "%s: created under %s on the sidecar's first start", a.FilePath, existing)
	}
	return ok(name, "%s: directory writable, log created on the sidecar's first start", a.FilePath)
}

func auditKey(a audit.Config) Check {
	const name = "config.audit_key"
	if a.SigningKeyPath == "" {
		return warn(name, "firma audit keygen --out /etc/firma/audit.key, then set [sidecar.audit] signing_key_path",
			"no sidecar.audit.signing_key_path: records are hash-chained but not signed, so whoever can write the log can rewrite it")
	}
	key, err := audit.LoadSigningKey(a.SigningKeyPath)
	if err != nil {
		return fail(name, "chmod 600 it, or create one with `firma audit keygen`", "%v", err)
	}
	detail := fmt.Sprintf("%s: ECDSA P-256, key id %.16s…", a.SigningKeyPath, audit.KeyID(key.Public()))
	pubPath := audit.PublicKeyPath(a.SigningKeyPath)
	if pub, err := audit.LoadPublicKey(pubPath); err == nil {
		if audit.KeyID(pub) != audit.KeyID(key.Public()) {
			return fail(name, "regenerate "+pubPath+" with `openssl pkey -in "+a.SigningKeyPath+" -pubout`",
				"%s does not hold the public half of %s: `firma audit verify --pubkey` would reject every record", pubPath, a.SigningKeyPath)
		}
		detail += "; " + pubPath + " matches"
	}
	return ok(name, "%s", detail)
}

func caFiles(s *daemon.Config) Check {
	const name = "config.ca"
	dir := s.CA.Dir
	if dir == "" {
		return ok(name, "no [sidecar.ca] dir: TLS is never terminated (CONNECT-level decisions only)")
	}
	ca, err := l7.LoadCA(dir)
	if errors.Is(err, l7.ErrNoCA) {
		if _, werr := writableDir(dir); werr != nil {
			return fail(name, "create "+dir+" or make its parent writable", "no CA in %s yet, and the sidecar could not create it: %v", dir, werr)
		}
		return ok(name, "no CA in %s yet: the sidecar creates it on its first start", dir)
	}
	if err != nil {
		return fail(name, "fix the file named; the sidecar never regenerates a CA by itself", "%v", err)
	}
	cert := ca.Certificate()
	if left := time.Until(cert.NotAfter); left < 30*24*time.Hour {
		return warn(name, "plan a CA rotation: agents must trust the new certificate", "%s: expires %s", ca.CertPath(), cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return ok(name, "%s: SHA256 %s, valid until %s", ca.CertPath(), ca.Fingerprint(), cert.NotAfter.UTC().Format("2006-01-02"))
}

func upstreamCA(path string) Check {
	const name = "config.upstream_ca"
	data, err := os.ReadFile(path)
	if err != nil {
		return fail(name, "fix sidecar.upstream.ca_file", "%v", err)
	}
	n := 0
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return fail(name, "fix sidecar.upstream.ca_file", "%s: %v", path, err)
		}
		n++
	}
	if n == 0 {
		return fail(name, "sidecar.upstream.ca_file must hold PEM certificates", "%s holds no PEM certificate", path)
	}
	return ok(name, "%s: %d certificates", path, n)
}

func credentialFile(i int, host, file, env string) Check {
	name := fmt.Sprintf("config.credentials[%d]", i)
	if file == "" {
		where := "not set in this environment; the sidecar reads its own"
		if _, set := os.LookupEnv(env); set {
			where = "set in this environment"
		}
		return ok(name, "%s: from $%s (%s)", host, env, where)
	}
	fi, err := os.Stat(file)
	if err != nil {
		return fail(name, "create the file, or fix value_from_file", "%s: %v", host, err)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return fail(name, "make it readable by the sidecar", "%s: %v", host, err)
	}
	if strings.TrimSpace(string(data)) == "" {
		return fail(name, "put the secret in it, one line", "%s: %s is empty: requests to %s would fail", host, file, host)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return warn(name, "chmod 600 "+file, "%s: %s is readable by group or others (mode %04o)", host, file, fi.Mode().Perm())
	}
	return ok(name, "%s: from %s", host, file)
}

func sidecarAuthority(a authority.ClientConfig) []Check {
	const name = "config.authority"
	if !a.Stage1() {
		return []Check{warn(name, "set [sidecar.authority] url and public_key_path (or public_key_path alone)",
			"no [sidecar.authority]: capabilities are not enforced, only Cedar policy")}
	}
	var checks []Check
	pub, err := authority.LoadPublicKey(a.PublicKeyPath)
	if err != nil {
		checks = append(checks, fail(name, "copy the authority key's .pub here", "public_key_path: %v", err))
	} else {
		checks = append(checks, ok(name, "public key %s (key id %s)", a.PublicKeyPath, authority.KeyID(pub)))
	}
	if a.RevocationFile != "" {
		checks = append(checks, revocations("config.authority_revocations", a.RevocationFile))
	}
	if a.Enabled() {
		if _, err := writableDir(a.CacheDir); err != nil {
			checks = append(checks, fail("config.authority_cache", "make it writable by the sidecar", "cache_dir %s: %v", a.CacheDir, err))
		} else {
			checks = append(checks, ok("config.authority_cache", "cache_dir %s", a.CacheDir))
		}
	}
	return checks
}

func revocations(name, path string) Check {
	recs, bad, err := authority.ReadRevocations(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return ok(name, "%s does not exist yet: no token is revoked (the first revoke creates it)", path)
	case err != nil:
		return fail(name, "make it readable", "%s: %v", path, err)
	case bad != nil:
		return warn(name, "fix or remove the line named", "%s: %d revocations; %v", path, len(recs), bad)
	}
	return ok(name, "%s: %d revocations", path, len(recs))
}

func capabilityFiles(s *daemon.Config) []Check {
	var checks []Check
	var pub ed25519.PublicKey
	if s.Authority.PublicKeyPath != "" {
		if k, err := authority.LoadPublicKey(s.Authority.PublicKeyPath); err == nil {
			pub = k
		}
	}
	for i, a := range s.Agents {
		if a.CapabilityFile == "" {
			continue
		}
		name := fmt.Sprintf("config.agents[%d].capability", i)
		if pub == nil {
			if _, err := authority.ReadCapabilityFile(a.CapabilityFile); err != nil {
				checks = append(checks, fail(name, "issue one with `firma authority issue --output`", "%v", err))
			} else {
				checks = append(checks, ok(name, "%s (not verified: no usable public_key_path)", a.CapabilityFile))
			}
			continue
		}
		c, _, err := authority.LoadCapabilityFile(a.CapabilityFile, pub)
		switch {
		case err != nil:
			checks = append(checks, fail(name, "issue a new one with `firma authority issue --output`", "%v", err))
		case c.AgentID != a.AgentID:
			checks = append(checks, fail(name, "issue one for "+a.AgentID, "%s is for agent %q, not %q", a.CapabilityFile, c.AgentID, a.AgentID))
		case !time.Now().Before(c.Expires):
			checks = append(checks, fail(name, "issue a new one with `firma authority issue --output`", "%s expired at %s", a.CapabilityFile, c.Expires.UTC().Format(time.RFC3339)))
		default:
			checks = append(checks, ok(name, "%s: token %s for %s, expires %s", a.CapabilityFile, c.TokenID, c.AgentID, c.Expires.UTC().Format(time.RFC3339)))
		}
	}
	return checks
}

func socketDir(socket string) Check {
	const name = "config.control_socket"
	dir := filepath.Dir(socket)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if _, err := writableDir(dir); err != nil {
			return fail(name, "create "+dir+" (0700, root)", "%s: %v", dir, err)
		}
		return ok(name, "%s: directory created 0700 on the sidecar's first start", socket)
	}
	if err := control.CheckSocketDir(dir); err != nil {
		return fail(name, "use a root-owned directory such as "+filepath.Dir(control.DefaultSocket), "%v", err)
	}
	return ok(name, "%s: directory safe", socket)
}

func authorityFiles(a *authority.Config) []Check {
	var checks []Check
	var schema *policies.Schema
	if a.Schema != "" {
		s, err := policies.LoadSchema(a.Schema)
		if err != nil {
			checks = append(checks, fail("authority.schema", "fix the file and line named", "%v", err))
		} else {
			schema = s
			checks = append(checks, ok("authority.schema", "%s: %d action classes", a.Schema, len(s.ActionClasses())))
		}
	}
	if a.KeyFile != "" {
		checks = append(checks, authorityKey(a.KeyFile))
	}
	if a.PolicyDir != "" {
		c, usable := policyDir("authority.policy_dir", "authority.policy_dir", a.PolicyDir, "the bundle denies every request (default deny)")
		if usable {
			if b, err := authority.BuildBundle(a.PolicyDir, schema, a.BundleTTL()); err != nil {
				c = fail("authority.policy_dir", "fix the file and line named", "%v", err)
			} else if c.Status == OK {
				c.Detail = fmt.Sprintf("%s: %d .cedar files, bundle %.19s…", a.PolicyDir, len(b.Files), b.Version)
			}
		}
		checks = append(checks, c)
	}
	if a.IssuancePolicyDir != "" {
		c, usable := policyDir("authority.issuance_policy_dir", "authority.issuance_policy_dir", a.IssuancePolicyDir, "no capability can be issued")
		if usable && c.Status == OK {
			if _, err := policies.LoadDir(a.IssuancePolicyDir, schema); err != nil {
				c = fail("authority.issuance_policy_dir", "fix the file and line named", "%v", err)
			}
		}
		checks = append(checks, c)
	}
	if a.RevocationFile != "" {
		checks = append(checks, revocations("authority.revocation_file", a.RevocationFile))
	}
	return checks
}

func authorityKey(path string) Check {
	const name = "authority.key"
	key, err := authority.LoadPrivateKey(path)
	if err != nil {
		return fail(name, "chmod 600 it, or create one with `firma authority generate-key -o FILE`", "key_file: %v", err)
	}
	pub, _ := key.Public().(ed25519.PublicKey)
	detail := fmt.Sprintf("%s: Ed25519, key id %s", path, authority.KeyID(pub))
	if filePub, err := authority.LoadPublicKey(authority.PublicKeyPath(path)); err == nil {
		if !filePub.Equal(pub) {
			return fail(name, "regenerate the .pub, and give it to every sidecar", "%s does not hold the public half of %s", authority.PublicKeyPath(path), path)
		}
		detail += "; .pub matches"
	}
	return ok(name, "%s", detail)
}
