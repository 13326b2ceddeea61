package runner

import (
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"

	"github.com/openfirma/firma/internal/cgroup"
)

// Config is the [run] section of firma.toml.
//
//	[run]
//	sidecar = "/run/firma/control.sock" # control socket ("" = [sidecar.control] socket, else this)
//	cgroup = ""                         # parent for agent cgroups ("" = the sidecar's enforced parent)
//	profile = "generic"                 # profile when --profile is not given
//	stop_timeout_seconds = 10           # after forwarding SIGTERM/SIGINT/SIGHUP/SIGQUIT, kill after this
//
//	[run.profiles.codex]                # override keys of a built-in profile, or define a new one
//	agent_id = "codex"                  # agent id when neither --agent-id nor a capability names one
//	workspace = true                    # bind the current directory read-write (over read_only paths)
//	read_only = ["/etc", "/usr"]        # made read-only, recursively
//	mask = ["~/.ssh", "~/.aws"]         # hidden: an empty directory or an empty unreadable file
//	unset_env = ["*_API_KEY"]           # environment variables removed (shell-style patterns)
//	env = { EDITOR = "vi" }             # environment variables set
//	devices = ["/dev/dri"]              # host devices in the agent's private /dev, besides
//	                                    # null, zero, full, random, urandom and tty
//
// "~" in paths is the home of the user the agent runs as and, under sudo, of the invoking user too.
// A key a [run.profiles.<name>] table leaves out keeps the built-in profile's value.
type Config struct {
	Sidecar            string             `toml:"sidecar"`
	Cgroup             string             `toml:"cgroup"`
	Profile            string             `toml:"profile"`
	StopTimeoutSeconds int                `toml:"stop_timeout_seconds"`
	Profiles           map[string]Profile `toml:"profiles"`
}

// Profile shapes the agent's mount namespace and environment. The sandbox itself applies to every
// profile and cannot be turned off here: what firma hides (its sockets, keys, audit log), the
// read-only cgroup and sysfs mounts, the private /dev and PID namespace, the CA trust, the removal
// of proxy variables, the dropped capabilities, Landlock scopes and the seccomp filter.
type Profile struct {
	AgentID   string            `toml:"agent_id"`
	Workspace bool              `toml:"workspace"`
	ReadOnly  []string          `toml:"read_only"`
	Mask      []string          `toml:"mask"`
	UnsetEnv  []string          `toml:"unset_env"`
	Env       map[string]string `toml:"env"`
	Devices   []string          `toml:"devices"`
}

// homeSecrets are the credential stores a coding agent has no business reading.
var homeSecrets = []string{
	"~/.ssh", "~/.aws", "~/.config/gcloud", "~/.azure", "~/.kube", "~/.docker", "~/.gnupg",
	"~/.password-store", "~/.netrc", "~/.git-credentials", "~/.config/gh", "~/.npmrc", "~/.pypirc",
	"~/.terraform.d",
}

// codingAgentEnv are variables that carry credentials the sidecar should inject instead.
var codingAgentEnv = []string{
	"*_API_KEY", "*_ACCESS_TOKEN", "*_AUTH_TOKEN", "GITHUB_TOKEN", "GH_TOKEN", "GITLAB_TOKEN",
	"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS",
}

// systemDirs are made read-only for coding agents, so that even one running as root cannot change
// the host's binaries and configuration (firma's included). The workspace stays writable.
var systemDirs = []string{"/etc", "/usr", "/boot", "/opt"}

// builtinProfiles are the profiles firma ships:
//
//   - generic: the program as it is, only enforced; agent id "generic".
//   - codex: a coding agent: the workspace (current directory) read-write, /etc /usr /boot /opt
//     read-only, home credential stores masked, credential variables removed; agent id "codex".
//   - claude-code: codex's shape with agent id "claude-code".
func builtinProfiles() map[string]Profile {
	coding := func(id string) Profile {
		return Profile{
			AgentID:   id,
			Workspace: true,
			ReadOnly:  append([]string(nil), systemDirs...),
			Mask:      append([]string(nil), homeSecrets...),
			UnsetEnv:  append([]string(nil), codingAgentEnv...),
		}
	}
	return map[string]Profile{
		"generic":     {AgentID: "generic"},
		"codex":       coding("codex"),
		"claude-code": coding("claude-code"),
	}
}

// DefaultConfig returns the defaults that apply to keys a file leaves out.
func DefaultConfig() Config {
	return Config{
		Profile:            "generic",
		StopTimeoutSeconds: 10,
		Profiles:           builtinProfiles(),
	}
}

// Validate checks everything that can be checked without touching the system.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("run.%s: %s", key, fmt.Sprintf(format, a...)))
	}
	if c.Sidecar != "" && !path.IsAbs(c.Sidecar) {
		bad("sidecar", "%q is not an absolute path", c.Sidecar)
	}
	if c.Cgroup != "" {
		if cg, err := cgroup.Clean(c.Cgroup); err != nil || cg == "/" {
			bad("cgroup", "%q is not a cgroup path below the cgroup2 root", c.Cgroup)
		}
	}
	if c.StopTimeoutSeconds < 0 {
		bad("stop_timeout_seconds", "must not be negative")
	}
	if _, ok := c.Profiles[c.Profile]; c.Profile != "" && !ok {
		bad("profile", "no profile named %q (have %s)", c.Profile, strings.Join(c.profileNames(), ", "))
	}
	for _, name := range c.profileNames() {
		errs = append(errs, c.Profiles[name].validate("profiles."+name)...)
	}
	return errors.Join(errs...)
}

func (p Profile) validate(key string) []error {
	var errs []error
	bad := func(k, format string, a ...any) {
		errs = append(errs, fmt.Errorf("run.%s.%s: %s", key, k, fmt.Sprintf(format, a...)))
	}
	for _, f := range []struct {
		key   string
		paths []string
	}{{"read_only", p.ReadOnly}, {"mask", p.Mask}} {
		for i, q := range f.paths {
			if !path.IsAbs(q) && q != "~" && !strings.HasPrefix(q, "~/") {
				bad(fmt.Sprintf("%s[%d]", f.key, i), "%q is neither absolute nor under ~/", q)
			}
		}
	}
	for i, d := range p.Devices {
		if rest, ok := strings.CutPrefix(d, "/dev/"); !ok || rest == "" || path.Clean(d) != d {
			bad(fmt.Sprintf("devices[%d]", i), "%q is not a path below /dev/", d)
		}
	}
	for i, pat := range p.UnsetEnv {
		if _, err := path.Match(pat, ""); err != nil || pat == "" {
			bad(fmt.Sprintf("unset_env[%d]", i), "bad pattern %q", pat)
		}
	}
	for k := range p.Env {
		switch {
		case !validEnvName(k):
			bad("env", "%q is not a variable name", k)
		case isProxyVar(k):
			bad("env", "%s: firma run never sets proxy variables (enforcement is in the kernel)", k)
		case isCAVar(k):
			bad("env", "%s is set by firma run to the bundle that trusts firma's CA", k)
		}
	}
	return errs
}

func (c *Config) profileNames() []string {
	names := make([]string, 0, len(c.Profiles))
	for n := range c.Profiles {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ErrUnknownProfile is returned for a --profile that is neither built in nor configured.
var ErrUnknownProfile = errors.New("unknown profile")

// profile returns the named profile ("" = the configured default).
func (c *Config) profile(name string) (string, Profile, error) {
	if name == "" {
		name = c.Profile
	}
	if name == "" {
		name = "generic"
	}
	p, ok := c.Profiles[name]
	if !ok {
		return "", Profile{}, fmt.Errorf("%w %q (have %s)", ErrUnknownProfile, name, strings.Join(c.profileNames(), ", "))
	}
	return name, p, nil
}
