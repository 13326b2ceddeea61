//go:build linux

package bpf_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/openfirma/firma/internal/testutil"
)

// TestSealClients runs real clients — curl, python3 (as root and as uid 65534), node and a Go
// program — inside the enforced cgroup with socket(AF_NETLINK) refused, as the BPF LSM refuses it
// (glibc's getaddrinfo asks netlink for the host's addresses with AI_ADDRCONFIG). Each resolves a
// name through whatever resolv.conf names (the programs send port 53 to the stand-in resolver) and
// fetches a URL over IPv4 or IPv6; the stand-in sidecar must answer, both lookups and connections
// must be attributed to the client, and nothing may reach the outside.
func TestSealClients(t *testing.T) {
	t.Parallel()
	l := newLab(t, nil)
	// Any nameserver will do: every query to port 53 goes to the stand-in resolver.
	l.Inside.SetEtc(t, "resolv.conf", fmt.Sprintf("nameserver %s\noptions attempts:2 timeout:3\n", l.Outside4))
	l.Inside.SetEtc(t, "hosts", "127.0.0.1 localhost\n::1 localhost\n")
	l.Inside.SetEtc(t, "nsswitch.conf", "hosts: files dns\n")
	nonetlink := mustBuild(t, "github.com/openfirma/firma/internal/e2e/cmd/nonetlink")
	httpclient := mustBuild(t, "github.com/openfirma/firma/internal/e2e/cmd/httpclient")
	for _, tool := range []string{"curl", "python3", "node", "setpriv"} {
		testutil.RequireTool(t, tool)
	}

	url := fmt.Sprintf("http://svc.firma.test:%d/", labOutsidePort)
	via4 := fmt.Sprintf("stand-in %s:%d", l.Outside4, labOutsidePort)
	via6 := fmt.Sprintf("stand-in [%s]:%d", l.Outside6, labOutsidePort)
	python := `import sys, urllib.request
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())`
	// getaddrinfo with AI_ADDRCONFIG, the flag that makes glibc ask netlink, then the first answer.
	addrconfig := `import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
fam, typ, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_ADDRCONFIG)[0]
s = socket.socket(fam, typ, proto); s.settimeout(10); s.connect(addr)
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
sys.stdout.write(s.makefile("rb").read().decode().split("\r\n\r\n", 1)[1])`
	node := `require("http").get(process.argv[1], r => {
	let b = ""; r.on("data", d => b += d); r.on("end", () => process.stdout.write(b));
}).on("error", e => { console.error(e); process.exit(1); });`
	clients := []struct {
		name, comm string
		argv       []string
		want       []string // the stand-in's answer, by the address family the client picked
	}{
		{"curl ipv4", "curl", []string{"curl", "-sS", "-4", "--max-time", "10", url}, []string{via4}},
		{"curl ipv6", "curl", []string{"curl", "-sS", "-6", "--max-time", "10", url}, []string{via6}},
		{"python3", "python3", []string{"python3", "-c", python, url}, []string{via4, via6}},
		{"python3 as nobody", "python3", []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", systemPython(t), "-c", python, url}, []string{via4, via6}},
		{"python3 AI_ADDRCONFIG", "python3", []string{"python3", "-c", addrconfig, "svc.firma.test", fmt.Sprint(labOutsidePort)}, []string{via4, via6}},
		{"node", "node", []string{"node", "-e", node, url}, []string{via4, via6}},
		{"go", "httpclient", []string{httpclient, url}, []string{"200 " + via4, "200 " + via6}},
	}
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			cmd := l.command(t, nonetlink, c.argv...)
			out, err := cmd.CombinedOutput()
			got := strings.TrimSpace(string(out))
			if err != nil || !slices.Contains(c.want, got) {
				t.Fatalf("%s: %v: %q, want one of %q", c.name, err, got, c.want)
			}
			pid := uint32(cmd.Process.Pid)
			found := false
			for _, f := range l.sidecar.seen("GET / ") {
				found = found || (f.Err == nil && f.Origin.PID == pid && f.Origin.Comm == c.comm && f.Origin.CgroupID == l.cg.ID)
			}
			if !found {
				t.Errorf("the stand-in sidecar has no connection from %s (pid %d): %+v", c.comm, pid, l.sidecar.seen("GET / "))
			}
			found = false
			for _, f := range l.sidecar.lookups() {
				found = found || (f.Err == nil && f.Origin.PID == pid && f.First == "svc.firma.test.")
			}
			if !found {
				t.Errorf("the stand-in resolver has no lookup of svc.firma.test from pid %d: %+v", pid, l.sidecar.lookups())
			}
		})
	}
	l.assertSealed(t)
}

// systemPython is a python3 that uid 65534 can run: the distribution's, not one under /root.
func systemPython(t *testing.T) string {
	t.Helper()
	p := "/usr/bin/python3"
	if err := unix.Access(p, unix.X_OK); err != nil {
		p = testutil.RequireTool(t, "python3")
	}
	return p
}

func mustBuild(t *testing.T, pkg string) string {
	t.Helper()
	p, err := testutil.BuildGo(pkg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
