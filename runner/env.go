package runner

import (
	"path"
	"sort"
	"strings"
)

// proxyVars are removed from every agent's environment, in any letter case: enforcement happens in
// the kernel, and a proxy variable left over from the user's shell would only send traffic somewhere
// it need not go (or tell the agent how to dodge the transparent path).
var proxyVars = []string{"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy", "socks_proxy"}

// caVars point the common TLS stacks at the bundle that trusts firma's CA: OpenSSL and Go
// (SSL_CERT_FILE), Python requests, Node (which otherwise uses its compiled-in roots), curl, git.
var caVars = []string{"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO"}

func isProxyVar(name string) bool {
	for _, v := range proxyVars {
		if strings.EqualFold(name, v) {
			return true
		}
	}
	return false
}

func isCAVar(name string) bool {
	for _, v := range caVars {
		if name == v {
			return true
		}
	}
	return false
}

func validEnvName(name string) bool {
	if name == "" {
		return false
	}
	for i, c := range name {
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// envChange is what childEnv does to the environment it is given.
type envChange struct {
	Unset []string          // patterns (path.Match) of names to remove
	Set   map[string]string // names to set, replacing any inherited value
}

// childEnv returns base with proxy variables and the Unset patterns removed and Set applied. The
// order of base is kept; new variables follow, sorted by name, so the result is deterministic.
func childEnv(base []string, ch envChange) []string {
	out := make([]string, 0, len(base)+len(ch.Set))
	seen := map[string]bool{}
	for _, kv := range base {
		name, _, ok := strings.Cut(kv, "=")
		if !ok || isProxyVar(name) || matchesAny(name, ch.Unset) || seen[name] {
			continue
		}
		seen[name] = true
		if v, ok := ch.Set[name]; ok {
			kv = name + "=" + v
		}
		out = append(out, kv)
	}
	for _, name := range sortedKeys(ch.Set) {
		if !seen[name] {
			out = append(out, name+"="+ch.Set[name])
		}
	}
	return out
}

func matchesAny(name string, patterns []string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}

// lookupEnv returns the last value of name in env.
func lookupEnv(env []string, name string) (string, bool) {
	for i := len(env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(env[i], name+"="); ok {
			return v, true
		}
	}
	return "", false
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
