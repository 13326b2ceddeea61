package main

// commands is the subcommand table. Each entry's run function lives in its own file
// (sidecar.go, run.go, authority.go, audit.go, policy.go, ca.go, check.go, demo.go, doctor.go, version.go).
var commands = map[string]command{
	"audit":     {"verify and tail the signed audit log, make its signing key (firma audit verify|tail|keygen)", auditCmd},
	"authority": {"manage capabilities and serve signed policy bundles (firma authority -c firma.toml)", authorityCmd},
	"ca":        {"show the sidecar's MITM CA: path and fingerprint (firma ca show -c firma.toml)", caCmd},
	"check":     {"validate firma.toml and the files it names (firma check config FILE)", checkCmd},
	"demo":      {"show enforcement end to end with fake upstreams (needs root)", demoCmd},
	"doctor":    {"check the host, the config's files and the running sidecar; say what to fix", doctorCmd},
	"sidecar":   {"run the sidecar (firma sidecar -c firma.toml)", sidecarCmd},
	"run":       {"run a program under enforcement (firma run --profile P -- CMD...)", runCmd},
	"policy":    {"validate, test, suggest and replay Cedar policies and mapping rules (firma policy validate|test|schema|suggest|replay)", policyCmd},
	"version":   {"print the version and the git commit it was built from", versionCmd},
}
