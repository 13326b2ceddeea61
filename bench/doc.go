// Package bench is firma's comparison harness: it measures firma against a direct connection and
// against the proxies a user would pick instead (tinyproxy, squid), in one run with interleaved
// rounds, and writes the table that work on the data path is judged by.
//
// # Running it
//
// As root:
//
//	make bench          # every system and workload, 3 rounds; writes bench/results.md
//	make bench-quick    # the same, small and short (< 2 min): for CI, fails only on errors
//	make bench BENCHFLAGS='-systems firma-mitm -workloads keepalive-h1 -rounds 1 -profile /tmp/prof'
//
// BENCHFLAGS are BenchmarkCompare's flags: -systems and -workloads (comma-separated names; direct
// is always added), -rounds, -duration, -bytes, -idle, -idle-rounds, -quick, -out FILE and
// -profile DIR. Only a full run of everything replaces results.md unless -out says otherwise.
// -profile captures a CPU and an allocation profile of each firma sidecar during every run into
// DIR (<system>-<workload>-r<round>.cpu.pprof, read with go tool pprof); it needs the sidecar's
// debug listener, [sidecar.debug] listen_addr (see DebugTOML).
//
// # What it does
//
// BenchmarkCompare (compare_test.go) starts a fake upstream on a 127.x address, port 443 (a Go
// HTTPS server, h2 and HTTP/1.1, certificate from a CA made for the run), one firma sidecar per
// firma system with its programs attached to a fresh cgroup, tinyproxy and squid with
// configurations written to temp dirs, and drives each with the load generator
// (internal/e2e/cmd/loadgen, logic in bench/load): in the sidecar's agent cgroup for the
// transparent systems, outside every cgroup with the proxy's address for the others. Nothing is
// sent beyond 127.0.0.0/8: every system resolves the upstream's name to its 127.x address, and
// squid's DNS points at loopback.
//
// Every response is verified (status, exact body, the key the upstream saw); the credential must
// reach the upstream on MITM systems and must never reach the client; after the run each
// sidecar's audit log must verify and hold an ALLOW decision for every verified connection or
// request. A failure of any kind fails the run, after the report is written; timing never does.
//
// # Extending it
//
// A system is an entry in Systems (plan.go) and a start function in systems_test.go that returns
// a *running: where the client runs, which CA it trusts, the process to measure and how to restart
// it. A workload is a load.Workload with its Spec fields and runner in bench/load, its loadgen
// flags in clientArgs, and a table family in report.go.
//
// The package's non-test code is what can be checked without privilege: the plan, statistics and
// report, process accounting from /proc, the peers' configuration files and profile capture. It
// must not decide anything for firma, nor reach beyond 127.0.0.0/8.
package bench
