// Package cgroup is firma's one place for cgroup v2 paths: where the unified hierarchy is mounted
// (from mountinfo), the canonical form of a cgroup path relative to that mount, how systemd nests
// slices, and which cgroup a process is in. The bpf loader, the sidecar and `firma run` all use it,
// so a configured cgroup names the same directory everywhere.
//
// It only parses and computes paths; it creates, attaches and moves nothing.
package cgroup
