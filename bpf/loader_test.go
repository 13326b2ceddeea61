//go:build linux

package bpf_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/internal/testutil"
)

// attach loads the real programs onto a fresh cgroup with a fresh pin dir.
func attach(t *testing.T, port, dnsPort uint16) (*testutil.Cgroup, bpf.Config, *bpf.Programs) {
	t.Helper()
	testutil.RequireRoot(t)
	cg := testutil.NewCgroup(t, nil)
	cfg := bpf.Config{
		Cgroup:      cg.Path,
		PinDir:      filepath.Join("/sys/fs/bpf", "firma-test-"+filepath.Base(cg.Path)),
		SidecarPort: port,
		DNSPort:     dnsPort,
		IPv6:        true,
	}
	return cg, cfg, attachCfg(t, cfg)
}

// listen stands in for the sidecar: it accepts on both loopbacks and reports each peer's origin.
func listen(t *testing.T, port uint16, origins bpf.Origins) <-chan string {
	t.Helper()
	out := make(chan string, 16)
	for _, addr := range []string{fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("[::1]:%d", port)} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				peer := netip.MustParseAddrPort(c.RemoteAddr().String())
				o, err := origins.Lookup(peer)
				if err != nil {
					out <- "error: " + err.Error()
				} else {
					out <- fmt.Sprintf("dst=%s family=%d comm=%s pid>0=%v", o.Dst, o.Family, o.Comm, o.PID > 0)
				}
				c.Write([]byte("hi\n"))
				c.Close()
			}
		}()
	}
	return out
}

func TestRedirectRecordsOrigin(t *testing.T) {
	t.Parallel()
	port := testutil.FreePort(t)
	cg, _, progs := attach(t, port, 0)
	got := listen(t, port, progs)

	// Originals on loopback: were the redirect to fail, nothing would leave the machine.
	cases := []struct{ target, want string }{
		{"127.0.0.7:443", "dst=127.0.0.7:443 family=4"},
		{"[::1]:8443", "dst=[::1]:8443 family=6"},
		{"[::ffff:127.0.0.9]:80", "dst=127.0.0.9:80 family=6"},
	}
	for _, tc := range cases {
		script := fmt.Sprintf(`import socket
s = socket.create_connection((%q, %s), timeout=5)
print(s.recv(10).decode().strip())`, hostOf(tc.target), portOf(tc.target))
		cmd := cg.Command(context.Background(), t, "python3", "-c", script)
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "hi" {
			t.Fatalf("%s: client: %v: %s", tc.target, err, out)
		}
		select {
		case line := <-got:
			if !strings.HasPrefix(line, tc.want) || !strings.Contains(line, "comm=python3") || !strings.Contains(line, "pid>0=true") {
				t.Errorf("%s: sidecar saw %q, want prefix %q with comm=python3", tc.target, line, tc.want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: nothing accepted", tc.target)
		}
	}
}

func TestRefusesUDPAndSelf(t *testing.T) {
	t.Parallel()
	port := testutil.FreePort(t)
	cg, _, _ := attach(t, port, 0)
	script := fmt.Sprintf(`import socket, sys
def attempt(name, fn):
    try:
        fn(); print(name, "ok")
    except OSError as e:
        print(name, "refused", e.errno)
attempt("udp-connect", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).connect(("127.0.0.7", 443)))
attempt("udp-sendto", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.7", 443)))
attempt("dns-unconfigured", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.7", 53)))
attempt("self", lambda: socket.create_connection(("127.0.0.1", %d), timeout=2))
attempt("raw", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
attempt("ping", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP))
`, port)
	out, err := cg.Command(context.Background(), t, "python3", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for _, want := range []string{"udp-connect refused 1", "udp-sendto refused 1", "dns-unconfigured refused 1", "self refused 1", "raw refused 1", "ping refused 1"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("want %q in:\n%s", want, out)
		}
	}
}

func TestOutsideCgroupUntouched(t *testing.T) {
	port := testutil.FreePort(t)
	_, _, progs := attach(t, port, 0)
	got := listen(t, port, progs)
	up := testutil.NewTCPCounter(t, netip.MustParseAddrPort("127.0.0.1:0"))
	c, err := net.Dial("tcp", up.Addr.String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case line := <-got:
		t.Fatalf("a connection from outside the cgroup was redirected: %s", line)
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := progs.Lookup(netip.MustParseAddrPort("127.0.0.1:1")); !errors.Is(err, bpf.ErrNoOrigin) {
		t.Fatalf("lookup of an unknown peer: %v", err)
	}
}

func hostOf(s string) string {
	h, _, _ := net.SplitHostPort(s)
	return h
}

func portOf(s string) string {
	_, p, _ := net.SplitHostPort(s)
	return p
}

// With IPv6 off, native IPv6 is refused (and reported) while v4-mapped IPv4 still goes through.
func TestIPv6Off(t *testing.T) {
	t.Parallel()
	testutil.RequireRoot(t)
	cg := testutil.NewCgroup(t, nil)
	port := testutil.FreePort(t)
	progs := attachCfg(t, bpf.Config{
		Cgroup: cg.Path, PinDir: filepath.Join("/sys/fs/bpf", "firma-test-"+filepath.Base(cg.Path)),
		SidecarPort: port,
	})
	reports := collectRefusals(t, progs)
	got := listen(t, port, progs)
	script := `import socket
for target in (("::1", 8443), ("::ffff:127.0.0.9", 80)):
    try:
        s = socket.create_connection(target, timeout=5); print(target[0], s.recv(10).decode().strip())
    except OSError as e:
        print(target[0], "refused", e.errno)`
	cmd := cg.Command(context.Background(), t, "python3", "-c", script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if want := "::1 refused 1\n::ffff:127.0.0.9 hi\n"; string(out) != want {
		t.Errorf("got %q, want %q", out, want)
	}
	select {
	case line := <-got:
		if !strings.HasPrefix(line, "dst=127.0.0.9:80 family=6") {
			t.Errorf("sidecar saw %q", line)
		}
	case <-time.After(5 * time.Second):
		t.Error("the v4-mapped connection did not reach the sidecar")
	}
	if _, ok := reports.await(func(r bpf.Refusal) bool {
		return r.Kind == bpf.RefusalIPv6 && r.PID == uint32(cmd.Process.Pid) && r.Addr.String() == "[::1]:8443"
	}); !ok {
		t.Errorf("no ipv6 report: %v", reports.snapshot())
	}
}
