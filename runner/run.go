package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"github.com/openfirma/firma/daemon/control"
	"github.com/openfirma/firma/internal/cgroup"
	"github.com/openfirma/firma/internal/logfields"
)

// Options is one `firma run` invocation.
type Options struct {
	Profile        string // "" = Config.Profile
	AgentID        string // "" = from the capability, else the profile
	CapabilityFile string // "" = none
	Sidecar        string // control socket; "" = Config.Sidecar
	Cgroup         string // parent for the agent's cgroup; "" = Config.Cgroup, else the sidecar's
	User           string // name, uid or uid:gid to run as; "" = as invoked
	// Monitor asks the sidecar for monitor mode: the agent's policy denials are recorded, not
	// enforced (the kernel path stays sealed and the sandbox is the same).
	Monitor bool
	Command []string // argv

	Dir    string   // working directory (the workspace); "" = the current one
	Env    []string // the environment to start from; nil = this process's
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
}

var (
	// ErrNotEnforced means the sidecar has no enforced cgroup, or the chosen parent is outside it:
	// a program started there would not be enforced, so nothing is started.
	ErrNotEnforced = errors.New("not under enforcement")
	// ErrSetup means the agent's namespace or privileges could not be prepared; it never ran.
	ErrSetup = errors.New("preparing the agent")
	// ErrUnsupported is returned where there are no cgroups and mount namespaces to enforce with.
	ErrUnsupported = errors.New("firma run needs Linux (cgroup v2, mount namespaces)")
)

// exitStatus is how the agent ended.
type exitStatus struct {
	Code   int
	Signal syscall.Signal // non-zero when killed by a signal
}

// code is the status firma run exits with: the agent's, or 128+n when signal n killed it.
func (s exitStatus) code() int {
	if s.Signal != 0 {
		return 128 + int(s.Signal)
	}
	return s.Code
}

// sidecar is the part of *control.Client the runner uses.
type sidecar interface {
	Info(ctx context.Context) (control.Info, error)
	Register(ctx context.Context, r control.Registration) error
	Unregister(ctx context.Context, cgroup string) error
	Refused(ctx context.Context, r control.Refusal) error
	Close() error
}

// agent is the started agent process.
type agent interface {
	PID() int
	Signal(sig os.Signal) error
	Wait() exitStatus // returns once the process has exited
}

// launch is what starts the agent: the init step cloned into cgroupFD, fed spec.
type launch struct {
	CgroupFD int
	Spec     childSpec
	Stdin    io.Reader
	Stdout   io.Writer
	Stderr   io.Writer
	// Refused is told each call the sandbox's seccomp filter refused the agent, before the agent
	// gets its errno.
	Refused func(control.Refusal)
	Log     zerolog.Logger
}

// agentUser is who the agent runs as after --user.
type agentUser struct {
	UID, GID int
	Groups   []int
	Name     string
	Home     string
}

// host is every side effect the runner has, so that tests can replace each one.
type host struct {
	dial      func(ctx context.Context, socket string) (sidecar, error)
	mountinfo func() ([]cgroup.Mount, error)
	fs        cgroupFS
	// systemd, when set (systemd manages this host), connects to it and returns a placer that
	// makes transient scopes described by desc.
	systemd      func(ctx context.Context, mount, desc string) (placer, error)
	fromTerminal func(sig os.Signal) bool // the kernel already sent sig to our foreground group
	launch       func(l launch) (agent, error)
	notify       func() (<-chan os.Signal, func())
	lookupUser   func(spec string) (agentUser, error)
	homes        func(u *agentUser) []string // whose ~ the profile's paths expand to
	exists       func(path string) bool
	mkdirTemp    func() (string, error)
	removeAll    func(path string) error
	getwd        func() (string, error)
	pid          int
	suffix       func() string // random part of cgroup names
	landlockABI  func() int    // the kernel's Landlock ABI version, 0 without Landlock
}

// landlockScopeABI is the first Landlock ABI with scopes (Linux 6.12).
const landlockScopeABI = 6

// Run places opts.Command under enforcement and runs it to completion. It returns the status firma
// run should exit with: the agent's, or 128+n when signal n killed it. A non-nil error means the
// agent never started (the status is then 1, or 128+n when a signal interrupted the setup) or that
// cleaning up after it failed.
func Run(ctx context.Context, cfg Config, opts Options, log zerolog.Logger) (int, error) {
	h, err := realHost(log)
	if err != nil {
		return 1, err
	}
	return h.run(ctx, cfg, opts, log)
}

// cleanup is an undo stack (STYLE rule 7): each step registers its undo as soon as it succeeds.
type cleanup struct {
	steps []func(ctx context.Context) error
}

func (c *cleanup) add(f func(ctx context.Context) error) { c.steps = append(c.steps, f) }

// run undoes everything, newest first; it runs every step whatever the others return.
func (c *cleanup) run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	for i := len(c.steps) - 1; i >= 0; i-- {
		errs = append(errs, c.steps[i](ctx))
	}
	c.steps = nil
	return errors.Join(errs...)
}

func (h *host) run(ctx context.Context, cfg Config, opts Options, log zerolog.Logger) (status int, err error) {
	if len(opts.Command) == 0 {
		return 1, errors.New("no command given (firma run [flags] -- COMMAND [ARGS…])")
	}
	profileName, profile, err := cfg.profile(opts.Profile)
	if err != nil {
		return 1, err
	}
	id, err := resolveIdentity(opts.AgentID, opts.CapabilityFile, profileName, profile)
	if err != nil {
		return 1, err
	}
	var user *agentUser
	if opts.User != "" {
		u, err := h.lookupUser(opts.User)
		if err != nil {
			return 1, fmt.Errorf("--user %s: %w", opts.User, err)
		}
		user = &u
	}
	dir := opts.Dir
	if dir == "" {
		if dir, err = h.getwd(); err != nil {
			return 1, err
		}
	}
	if profile.Workspace && dir == "/" {
		return 1, fmt.Errorf("profile %s binds the working directory read-write: refusing / as the workspace", profileName)
	}
	socket := firstNonEmpty(opts.Sidecar, cfg.Sidecar, control.DefaultSocket)
	log = log.With().Str(logfields.RunProfile, profileName).Str(logfields.Agent, id.AgentID).
		Str(logfields.Session, id.SessionID).Logger()

	// The sidecar first: if it is not there, nothing is created and nothing runs.
	sc, err := h.dial(ctx, socket)
	if err != nil {
		return 1, err
	}
	defer sc.Close()
	info, err := sc.Info(ctx)
	if err != nil {
		return 1, err
	}
	enforced, err := cgroup.Clean(info.Cgroup)
	if info.Cgroup == "" || err != nil || enforced == "/" {
		return 1, fmt.Errorf("%w: the sidecar reports no enforced cgroup (%q); is [sidecar.transparent] enabled?", ErrNotEnforced, info.Cgroup)
	}
	parent := enforced
	if p := firstNonEmpty(opts.Cgroup, cfg.Cgroup); p != "" {
		if parent, err = cgroup.SlicePath(p); err != nil {
			return 1, fmt.Errorf("--cgroup: %w", err)
		}
		if parent != enforced && !cgroup.Under(parent, enforced) {
			return 1, fmt.Errorf("%w: cgroup %s is outside the sidecar's enforced parent %s", ErrNotEnforced, parent, enforced)
		}
	}
	mounts, err := h.mountinfo()
	if err != nil {
		return 1, err
	}
	mount, err := cgroup.V2Mount(mounts)
	if err != nil {
		return 1, err
	}
	if err := h.fs.IsDir(filepath.Join(mount, parent)); err != nil {
		return 1, fmt.Errorf("%w: parent cgroup %s: %v (is the sidecar attached?)", ErrNotEnforced, parent, err)
	}

	spec, err := buildSpec(specInput{
		Command: opts.Command, Env: opts.Env, Dir: dir, Profile: profile, Info: info,
		Socket: socket, User: user, Homes: h.homes(user), CgroupMounts: cgroup.Points(mounts), Exists: h.exists,
		Capability: id.CapabilityFile,
	})
	if err != nil {
		return 1, err
	}
	if abi := h.landlockABI(); abi >= landlockScopeABI {
		spec.Landlock = true
	} else {
		// The PID namespace already keeps signals in; abstract unix sockets are per network
		// namespace, which the agent shares with the host so that the sidecar can serve it.
		log.Warn().Int(logfields.RunLandlock, abi).Msg("no Landlock scopes on this kernel (they need Landlock ABI 6, Linux 6.12): the agent can connect to abstract unix sockets outside its sandbox")
	}

	var undo cleanup
	defer func() {
		if cerr := undo.run(); cerr != nil {
			log.Error().Err(cerr).Msg("cleaning up after the agent")
			if err == nil && status == 0 {
				status = 1
			}
		}
	}()

	sigs, stopSignals := h.notify()
	defer stopSignals()

	name := fmt.Sprintf("firma-run-%d-%s", h.pid, h.suffix())
	pl, err := h.place(ctx, mount, parent, name, opts.Command[0], log)
	if err != nil {
		return 1, err
	}
	undo.add(pl.remove)
	log = log.With().Str(logfields.Cgroup, pl.Rel).Logger()

	reg := control.Registration{Cgroup: pl.Rel, AgentID: id.AgentID, SessionID: id.SessionID,
		CapabilityFile: id.CapabilityFile, PID: h.pid, Monitor: opts.Monitor}
	if err := sc.Register(ctx, reg); err != nil {
		return 1, fmt.Errorf("registering %s as %s: %w", pl.Rel, id.AgentID, err)
	}
	if opts.Monitor {
		log.Warn().Str(logfields.Agent, id.AgentID).Msg("MONITOR MODE: policy denials are recorded, not enforced")
	}
	sc.Close()
	undo.add(func(ctx context.Context) error { return h.unregister(ctx, socket, pl.Rel, log) })

	if spec.Staging, err = h.mkdirTemp(); err != nil {
		return 1, fmt.Errorf("staging directory: %w", err)
	}
	staging := spec.Staging
	undo.add(func(context.Context) error { return h.removeAll(staging) })

	// A signal that came while we prepared ends the run before the agent exists.
	select {
	case sig := <-sigs:
		return 128 + signum(sig), fmt.Errorf("interrupted by %v before the agent started", sig)
	default:
	}
	rep := &refusalReporter{dial: func(ctx context.Context) (sidecar, error) { return h.dial(ctx, socket) }, log: log}
	defer rep.close()
	a, err := h.launch(launch{CgroupFD: pl.FD, Spec: spec, Stdin: opts.Stdin, Stdout: opts.Stdout, Stderr: opts.Stderr,
		Refused: rep.report, Log: log})
	if err != nil {
		return 1, err
	}
	pl.started()
	log.Debug().Int(logfields.PID, a.PID()).Str(logfields.RunCommand, opts.Command[0]).Msg("agent started")

	st := h.supervise(a, pl, sigs, time.Duration(cfg.StopTimeoutSeconds)*time.Second, log)
	log.Debug().Int(logfields.RunExitCode, st.code()).Msg("agent exited")
	return st.code(), nil
}

// place makes the agent's cgroup: a transient scope when systemd manages the host and the parent is
// a slice, else (or if systemd fails) a cgroupfs directory.
func (h *host) place(ctx context.Context, mount, parent, name, cmd string, log zerolog.Logger) (*placement, error) {
	if h.systemd != nil && sliceCgroup(path.Base(parent)) == parent {
		pl, err := h.placeWithSystemd(ctx, mount, parent, name, "firma run: "+cmd)
		if err == nil {
			log.Debug().Str(logfields.RunUnit, path.Base(pl.Rel)).Msg("agent scope created")
			return pl, nil
		}
		log.Warn().Err(err).Msg("systemd could not create the agent's scope; creating the cgroup directly")
	}
	return cgroupfsPlacer{fs: h.fs, mount: mount}.Place(ctx, parent, name)
}

func (h *host) placeWithSystemd(ctx context.Context, mount, parent, name, desc string) (*placement, error) {
	sp, err := h.systemd(ctx, mount, desc)
	if err != nil {
		return nil, err
	}
	return sp.Place(ctx, parent, name)
}

// unregister tells the sidecar the cgroup is gone, over a fresh connection (the first one may have
// idled out during a long run). A sidecar that has gone away is only worth a warning.
func (h *host) unregister(ctx context.Context, socket, cg string, log zerolog.Logger) error {
	sc, err := h.dial(ctx, socket)
	if err != nil {
		log.Warn().Err(err).Msg("could not unregister the agent")
		return nil
	}
	defer sc.Close()
	if err := sc.Unregister(ctx, cg); err != nil {
		log.Warn().Err(err).Msg("could not unregister the agent")
	}
	return nil
}

// supervise forwards signals to the agent until it exits. After a forwarded terminating signal the
// agent has stopTimeout to exit before everything in its cgroup is killed. SIGINT and SIGQUIT typed
// at a terminal reach the agent from the kernel already (it is in our foreground process group), so
// those are not sent twice.
func (h *host) supervise(a agent, pl *placement, sigs <-chan os.Signal, stopTimeout time.Duration, log zerolog.Logger) exitStatus {
	done := make(chan exitStatus, 1)
	go func() { done <- a.Wait() }()
	var deadline <-chan time.Time
	for {
		select {
		case st := <-done:
			return st
		case sig := <-sigs:
			if h.fromTerminal(sig) {
				log.Debug().Str(logfields.RunSignal, sig.String()).Msg("signal from the terminal reached the agent directly")
			} else if err := a.Signal(sig); err != nil {
				log.Debug().Err(err).Str(logfields.RunSignal, sig.String()).Msg("forwarding signal")
			}
			if deadline == nil && sig != syscall.SIGHUP {
				deadline = time.After(stopTimeout)
			}
		case <-deadline:
			log.Warn().Dur(logfields.Duration, stopTimeout).Msg("agent did not stop in time; killing its cgroup")
			if err := pl.kill(); err != nil {
				log.Error().Err(err).Msg("killing the agent's cgroup")
			}
			deadline = nil
		}
	}
}

func signum(sig os.Signal) int {
	if s, ok := sig.(syscall.Signal); ok {
		return int(s)
	}
	return 0
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// specInput is what buildSpec turns into the init step's spec.
type specInput struct {
	Command      []string
	Env          []string
	Dir          string
	Profile      Profile
	Info         control.Info
	Socket       string
	User         *agentUser
	Homes        []string
	CgroupMounts []string
	Exists       func(string) bool
	// Capability is the --capability-file: the agent may read it, never replace it.
	Capability string
}

// alwaysHidden are host sockets that hand out more power than an agent may have: container
// runtimes (run a privileged container), the system bus and systemd's private socket (start a unit
// outside the agents' slice), the per-user runtime directories (each user's session bus and
// systemd --user manager start processes outside the agent's cgroup too), and resolvers that
// would look names up around the sidecar: systemd-resolved's varlink API, nscd, avahi (mDNS).
var alwaysHidden = []string{
	"/run/docker.sock", "/var/run/docker.sock",
	"/run/containerd/containerd.sock", "/run/podman/podman.sock",
	"/run/dbus/system_bus_socket", "/var/run/dbus/system_bus_socket",
	"/run/systemd/private", "/run/user",
	"/run/systemd/resolve/io.systemd.Resolve", "/run/systemd/resolve/io.systemd.Resolve.Monitor",
	"/run/nscd/socket", "/var/run/nscd/socket",
	"/run/avahi-daemon/socket", "/var/run/avahi-daemon/socket",
}

// alwaysProtected are made read-only for every agent: sysfs (cgroup and bpffs included, so pinned
// programs cannot be unlinked), every cgroup mount, and the files of /proc root could write to
// (sysctls, sysrq, interrupt and bus settings — the list container runtimes keep read-only).
var alwaysProtected = []string{"/sys", "/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs"}

func buildSpec(in specInput) (childSpec, error) {
	spec := childSpec{Argv: in.Command, Dir: in.Dir, UID: -1, GID: -1, Keep: rootKeep, Devices: in.Profile.Devices}
	if in.User != nil {
		spec.UID, spec.GID, spec.Groups = in.User.UID, in.User.GID, in.User.Groups
		if in.User.UID != 0 {
			spec.Keep = nil
		}
	}
	change := envChange{Unset: in.Profile.UnsetEnv, Set: map[string]string{}}
	for k, v := range in.Profile.Env {
		change.Set[k] = v
	}
	if in.User != nil {
		change.Set["HOME"], change.Set["USER"], change.Set["LOGNAME"] = in.User.Home, in.User.Name, in.User.Name
	}
	if in.Info.CACertPEM != "" {
		if !strings.Contains(in.Info.CACertPEM, "-----BEGIN CERTIFICATE-----") {
			return spec, errors.New("the sidecar's CA certificate is not PEM")
		}
		spec.CAPEM = in.Info.CACertPEM
		spec.Bundles = caBundles
		bundle := ""
		for _, b := range caBundles {
			if in.Exists(b) {
				bundle = b
				break
			}
		}
		if bundle == "" {
			return spec, fmt.Errorf("no system CA bundle to add firma's CA to (looked for %s)", strings.Join(caBundles, ", "))
		}
		for _, v := range caVars {
			change.Set[v] = bundle
		}
	}
	env := in.Env
	if env == nil {
		env = os.Environ()
	}
	spec.Env = childEnv(env, change)
	spec.Nameserver = nameserverFor(in.Info.DNS)

	spec.ReadOnly = expandHome(in.Profile.ReadOnly, in.Homes)
	if in.Profile.Workspace {
		spec.Workspace = in.Dir
	}
	var hide []string
	for _, p := range in.Info.Hide {
		if !path.IsAbs(p) {
			return spec, fmt.Errorf("the sidecar asks to hide %q, which is not an absolute path", p)
		}
		// A directory holding the agent's own working directory cannot be hidden from it; the
		// sidecar lists the files in it as well, and those are hidden one by one.
		if in.Dir == p || strings.HasPrefix(in.Dir, strings.TrimSuffix(p, "/")+"/") {
			continue
		}
		hide = append(hide, p)
	}
	for _, p := range in.Info.Protect {
		if !path.IsAbs(p) {
			return spec, fmt.Errorf("the sidecar asks to protect %q, which is not an absolute path", p)
		}
	}
	spec.Hide = dedupe(append(append(append([]string{in.Socket}, hide...), alwaysHidden...),
		expandHome(in.Profile.Mask, in.Homes)...))
	protect := append(append([]string(nil), alwaysProtected...), in.CgroupMounts...)
	protect = append(protect, in.Info.Protect...)
	if in.Capability != "" {
		protect = append(protect, in.Capability)
	}
	spec.Protect = dedupe(protect)
	return spec, nil
}

// expandHome turns "~" and "~/x" into the same path under each home; other paths pass through.
func expandHome(paths, homes []string) []string {
	var out []string
	for _, p := range paths {
		rest, ok := strings.CutPrefix(p, "~")
		if !ok {
			out = append(out, path.Clean(p))
			continue
		}
		for _, h := range homes {
			out = append(out, path.Join(h, rest))
		}
	}
	return dedupe(out)
}

func dedupe(s []string) []string {
	seen := map[string]bool{}
	out := s[:0:0]
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

// refusalReportTimeout bounds one report: the refused process waits for it.
const refusalReportTimeout = 2 * time.Second

// Reports per second, and at once, before firma run only counts refusals (and says how many in
// its next report): an agent looping on a refused call must not cost the sidecar a request each.
// Above the audit log's own default limit for the class (10/s, 100 at once), which keeps deciding
// what is written.
const (
	refusalReportRate  = 100
	refusalReportBurst = 200
)

// refusalReporter sends what the sandbox refused to the sidecar, for the audit log, over one
// control connection made again when it fails. A report that cannot be made is logged (the first,
// then every 100th): the call is refused all the same.
type refusalReporter struct {
	dial  func(ctx context.Context) (sidecar, error)
	log   zerolog.Logger
	limit *rate.Limiter // nil: refusalReportRate, refusalReportBurst

	mu         sync.Mutex
	sc         sidecar
	failed     int
	unreported int // refusals over the rate limit since the last report
}

func (r *refusalReporter) report(ref control.Refusal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.limit == nil {
		r.limit = rate.NewLimiter(refusalReportRate, refusalReportBurst)
	}
	if !r.limit.Allow() {
		r.unreported++
		return
	}
	ref.Suppressed = r.unreported
	ctx, cancel := context.WithTimeout(context.Background(), refusalReportTimeout)
	defer cancel()
	var err error
	for range 2 { // a connection the sidecar closed while idle is made again once
		if r.sc == nil {
			if r.sc, err = r.dial(ctx); err != nil {
				r.sc = nil
				break
			}
		}
		if err = r.sc.Refused(ctx, ref); err == nil {
			r.unreported = 0
			return
		}
		r.sc.Close()
		r.sc = nil
		if errors.Is(err, control.ErrRejected) {
			break // the sidecar answered: asking again changes nothing
		}
	}
	if r.failed%100 == 0 {
		r.log.Warn().Err(err).Int(logfields.PID, ref.PID).Str("syscall", ref.Syscall).Int("unreported", r.failed+1).
			Msg("could not report a sandbox refusal to the sidecar: it is not in the audit log")
	}
	r.failed++
}

func (r *refusalReporter) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.unreported > 0 {
		r.log.Warn().Int("unreported", r.unreported).
			Msg("sandbox refusals over the report rate limit after the last report: counted here, not in the audit log")
	}
	if r.sc != nil {
		r.sc.Close()
		r.sc = nil
	}
}
