package main

// commands is the subcommand table. Each entry's run function lives in its own file
// (sidecar.go, run.go, authority.go, audit.go, policy.go, ca.go, check.go, demo.go).
var commands = map[string]command{
	"audit": {"verify and tail the signed audit log (firma audit verify|tail)", auditCmd},
	"run":   {"run a program under enforcement (firma run --profile P -- CMD...)", runCmd},
}
