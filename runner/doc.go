// Package runner owns `firma run`: it puts an unmodified program under enforcement from its first
// instruction, without proxy variables, in a sandbox that keeps it from going around the sidecar.
//
// In order, and undone in reverse when anything fails or the program ends:
//
//   - mark every descriptor firma run inherited close-on-exec: nothing the invoking shell left open
//     (a socket made outside every enforced cgroup) reaches anything firma run starts;
//   - ask the sidecar over its control socket how it enforces (daemon/control Info); a sidecar that
//     is not running is an error and nothing is created;
//   - make a fresh cgroup below the sidecar's enforced parent — a transient scope over D-Bus when
//     systemd manages the host and the parent is a slice, a cgroupfs directory otherwise;
//   - register that cgroup with the sidecar as the agent (id, session, capability file), which
//     verifies the capability first;
//   - clone `firma run __init` straight into the cgroup (clone3 CLONE_INTO_CGROUP) with new mount
//     and PID namespaces. As PID 1 it mounts the namespace's own /proc and a private /dev,
//     appends firma's CA to the system bundles and binds them over the originals, points
//     resolv.conf at the sidecar, hides the sidecar's files and the host's control sockets, makes
//     /sys and the cgroup mounts read-only, applies the profile (workspace, read-only paths, masks,
//     devices, environment) and enters a cgroup namespace; then it starts `firma run __exec` and
//     stays as the namespace's init: it reaps orphans, forwards the signals firma run passes
//     down the spec pipe, and exits with the agent's status;
//   - `firma run __exec` drops capabilities, optionally switches user, sets no_new_privs, marks
//     every descriptor but stdio close-on-exec, scopes abstract unix sockets and signals with
//     Landlock (where the kernel has scopes; firma run says so where it has not), installs the
//     seccomp filter (seccomp.go) with a notification listener, which it hands to firma run over
//     the notify socket (fd 5), and execs the program;
//   - answer the filter's refusals (notify_linux.go): report each to the sidecar, for the audit log,
//     then give the process its errno;
//   - forward SIGINT, SIGTERM, SIGHUP and SIGQUIT, wait, and exit with the program's status (128+n
//     for signal n); kill whatever is left in the cgroup, remove it, unregister.
//
// The agent sees its init and its own processes only; it cannot signal, trace or take descriptors
// from anything outside; its sockets are unix, inet or inet6, which the cgroup hooks see.
//
// The runner must not dial the network: the only socket it opens is the sidecar's local control
// socket. It never sets a proxy variable and removes any it inherits. It needs root.
package runner
