#!/usr/bin/env bash
# setup.sh: create .local/ (at the repository root) with a working sidecar baseline, as the guide
# "Secure a local coding agent" (docs/guides/secure-a-coding-agent.md) expects. It never
# overwrites what is already there. Run it as yourself, not root: .local/ is yours, and the sidecar
# (root) writes its audit log and CA into it.
#
#   examples/firma-run/local/setup.sh
#
set -euo pipefail

root=$(cd "$(dirname "$0")/../../.." && pwd)
assets="$root/examples/firma-run/local/assets"
cd "$root"

mkdir -p .local
chmod 700 .local
copy() {
	if [ -e "$2" ]; then
		echo "kept     $2 (already there)"
	else
		cp "$1" "$2"
		echo "created  $2"
	fi
}
copy "$assets/firma.local.example.toml" .local/firma.toml
mkdir -p .local/issuance
[ -e .local/revocations.txt ] || { : > .local/revocations.txt; echo "created  .local/revocations.txt"; }

# The audit log's signing key: without it the log is hash-chained but not signed, and whoever can
# write the file can rewrite it.
if [ -e .local/audit.key ]; then
	echo "kept     .local/audit.key (already there)"
elif command -v firma >/dev/null 2>&1; then
	firma audit keygen --out .local/audit.key >/dev/null
	echo "created  .local/audit.key and .local/audit.key.pub (the audit log's signing key)"
else
	echo
	echo "firma is not on PATH: run 'sudo make install', then 'firma audit keygen --out .local/audit.key'."
fi
cat <<'NEXT'

.local/ is ready. The sidecar baseline (.local/firma.toml) enforces the agents' slice with the
built-in default policy; check it with:  sudo firma check config .local/firma.toml
Next, per docs/guides/secure-a-coding-agent.md: copy the Claude example config and mapping rules
over the baseline, generate the authority key, append [authority], issue a capability, add the
credential, and run, each in a terminal of its own:
  firma authority -c .local/firma.toml
  sudo ANTHROPIC_API_KEY=sk-ant-... firma sidecar -c .local/firma.toml
  sudo firma run --profile codex --capability-file .local/capability-claude.toml -- claude code
NEXT
