#!/bin/sh
# agent.sh: a stand-in for a coding agent, for the guide "From monitor to enforce"
# (docs/guides/from-monitor-to-enforce.md). It does what such an agent does on the network — reads
# a repository's API, calls an LLM, fetches a package index, talks to a database, reads a mirror,
# uploads a release asset — and sends telemetry nobody asked for. It uses curl and python3, and no
# proxy variable: under `firma run` every connection goes through firma anyway.
#
# Every step reports and carries on, so that the script runs to the end whatever firma (or the
# network) refuses.

step() {
	name=$1
	shift
	if out=$("$@" 2>&1); then
		echo "ok      $name: $(echo "$out" | head -n 1)"
	else
		echo "FAILED  $name: $(echo "$out" | tail -n 1)"
	fi
}

step "repo" curl -sS -f --max-time 10 https://api.github.com/repos/openfirma/firma
step "issues" curl -sS -f --max-time 10 https://api.github.com/repos/openfirma/firma/issues
step "upload" curl -sS -f --max-time 10 -X POST --data-binary @/dev/null \
	https://uploads.github.com/repos/openfirma/firma/releases/1/assets
step "llm" python3 -c '
import json, urllib.request
req = urllib.request.Request("https://api.anthropic.com/v1/messages", method="POST",
    data=json.dumps({"model": "claude", "max_tokens": 16}).encode(), headers={"content-type": "application/json"})
print(urllib.request.urlopen(req, timeout=10).read().decode())'
step "index" python3 -c '
import urllib.request
print(urllib.request.urlopen("https://pypi.org/simple/requests/", timeout=10).read().decode())'
step "database" python3 -c '
import socket
s = socket.create_connection(("db.example.net", 5432), timeout=10)
s.sendall(b"ping\n")
print(s.recv(5).decode().strip())'
step "release" curl -sS -f --max-time 10 http://mirror.example.net/debian/dists/stable/Release
step "package" curl -sS -f --max-time 10 http://mirror.example.net/debian/pool/main/c/curl.deb
step "telemetry" curl -sS -f --max-time 10 -d 'event=start' https://telemetry.example.net/collect
