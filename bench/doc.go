// Package bench is firma's comparison harness: it measures firma against a direct connection and
// against the proxies a user would pick instead (tinyproxy, squid), in one run, with interleaved
// rounds, and writes the table that the data-path work is judged by.
//
// `make bench` (root) runs it: BenchmarkCompare in compare_test.go starts a fake upstream on a
// 127.x address, firma sidecars with their programs attached to fresh cgroups, tinyproxy and squid
// with configurations written to a temp dir, and drives each with the load generator
// (internal/e2e/cmd/loadgen, logic in bench/load), placed in the agent cgroup for the transparent
// systems. Every response is verified; a system that fails, a wrong byte or a leaked credential
// fails the run. Timing never does.
//
// The package's non-test code is what can be checked without privilege: the plan (systems,
// workloads, sizes), the statistics and the report, process accounting from /proc, the peers'
// configuration files and profile capture. It must not decide anything for firma or reach beyond
// 127.0.0.0/8.
package bench
