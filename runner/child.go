package runner

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// childSpec is everything the two steps inside the sandbox need: the init step (`firma run __init`,
// PID 1 of a fresh PID namespace, root, in the agent's cgroup and a fresh mount namespace) prepares
// the namespace and stays to reap and forward signals; the exec step (`firma run __exec`, its child)
// drops privileges, closes inherited descriptors, applies Landlock and seccomp, and execs the agent.
// The runner sends it to init as one JSON line over a pipe; init passes it on to the exec step.
type childSpec struct {
	Argv []string `json:"argv"`
	Env  []string `json:"env"`
	Dir  string   `json:"dir"` // the working directory, re-entered after mounting

	// Staging is an empty directory; a private tmpfs is mounted there while the namespace is built
	// and detached before exec (the bind mounts made from it stay).
	Staging string `json:"staging"`

	// CAPEM is firma's CA certificate; when set it is appended to each system bundle in Bundles that
	// exists, and the result is bind-mounted over it.
	CAPEM   string   `json:"ca_pem,omitempty"`
	Bundles []string `json:"bundles,omitempty"`

	// Nameserver replaces /etc/resolv.conf's nameservers ("" leaves resolv.conf alone).
	Nameserver string `json:"nameserver,omitempty"`

	ReadOnly  []string `json:"read_only,omitempty"` // recursively read-only (profile)
	Workspace string   `json:"workspace,omitempty"` // bound read-write over ReadOnly
	Hide      []string `json:"hide,omitempty"`      // firma's own paths and the profile's masks
	Protect   []string `json:"protect,omitempty"`   // read-only, recursively: /sys, cgroup mounts, /proc/sys…

	// UID/GID/Groups switch to another user when UID >= 0.
	UID    int   `json:"uid"`
	GID    int   `json:"gid"`
	Groups []int `json:"groups,omitempty"`

	// Keep is the set of capabilities left in every set (empty when switching user).
	Keep []int `json:"keep"`

	// Devices are host device nodes (or directories of them) bound into the agent's private /dev
	// besides the standard ones (devNodes).
	Devices []string `json:"devices,omitempty"`
	// Landlock scopes abstract unix sockets and signals to the agent's own domain (the runner sets
	// it when the kernel's Landlock ABI has scopes, and says so when it has not).
	Landlock bool `json:"landlock,omitempty"`
}

// devNodes are the host devices every agent gets in its private /dev: the ones a program expects,
// none that reaches hardware, kernel memory or another process's terminal.
var devNodes = []string{"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"}

// devLinks are the symlinks of a standard /dev.
var devLinks = [][2]string{
	{"pts/ptmx", "/dev/ptmx"}, {"/proc/self/fd", "/dev/fd"},
	{"/proc/self/fd/0", "/dev/stdin"}, {"/proc/self/fd/1", "/dev/stdout"}, {"/proc/self/fd/2", "/dev/stderr"},
}

// caBundles are the system CA bundle paths the common TLS stacks read (Go's list, which covers
// OpenSSL's, curl's and Python's defaults on every major distribution).
var caBundles = []string{
	"/etc/ssl/certs/ca-certificates.crt",                // Debian, Ubuntu, Arch, Gentoo
	"/etc/pki/tls/certs/ca-bundle.crt",                  // Fedora, RHEL 6
	"/etc/ssl/ca-bundle.pem",                            // openSUSE
	"/etc/pki/tls/cacert.pem",                           // OpenELEC
	"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // CentOS, RHEL 7+
	"/etc/ssl/cert.pem",                                 // Alpine, macOS-style layouts
}

const resolvConf = "/etc/resolv.conf"

// childOS is the seam between the init step's logic and the kernel. The real one makes syscalls;
// the test fake records a transcript.
type childOS interface {
	Stat(path string) (fs.FileInfo, error)
	EvalSymlinks(path string) (string, error)
	ReadFile(path string) ([]byte, error)
	WriteFile(path string, data []byte, perm os.FileMode) error

	Mkdir(path string, perm os.FileMode) error
	Symlink(target, path string) error

	MakePrivate() error                            // mount --make-rprivate /
	MountProc() error                              // the host's /proc detached, the PID namespace's own mounted
	MountTmpfs(target, opts string, ro bool) error // nosuid,nodev,noexec
	MountDevpts(target string) error               // a new devpts instance: the agent's own ptys
	Bind(source, target string) error              // recursive bind
	SetReadOnly(target string, ro, recursive bool) error
	Detach(target string) error // umount -l

	Chdir(dir string) error
	UnshareCgroup() error
	DropBounding(keep []int) error // every capability not in keep leaves the bounding set
	ClearAmbient() error
	SetUser(uid, gid int, groups []int) error
	ParentDeathSignal() error      // SIGKILL when the parent dies (re-armed: setuid clears it)
	SetCaps(keep []int) error      // effective = permitted = keep, inheritable = none
	NoNewPrivs() error             // PR_SET_NO_NEW_PRIVS
	CloseInherited() error         // every descriptor but stdin, stdout and stderr closes at exec
	ScopeLandlock() error          // abstract unix sockets and signals limited to the agent's domain
	Seccomp() error                // the filter of seccomp.go, on this thread
	Exec(argv, env []string) error // only returns on failure
}

// setupNamespace builds the agent's mount namespace (init step, PID 1 of the agent's PID
// namespace), in this order:
//
//  1. make every mount private, so nothing done here reaches the host;
//  2. the host's /proc detached and the PID namespace's own mounted: the agent sees its own
//     processes and no others;
//  3. profile read-only paths, then the workspace read-write again;
//  4. a staging tmpfs with the CA bundles, resolv.conf and an empty unreadable file;
//  5. a private /dev: the standard devices, the profile's devices, a pty instance of its own, an
//     empty /dev/shm — no disks, no kernel memory, no other session's terminal;
//  6. CA bundles and resolv.conf bound over the system ones;
//  7. hidden paths covered (directories by an empty tmpfs, files by the empty file) — after the
//     workspace, so a masked path inside it stays masked;
//  8. /sys, the cgroup mounts, /proc/sys and the like made read-only;
//  9. the staging tmpfs detached, the working directory re-entered through the new mounts (a
//     directory handle kept from before would still see what is now hidden);
//  10. a cgroup namespace rooted at the agent's cgroup (inherited by the exec step).
//
// Any error stops the setup: the agent is never started in a half-built namespace.
func setupNamespace(spec childSpec, sys childOS) error {
	if len(spec.Argv) == 0 {
		return errors.New("no command")
	}
	if err := sys.MakePrivate(); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	if err := sys.MountProc(); err != nil {
		return fmt.Errorf("mounting the PID namespace's /proc: %w", err)
	}
	for _, p := range spec.ReadOnly {
		if err := bindReadOnly(sys, p, true); err != nil {
			return err
		}
	}
	if spec.Workspace != "" {
		if err := sys.Bind(spec.Workspace, spec.Workspace); err != nil {
			return fmt.Errorf("binding workspace %s: %w", spec.Workspace, err)
		}
		if err := sys.SetReadOnly(spec.Workspace, false, false); err != nil {
			return fmt.Errorf("making workspace %s writable: %w", spec.Workspace, err)
		}
	}

	if err := sys.MountTmpfs(spec.Staging, "mode=0700,size=16m", false); err != nil {
		return fmt.Errorf("mounting staging tmpfs on %s: %w", spec.Staging, err)
	}
	empty := filepath.Join(spec.Staging, "hidden")
	if err := sys.WriteFile(empty, nil, 0); err != nil {
		return fmt.Errorf("staging: %w", err)
	}
	if err := privateDev(spec, sys); err != nil {
		return err
	}
	if err := installCABundles(spec, sys); err != nil {
		return err
	}
	if err := installResolvConf(spec, sys); err != nil {
		return err
	}
	for _, p := range spec.Hide {
		if err := hide(sys, p, empty); err != nil {
			return err
		}
	}
	for _, p := range spec.Protect {
		if err := bindReadOnly(sys, p, true); err != nil {
			return err
		}
	}
	if err := sys.Detach(spec.Staging); err != nil {
		return fmt.Errorf("detaching staging tmpfs: %w", err)
	}
	if err := sys.Chdir(spec.Dir); err != nil {
		return fmt.Errorf("entering %s: %w", spec.Dir, err)
	}
	if err := sys.UnshareCgroup(); err != nil {
		return fmt.Errorf("cgroup namespace: %w", err)
	}
	return nil
}

// execAgent is the exec step: it drops privileges and seals the process, then execs the agent.
//
//  1. capabilities leave the bounding and ambient sets, the user is switched, the remaining sets
//     are reduced to Keep, no_new_privs is set;
//  2. every descriptor but stdin, stdout and stderr is marked close-on-exec: nothing the invoking
//     shell (or firma) left open reaches the agent;
//  3. Landlock scopes abstract unix sockets and signals to the agent's own domain (where the
//     kernel has scopes);
//  4. the seccomp filter, last: from here on only exec is left to do.
//
// Any error stops the step before exec.
func execAgent(spec childSpec, sys childOS) error {
	if len(spec.Argv) == 0 {
		return errors.New("no command")
	}
	if err := sys.DropBounding(spec.Keep); err != nil {
		return fmt.Errorf("dropping bounding capabilities: %w", err)
	}
	if err := sys.ClearAmbient(); err != nil {
		return fmt.Errorf("clearing ambient capabilities: %w", err)
	}
	if spec.UID >= 0 {
		if err := sys.SetUser(spec.UID, spec.GID, spec.Groups); err != nil {
			return fmt.Errorf("switching to uid %d gid %d: %w", spec.UID, spec.GID, err)
		}
	}
	if err := sys.ParentDeathSignal(); err != nil {
		return err
	}
	if err := sys.SetCaps(spec.Keep); err != nil {
		return fmt.Errorf("setting capabilities: %w", err)
	}
	if err := sys.NoNewPrivs(); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	if err := sys.CloseInherited(); err != nil {
		return fmt.Errorf("closing inherited descriptors: %w", err)
	}
	if spec.Landlock {
		if err := sys.ScopeLandlock(); err != nil {
			return fmt.Errorf("landlock scopes: %w", err)
		}
	}
	if err := sys.Seccomp(); err != nil {
		return fmt.Errorf("seccomp filter: %w", err)
	}
	if err := sys.Exec(spec.Argv, spec.Env); err != nil {
		return fmt.Errorf("exec %s: %w", spec.Argv[0], err)
	}
	return nil
}

// privateDev mounts the agent's /dev: a tmpfs holding the standard device nodes and the profile's
// devices, bound from the host's /dev (reached through the staging directory once /dev is
// covered), a devpts instance of its own, an empty /dev/shm and the usual symlinks. The tmpfs
// itself ends read-only. A device the host lacks is skipped.
func privateDev(spec childSpec, sys childOS) error {
	host := filepath.Join(spec.Staging, "dev")
	if err := sys.Mkdir(host, 0o700); err != nil {
		return fmt.Errorf("private /dev: %w", err)
	}
	if err := sys.Bind("/dev", host); err != nil {
		return fmt.Errorf("private /dev: keeping the host's /dev: %w", err)
	}
	type node struct {
		path string
		dir  bool
	}
	var nodes []node
	for _, p := range dedupe(append(append([]string(nil), devNodes...), spec.Devices...)) {
		fi, err := sys.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("private /dev: %w", err)
		}
		nodes = append(nodes, node{p, fi.IsDir()})
	}
	if err := sys.MountTmpfs("/dev", "mode=0755,size=64k", false); err != nil {
		return fmt.Errorf("private /dev: %w", err)
	}
	for _, n := range nodes {
		if err := makeMountPoint(sys, n.path, n.dir); err != nil {
			return fmt.Errorf("private /dev: %w", err)
		}
		if err := sys.Bind(filepath.Join(host, strings.TrimPrefix(n.path, "/dev/")), n.path); err != nil {
			return fmt.Errorf("private /dev: binding %s: %w", n.path, err)
		}
	}
	for _, d := range []string{"/dev/pts", "/dev/shm"} {
		if err := sys.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("private /dev: %w", err)
		}
	}
	if err := sys.MountDevpts("/dev/pts"); err != nil {
		return fmt.Errorf("private /dev: ptys: %w", err)
	}
	if err := sys.MountTmpfs("/dev/shm", "mode=1777,size=64m", false); err != nil {
		return fmt.Errorf("private /dev: /dev/shm: %w", err)
	}
	for _, l := range devLinks {
		if err := sys.Symlink(l[0], l[1]); err != nil {
			return fmt.Errorf("private /dev: %w", err)
		}
	}
	if err := sys.SetReadOnly("/dev", true, false); err != nil {
		return fmt.Errorf("private /dev: %w", err)
	}
	return nil
}

// makeMountPoint creates p (and the directories above it, below /dev) for a bind mount.
func makeMountPoint(sys childOS, p string, dir bool) error {
	var parents []string
	for d := filepath.Dir(p); d != "/dev" && d != "/" && d != "."; d = filepath.Dir(d) {
		parents = append([]string{d}, parents...)
	}
	for _, d := range parents {
		if _, err := sys.Stat(d); err == nil {
			continue
		}
		if err := sys.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	if dir {
		return sys.Mkdir(p, 0o755)
	}
	return sys.WriteFile(p, nil, 0o644)
}

// bindReadOnly binds p over itself and makes it read-only; a missing p is skipped.
func bindReadOnly(sys childOS, p string, recursive bool) error {
	if _, err := sys.Stat(p); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("read-only %s: %w", p, err)
	}
	if err := sys.Bind(p, p); err != nil {
		return fmt.Errorf("binding %s read-only: %w", p, err)
	}
	if err := sys.SetReadOnly(p, true, recursive); err != nil {
		return fmt.Errorf("making %s read-only: %w", p, err)
	}
	return nil
}

// hide covers p: a directory with an empty read-only tmpfs, anything else (files, sockets) with an
// empty file nobody may open. A missing p is skipped.
func hide(sys childOS, p, empty string) error {
	fi, err := sys.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("hiding %s: %w", p, err)
	}
	if fi.IsDir() {
		if err := sys.MountTmpfs(p, "mode=0000,size=4k", true); err != nil {
			return fmt.Errorf("hiding %s: %w", p, err)
		}
		return nil
	}
	if err := sys.Bind(empty, p); err != nil {
		return fmt.Errorf("hiding %s: %w", p, err)
	}
	if err := sys.SetReadOnly(p, true, false); err != nil {
		return fmt.Errorf("hiding %s: %w", p, err)
	}
	return nil
}

// installCABundles appends the CA to every system bundle that exists. Symlinked names for one file
// (/usr/lib/ssl/cert.pem → /etc/ssl/certs/ca-certificates.crt) are handled once.
func installCABundles(spec childSpec, sys childOS) error {
	if spec.CAPEM == "" {
		return nil
	}
	done := map[string]bool{}
	for _, b := range spec.Bundles {
		real, err := sys.EvalSymlinks(b)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("CA bundle %s: %w", b, err)
		}
		if done[real] {
			continue
		}
		orig, err := sys.ReadFile(real)
		if err != nil {
			return fmt.Errorf("CA bundle %s: %w", real, err)
		}
		staged := filepath.Join(spec.Staging, fmt.Sprintf("ca-bundle-%d.pem", len(done)))
		if err := sys.WriteFile(staged, appendPEM(orig, spec.CAPEM), 0o444); err != nil {
			return fmt.Errorf("staging CA bundle: %w", err)
		}
		if err := sys.Bind(staged, real); err != nil {
			return fmt.Errorf("binding CA bundle over %s: %w", real, err)
		}
		if err := sys.SetReadOnly(real, true, false); err != nil {
			return fmt.Errorf("CA bundle %s: %w", real, err)
		}
		done[real] = true
	}
	if len(done) == 0 {
		return fmt.Errorf("no system CA bundle to add firma's CA to (looked for %s)", strings.Join(spec.Bundles, ", "))
	}
	return nil
}

func appendPEM(bundle []byte, pem string) []byte {
	out := append([]byte(nil), bundle...)
	if len(out) > 0 && out[len(out)-1] != '\n' {
		out = append(out, '\n')
	}
	out = append(out, "# firma run: the firma CA\n"...)
	out = append(out, pem...)
	if !strings.HasSuffix(pem, "\n") {
		out = append(out, '\n')
	}
	return out
}

// installResolvConf points resolv.conf at the sidecar's resolver, keeping search and options lines.
// A host without /etc/resolv.conf is left alone: the resolver then asks 127.0.0.1, which the kernel
// redirects all the same.
func installResolvConf(spec childSpec, sys childOS) error {
	if spec.Nameserver == "" {
		return nil
	}
	orig, err := sys.ReadFile(resolvConf)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading %s: %w", resolvConf, err)
	}
	staged := filepath.Join(spec.Staging, "resolv.conf")
	if err := sys.WriteFile(staged, newResolvConf(orig, spec.Nameserver), 0o444); err != nil {
		return fmt.Errorf("staging resolv.conf: %w", err)
	}
	if err := sys.Bind(staged, resolvConf); err != nil {
		return fmt.Errorf("binding %s: %w", resolvConf, err)
	}
	if err := sys.SetReadOnly(resolvConf, true, false); err != nil {
		return fmt.Errorf("%s: %w", resolvConf, err)
	}
	return nil
}

func newResolvConf(orig []byte, nameserver string) []byte {
	var b strings.Builder
	b.WriteString("# written by firma run: DNS goes to the firma sidecar\n")
	b.WriteString("nameserver " + nameserver + "\n")
	for _, line := range strings.Split(string(orig), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && (f[0] == "search" || f[0] == "domain" || f[0] == "options") {
			b.WriteString(strings.Join(f, " ") + "\n")
		}
	}
	return []byte(b.String())
}

// nameserverFor picks resolv.conf's nameserver from the sidecar's DNS listen address: its IP when it
// is a specific one, else 127.0.0.53. Either way the kernel redirects port 53 to the sidecar.
func nameserverFor(dns string) string {
	if ap, err := netip.ParseAddrPort(dns); err == nil && !ap.Addr().IsUnspecified() {
		return ap.Addr().Unmap().String()
	}
	if a, err := netip.ParseAddr(dns); err == nil && !a.IsUnspecified() {
		return a.Unmap().String()
	}
	return "127.0.0.53"
}
