#!/usr/bin/env bash
# setup.sh: create .local/ (at the repository root) with a working sidecar baseline, as the guide
# "Secure a local coding agent" expects. It never overwrites what is already there.
#
#   examples/firma-run/local/setup.sh
#
# Afterwards: swap in the Claude config and mapping rules (cp … .local/), generate the authority
# key, append the [authority] section, issue a capability, and start the three terminals.
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

if ! command -v firma >/dev/null 2>&1; then
	echo
	echo "firma is not on PATH: run 'make build' and use ./firma, or 'sudo make install'."
fi
cat <<'NEXT'

.local/ is ready. The sidecar baseline (.local/firma.toml) enforces the agents' slice with the
built-in default policy; check it with:  firma check config .local/firma.toml
Next, per the guide: copy the Claude example config and mapping rules over the baseline, generate
the authority key, append [authority], issue a capability, and run
  firma authority -c .local/firma.toml
  sudo firma sidecar -c .local/firma.toml
  sudo firma run --profile codex --capability-file .local/capability-claude.toml -- claude code
NEXT
