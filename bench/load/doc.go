// Package load is the comparison harness's traffic: the load generator that plays the agent, the
// fake upstream it talks to, and the contract between them — paths, the payload pattern, and the
// key header that tells the harness whether a credential was injected.
//
// Every response is verified as it arrives (status, exact body, the key the upstream saw), so a
// system that answers fast but wrongly fails the run instead of winning it. The package measures
// and checks; it does not start systems, place processes in cgroups or judge the numbers: that is
// the harness's job (package bench).
package load
