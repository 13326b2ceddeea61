// Package runner owns `firma run`: it puts an unmodified program under enforcement from its first
// instruction, without proxy variables.
//
// In order, and undone in reverse when anything fails or the program ends:
//
//   - ask the sidecar over its control socket how it enforces (daemon/control Info); a sidecar that
//     is not running is an error and nothing is created;
//   - make a fresh cgroup below the sidecar's enforced parent — a transient scope over D-Bus when
//     systemd manages the host and the parent is a slice, a cgroupfs directory otherwise;
//   - register that cgroup with the sidecar as the agent (id, session, capability file), which
//     verifies the capability first;
//   - clone `firma run __init` straight into the cgroup (clone3 CLONE_INTO_CGROUP) with a new mount
//     namespace; it appends firma's CA to the system bundles and binds them over the originals,
//     points resolv.conf at the sidecar, hides the sidecar's files and the host's control sockets,
//     makes /sys and the cgroup mounts read-only, applies the profile (workspace, read-only paths,
//     masks, environment), enters a cgroup namespace, drops capabilities, sets no_new_privs,
//     optionally switches user, and execs the program;
//   - forward SIGINT, SIGTERM, SIGHUP and SIGQUIT, wait, and exit with the program's status (128+n
//     for signal n); kill whatever is left in the cgroup, remove it, unregister.
//
// The runner must not dial the network: the only socket it opens is the sidecar's local control
// socket. It never sets a proxy variable and removes any it inherits. It needs root.
package runner
