// Package control owns the sidecar's control socket: the protocol `firma run` uses to learn how the
// sidecar enforces (Info), to tell it which cgroup belongs to which agent (Register, Unregister) and
// to report what its sandbox refused an agent (Refused), a client for the runner, and a server that hands each request to a Registry the sidecar implements.
//
// The socket is root-only: its directory is 0700, the socket 0600, and every connection's peer
// credentials are checked (uid 0, and not itself inside the enforced cgroup tree). The client checks
// the server's in turn (root, or the caller's own user) before it sends anything: nobody else can
// pose as the sidecar at its path. Messages are one
// JSON object per line. The package decides nothing about agents or capabilities — that is the
// Registry's job — and it never touches the network beyond its unix socket.
package control

import (
	"github.com/openfirma/firma/internal/cgroup"

	"context"
	"errors"
	"fmt"
	"path"
)

// DefaultSocket is where the sidecar listens unless [sidecar.control] socket says otherwise.
const DefaultSocket = "/run/firma/control.sock"

// Info is what the sidecar tells a runner before it places an agent.
type Info struct {
	// Version is the sidecar's version string.
	Version string `json:"version"`
	// Cgroup is the enforced parent cgroup ([sidecar.transparent] cgroup) relative to the cgroup2
	// mount ("/firma.slice/firma-agents.slice"; a missing leading slash is tolerated). Every
	// descendant of it is enforced. Empty when the sidecar does
	// not enforce transparently, in which case a runner must refuse to start anything.
	Cgroup string `json:"cgroup"`
	// CACertPEM is firma's MITM CA certificate, PEM; empty when MITM is off.
	CACertPEM string `json:"ca_cert_pem,omitempty"`
	// DNS is the sidecar resolver's listen address (host:port); the kernel redirects port 53 there.
	DNS string `json:"dns,omitempty"`
	// Hide lists absolute paths an agent must not see: the control socket, the CA directory, the
	// audit log and its signing key, and anything else of the sidecar's.
	Hide []string `json:"hide,omitempty"`
	// Protect lists absolute paths an agent may read but must not change: policy and mapping files,
	// schemas, revocation lists, capability files. Applied after the workspace is bound read-write,
	// so they stay read-only inside it.
	Protect []string `json:"protect,omitempty"`
	// Monitored lists the agents in monitor mode, static and registered (`firma doctor` shows
	// them): their policy denials are recorded, not enforced.
	Monitored []MonitoredAgent `json:"monitored,omitempty"`
}

// MonitoredAgent is an agent in monitor mode.
type MonitoredAgent struct {
	AgentID string `json:"agent_id"`
	Cgroup  string `json:"cgroup"` // relative to the cgroup2 mount
	// Registered: by `firma run --monitor`, not [[sidecar.agents]].
	Registered bool `json:"registered,omitempty"`
}

// Registration says that a cgroup (and its descendants) is an agent.
type Registration struct {
	// Cgroup is relative to the cgroup2 mount, with a leading slash, strictly below Info.Cgroup.
	Cgroup    string `json:"cgroup"`
	AgentID   string `json:"agent_id"`
	SessionID string `json:"session_id,omitempty"`
	// CapabilityFile is an absolute path the sidecar reads and verifies; empty when none was given.
	CapabilityFile string `json:"capability_file,omitempty"`
	// PID is the runner's pid, for the sidecar's logs.
	PID int `json:"pid"`
	// Monitor asks for monitor mode (`firma run --monitor`): the agent's policy denials are
	// recorded, not enforced.
	Monitor bool `json:"monitor,omitempty"`
}

// Refusal is a call `firma run`'s seccomp filter refused a process of an agent: the runner reports
// it while the process waits for the answer, so the sidecar can read who it is from /proc.
type Refusal struct {
	PID     int    `json:"pid"`     // in the sidecar's (the host's) PID namespace
	Syscall string `json:"syscall"` // "socket", "socketpair", "ptrace", "bpf"…
	// Family, Type and Protocol are socket's and socketpair's arguments.
	Family   int `json:"family,omitempty"`
	Type     int `json:"type,omitempty"`
	Protocol int `json:"protocol,omitempty"`
	// Suppressed counts the refusals of the same sandbox firma run did not report since its
	// previous report (its own rate limit, which spares the sidecar a flood).
	Suppressed int `json:"suppressed,omitempty"`
}

func (r Refusal) validate() error {
	if r.PID <= 0 {
		return fmt.Errorf("pid %d", r.PID)
	}
	if r.Suppressed < 0 {
		return fmt.Errorf("suppressed %d", r.Suppressed)
	}
	if r.Syscall == "" || len(r.Syscall) > 64 {
		return fmt.Errorf("syscall %q", r.Syscall)
	}
	for _, c := range r.Syscall {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return fmt.Errorf("syscall %q", r.Syscall)
		}
	}
	return nil
}

// Registry is what the sidecar implements for the server. Its methods are called concurrently, one
// goroutine per connection. An error from Register or Unregister goes back to the runner verbatim,
// so it should say what is wrong ("capability /etc/firma/cap.toml: token expired at …").
type Registry interface {
	Info() Info
	// Register verifies the capability (if any) and only then maps the cgroup to the agent.
	Register(ctx context.Context, r Registration) error
	// Unregister forgets a cgroup; unknown cgroups are not an error.
	Unregister(ctx context.Context, cgroup string) error
	// Refused records what firma run's sandbox refused a process; an error when the process is
	// not in an enforced cgroup or the record could not be written.
	Refused(ctx context.Context, r Refusal) error
}

var (
	// ErrSidecarNotRunning means nothing listens on the control socket.
	ErrSidecarNotRunning = errors.New("firma sidecar is not running")
	// ErrRejected wraps an error the sidecar returned for a request; the message is the sidecar's.
	ErrRejected = errors.New("rejected by the sidecar")
	// ErrPermission means the peer is not allowed to use the control socket.
	ErrPermission = errors.New("permission denied")
)

// RemoteError is an error the sidecar answered with. errors.Is(err, ErrRejected) holds for it.
type RemoteError struct{ Message string }

func (e *RemoteError) Error() string        { return e.Message }
func (e *RemoteError) Is(target error) bool { return target == ErrRejected }

// request and response are the wire messages: one JSON object per line each way.
type request struct {
	Op           string        `json:"op"` // "info" | "register" | "unregister" | "refused"
	Registration *Registration `json:"registration,omitempty"`
	Refusal      *Refusal      `json:"refusal,omitempty"`
	Cgroup       string        `json:"cgroup,omitempty"`
}

type response struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	Code  string `json:"code,omitempty"` // codePermission when the peer was refused
	Info  *Info  `json:"info,omitempty"`
}

const codePermission = "permission"

const (
	opInfo       = "info"
	opRegister   = "register"
	opUnregister = "unregister"
	opRefused    = "refused"
)

func (r Registration) validate(enforced string) error {
	cg, err := cgroup.Clean(r.Cgroup)
	if err != nil {
		return err
	}
	if cg != r.Cgroup {
		return fmt.Errorf("cgroup %q is not in canonical form (%q)", r.Cgroup, cg)
	}
	if enforced == "" {
		return errors.New("the sidecar enforces no cgroup (transparent mode is off)")
	}
	if enforced, err = cgroup.Clean(enforced); err != nil {
		return fmt.Errorf("the sidecar's enforced cgroup: %w", err)
	}
	if !cgroup.Under(cg, enforced) {
		return fmt.Errorf("cgroup %s is not below the enforced parent %s", cg, enforced)
	}
	if r.AgentID == "" {
		return errors.New("agent_id is empty")
	}
	if r.CapabilityFile != "" && !path.IsAbs(r.CapabilityFile) {
		return fmt.Errorf("capability file %q is not an absolute path", r.CapabilityFile)
	}
	return nil
}
