package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openfirma/firma/authority"
	"github.com/openfirma/firma/daemon"
	"github.com/openfirma/firma/daemon/agents"
	"github.com/openfirma/firma/daemon/control"
	"github.com/openfirma/firma/internal/cgroup"
)

// Sidecar checks the sidecar cfg describes, as it runs now: kernel programs pinned and attached,
// listeners bound, control socket answering, audit log being written, authority reachable and
// the policy bundle fresh, and its own /healthz.
func Sidecar(ctx context.Context, cfg Config, opt Options) []Check {
	opt = opt.withDefaults()
	s := cfg.Sidecar
	checks := enforcement(s)
	ctl, info := controlSocket(ctx, s, opt)
	checks = append(checks, ctl, monitorMode(s, info), auditLog(s, opt))
	if s.Authority.Enabled() {
		checks = append(checks, authorityReachable(ctx, s.Authority, opt), bundleAge(s.Authority, opt))
	}
	if cfg.MetricsAddr != "" {
		checks = append(checks, healthz(ctx, cfg.MetricsAddr, opt))
	} else {
		checks = append(checks, ok("sidecar.healthz", "no [sidecar.metrics] listen_addr: no /healthz to ask"))
	}
	return checks
}

// cgroupPath is the enforced parent cgroup as the sidecar names it ("/firma.slice/firma-agents.slice").
func cgroupPath(s *daemon.Config) (string, error) {
	return cgroup.SlicePath(s.Transparent.Cgroup)
}

// controlSocket asks the sidecar for its Info; info is nil when it did not answer as the sidecar of
// this config.
func controlSocket(ctx context.Context, s *daemon.Config, opt Options) (Check, *control.Info) {
	const name = "sidecar.control"
	if s.Control.Socket == "" {
		return ok(name, "no [sidecar.control] socket: firma run cannot register agents with this sidecar"), nil
	}
	ctx, cancel := context.WithTimeout(ctx, opt.Timeout)
	defer cancel()
	c, err := control.Dial(ctx, s.Control.Socket)
	if err != nil {
		return fail(name, "start the sidecar: firma sidecar -c FILE (or systemctl start firma-sidecar)", "%v", err), nil
	}
	defer c.Close()
	info, err := c.Info(ctx)
	if err != nil {
		if errors.Is(err, control.ErrPermission) {
			return fail(name, "run firma doctor as root, outside any enforced cgroup", "%v", err), nil
		}
		return fail(name, "see the sidecar's log", "%v", err), nil
	}
	if s.Transparent.Enabled {
		want, err := cgroupPath(s)
		if err == nil && strings.TrimSuffix("/"+strings.TrimPrefix(info.Cgroup, "/"), "/") != want {
			return fail(name, "restart the sidecar with this config, or run doctor with the config it runs",
				"%s answers, but enforces %q, not %q as this config says", s.Control.Socket, info.Cgroup, want), nil
		}
	}
	return ok(name, "%s answers: %s, enforcing %s", s.Control.Socket, info.Version, info.Cgroup), &info
}

// monitorMode lists, loudly, the agents whose policy denials are recorded but not enforced: the
// [[sidecar.agents]] entries with mode = "monitor", and — when the sidecar answered (info) — what
// it says is in monitor mode, `firma run --monitor` registrations included.
func monitorMode(s *daemon.Config, info *control.Info) Check {
	const name = "sidecar.monitor"
	seen := map[string]bool{}
	var list []string
	add := func(agent, cgroup, how string) {
		key := agent + " " + strings.Trim(cgroup, "/")
		if !seen[key] {
			seen[key] = true
			list = append(list, fmt.Sprintf("%s (%s, cgroup %s)", agent, how, cgroup))
		}
	}
	for _, a := range s.Agents {
		if a.Mode == agents.ModeMonitor {
			add(a.AgentID, a.Cgroup, "[[sidecar.agents]] mode = \"monitor\"")
		}
	}
	if info != nil {
		for _, a := range info.Monitored {
			how := "[[sidecar.agents]] mode = \"monitor\""
			if a.Registered {
				how = "firma run --monitor"
			}
			add(a.AgentID, a.Cgroup, how)
		}
	}
	unknown := ""
	if info == nil {
		unknown = "; firma run --monitor registrations unknown: the sidecar did not answer"
	}
	if len(list) == 0 {
		return ok(name, "no agent in monitor mode%s", unknown)
	}
	return warn(name, "when an agent's policy is ready (firma policy suggest, then firma policy replay), set mode = \"enforce\" "+
		"in its [[sidecar.agents]] entry and restart the sidecar, or run it without --monitor",
		"MONITOR MODE: policy denials are recorded but NOT enforced for %d %s: %s%s", len(list), plural("agent", len(list)),
		strings.Join(list, "; "), unknown)
}

func plural(word string, n int) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

func auditLog(s *daemon.Config, opt Options) Check {
	const name = "sidecar.audit_log"
	path := s.Audit.FilePath
	fi, err := os.Stat(path)
	if err != nil {
		return fail(name, "start the sidecar; if it runs, see its log for the audit error", "audit log %s: %v", path, err)
	}
	if err := unix.Access(path, unix.W_OK); err != nil {
		return fail(name, "make the file and its filesystem writable: the sidecar denies every new connection while it cannot write",
			"audit log %s is not writable: %v", path, err)
	}
	if err := unix.Access(filepath.Dir(path), unix.W_OK|unix.X_OK); err != nil {
		return fail(name, "make the directory writable: rotation would fail and the sidecar would deny every new connection",
			"audit dir %s is not writable: %v", filepath.Dir(path), err)
	}
	detail := fmt.Sprintf("%s: %d bytes", path, fi.Size())
	if t, err := lastRecordTime(path); err == nil {
		detail += fmt.Sprintf(", last record %s ago", opt.Now().Sub(t).Round(time.Second))
	}
	return ok(name, "%s", detail)
}

// lastRecordTime is the "time" of the last complete line of an audit file.
func lastRecordTime(path string) (time.Time, error) {
	f, err := os.Open(path)
	if err != nil {
		return time.Time{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return time.Time{}, err
	}
	const tail = 64 << 10
	off := max(fi.Size()-tail, 0)
	buf := make([]byte, fi.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
		return time.Time{}, err
	}
	lines := bytes.Split(bytes.TrimRight(buf, "\n"), []byte("\n"))
	var rec struct {
		Time time.Time `json:"time"`
	}
	if err := json.Unmarshal(lines[len(lines)-1], &rec); err != nil || rec.Time.IsZero() {
		return time.Time{}, fmt.Errorf("last line of %s has no time", path)
	}
	return rec.Time, nil
}

func authorityReachable(ctx context.Context, a authority.ClientConfig, opt Options) Check {
	const name = "sidecar.authority"
	url := strings.TrimSuffix(a.URL, "/") + authority.PathHealth
	var health struct {
		Status  string `json:"status"`
		Version string `json:"version"`
		KeyID   string `json:"key_id"`
	}
	if err := getJSON(ctx, url, opt.Timeout, &health); err != nil {
		return fail(name, "start the authority (firma authority -c FILE) or fix [sidecar.authority] url; the sidecar denies everything once its bundle is older than bundle_ttl_seconds",
			"%v", err)
	}
	pub, err := authority.LoadPublicKey(a.PublicKeyPath)
	if err == nil && health.KeyID != authority.KeyID(pub) {
		return fail(name, "give the sidecar the .pub of the key this authority signs with",
			"%s signs with key %s, but public_key_path %s is key %s: every bundle is refused", a.URL, health.KeyID, a.PublicKeyPath, authority.KeyID(pub))
	}
	return ok(name, "%s: %s, bundle %.19s…, key %s", a.URL, health.Status, health.Version, health.KeyID)
}

// Files of [sidecar.authority] cache_dir (authority/client.go): the last good bundle and the
// newest heartbeat for it.
const (
	cacheBundle      = "bundle.paseto"
	cacheBundleFresh = "bundle-fresh.paseto"
)

func bundleAge(a authority.ClientConfig, opt Options) Check {
	const name = "sidecar.bundle"
	pub, err := authority.LoadPublicKey(a.PublicKeyPath)
	if err != nil {
		return fail(name, "fix [sidecar.authority] public_key_path", "%v", err)
	}
	raw, err := os.ReadFile(filepath.Join(a.CacheDir, cacheBundle))
	if err != nil {
		return fail(name, "start the authority and the sidecar; until a bundle arrives every request is denied",
			"no policy bundle cached in %s: %v", a.CacheDir, err)
	}
	b, err := authority.VerifyBundle(pub, strings.TrimSpace(string(raw)))
	if err != nil {
		return fail(name, "see the sidecar's log; it ignores a cached bundle that does not verify", "%s: %v", cacheBundle, err)
	}
	// The sidecar rewrites one of the two files every time it hears from the authority.
	var last time.Time
	for _, f := range []string{cacheBundle, cacheBundleFresh} {
		if fi, err := os.Stat(filepath.Join(a.CacheDir, f)); err == nil && fi.ModTime().After(last) {
			last = fi.ModTime()
		}
	}
	age := opt.Now().Sub(last).Round(time.Second)
	switch {
	case age > b.TTL:
		return fail(name, "bring the authority back: the sidecar denies every request with \"policy bundle stale\"",
			"bundle %.19s… last confirmed %s ago, past its TTL of %s", b.Version, age, b.TTL)
	case age > b.TTL/2:
		return warn(name, "check the authority and the network between it and the sidecar",
			"bundle %.19s… last confirmed %s ago (TTL %s)", b.Version, age, b.TTL)
	}
	return ok(name, "bundle %.19s… (%d policy files) last confirmed %s ago, TTL %s", b.Version, len(b.Files), age, b.TTL)
}

// Health is the JSON the sidecar serves on /healthz ([sidecar.metrics] listen_addr): ready when
// every check is ok. Status 200 when ready, 503 when not; the body is the same either way.
type Health struct {
	Ready  bool                   `json:"ready"`
	Checks map[string]HealthCheck `json:"checks"`
}

// HealthCheck is one of the sidecar's own readiness checks ("programs", "listeners", "audit",
// "bundle", …).
type HealthCheck struct {
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

func healthz(ctx context.Context, addr string, opt Options) Check {
	const name = "sidecar.healthz"
	var h Health
	err := getJSON(ctx, "http://"+addr+"/healthz", opt.Timeout, &h)
	var status *httpStatusError
	if errors.As(err, &status) && status.code == http.StatusServiceUnavailable && json.Unmarshal(status.body, &h) == nil {
		err = nil
	}
	if err != nil {
		return fail(name, "start the sidecar, or fix [sidecar.metrics] listen_addr", "%v", err)
	}
	var bad []string
	for _, n := range sortedKeys(h.Checks) {
		if c := h.Checks[n]; !c.OK {
			bad = append(bad, fmt.Sprintf("%s: %s", n, c.Detail))
		}
	}
	if !h.Ready || len(bad) > 0 {
		return fail(name, "see the sidecar's log", "http://%s/healthz: not ready: %s", addr, strings.Join(bad, "; "))
	}
	return ok(name, "http://%s/healthz: ready (%s)", addr, strings.Join(sortedKeys(h.Checks), ", "))
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

type httpStatusError struct {
	url  string
	code int
	body []byte
}

func (e *httpStatusError) Error() string {
	return fmt.Sprintf("GET %s: %d %s", e.url, e.code, http.StatusText(e.code))
}

// getJSON GETs url without any proxy and decodes a JSON body of at most 1 MiB into v.
func getJSON(ctx context.Context, url string, timeout time.Duration, v any) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return &httpStatusError{url: url, code: resp.StatusCode, body: body}
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	return nil
}
