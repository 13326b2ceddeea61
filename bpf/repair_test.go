//go:build linux

package bpf_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/rs/zerolog"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/internal/testutil"
)

// TestCheckAndRepair tampers with the pinned links as a root attacker or a careless operator would
// — bpftool link detach, rm -r of the pin dir, a link switched to another program, all of it while
// no sidecar runs — and checks that Check and Inspect name exactly what is broken, that the
// tampering has the effect feared, and that Repair (or Attach again) puts everything back.
func TestCheckAndRepair(t *testing.T) {
	t.Parallel()
	port := testutil.FreePort(t)
	cg, cfg, progs := attach(t, port, 0)
	origins := &swappable{o: progs}
	got := listen(t, port, origins)
	redirected := func() bool {
		t.Helper()
		script := `import socket
try:
    s = socket.create_connection(("127.0.0.9", 80), timeout=5); print(s.recv(10).decode().strip())
except OSError as e:
    print("errno", e.errno)`
		out, err := cg.Command(context.Background(), t, "python3", "-c", script).CombinedOutput()
		if err != nil {
			t.Fatalf("client: %v: %s", err, out)
		}
		if strings.TrimSpace(string(out)) != "hi" {
			return false
		}
		select {
		case line := <-got:
			return strings.HasPrefix(line, "dst=127.0.0.9:80 ")
		case <-time.After(5 * time.Second):
			return false
		}
	}
	assertInForce := func(when string, p *bpf.Programs) {
		t.Helper()
		if err := p.Check().Err(); err != nil {
			t.Errorf("%s: check: %v", when, err)
		}
		if err := bpf.Inspect(cfg).Err(); err != nil {
			t.Errorf("%s: inspect: %v", when, err)
		}
		if !redirected() {
			t.Errorf("%s: a connection was not redirected", when)
		}
	}
	assertBroken := func(when string, st bpf.Status, want map[string]bpf.LinkState) {
		t.Helper()
		if !errors.Is(st.Err(), bpf.ErrNotInForce) {
			t.Errorf("%s: status error %v does not wrap ErrNotInForce", when, st.Err())
		}
		broken := map[string]bpf.LinkState{}
		for _, l := range st.Broken() {
			broken[l.Program] = l.State
		}
		if fmt.Sprint(broken) != fmt.Sprint(want) {
			t.Errorf("%s: broken links %v, want %v", when, broken, want)
		}
	}
	pin := func(name string) string { return filepath.Join(cfg.PinDir, "links", name) }
	assertInForce("attached", progs)

	// bpftool link detach firma_connect4.
	l, err := link.LoadPinnedLink(pin("firma_connect4"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Detach(); err != nil {
		t.Fatal(err)
	}
	l.Close()
	assertBroken("connect4 detached", progs.Check(), map[string]bpf.LinkState{"firma_connect4": bpf.LinkDetached})
	assertBroken("connect4 detached (inspect)", bpf.Inspect(cfg), map[string]bpf.LinkState{"firma_connect4": bpf.LinkDetached})
	if redirected() {
		t.Error("connect4 detached, and yet the connection was redirected: the test proves nothing")
	}
	if err := progs.Repair(); err != nil {
		t.Fatalf("repair: %v", err)
	}
	assertInForce("connect4 repaired", progs)

	// rm -r the pin dir: the sidecar's handles keep enforcing, the pins must come back.
	if err := os.RemoveAll(cfg.PinDir); err != nil {
		t.Fatal(err)
	}
	all := map[string]bpf.LinkState{}
	for _, l := range progs.Check().Links {
		all[l.Program] = bpf.LinkUnpinned
	}
	assertBroken("pins removed", progs.Check(), all)
	if !redirected() {
		t.Error("pins removed: enforcement must hold while the sidecar holds its links")
	}
	if err := progs.Repair(); err != nil {
		t.Fatalf("repair: %v", err)
	}
	assertInForce("pins repaired", progs)
	for _, m := range []string{"origins", "counters", "refusals"} {
		if _, err := os.Stat(filepath.Join(cfg.PinDir, m)); err != nil {
			t.Errorf("map pin %s not restored: %v", m, err)
		}
	}

	// A link switched to a program that accepts everything.
	impostor, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.SockOps, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer impostor.Close()
	l, err = link.LoadPinnedLink(pin("firma_sockops"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Update(impostor); err != nil {
		t.Fatal(err)
	}
	l.Close()
	assertBroken("sockops replaced", progs.Check(), map[string]bpf.LinkState{"firma_sockops": bpf.LinkReplaced})
	assertBroken("sockops replaced (inspect)", bpf.Inspect(cfg), map[string]bpf.LinkState{"firma_sockops": bpf.LinkReplaced})
	if err := progs.Repair(); err != nil {
		t.Fatalf("repair: %v", err)
	}
	assertInForce("sockops repaired", progs)

	// With no sidecar running: a link detached, another unpinned (and so gone); Attach repairs.
	progs.Close()
	l, err = link.LoadPinnedLink(pin("firma_egress"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Detach(); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if err := os.Remove(pin("firma_bind4")); err != nil {
		t.Fatal(err)
	}
	assertBroken("sidecar down, tampered (inspect)", bpf.Inspect(cfg),
		map[string]bpf.LinkState{"firma_egress": bpf.LinkDetached, "firma_bind4": bpf.LinkMissing})
	again, err := bpf.Attach(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	origins.swap(again) // the sidecar's successor reads through its own handles
	assertInForce("attached again", again)
	assertOneEach(t, cg.Path)
}

// swappable lets the stand-in sidecar outlive the Programs it looks origins up with.
type swappable struct {
	mu sync.Mutex
	o  bpf.Origins
}

func (s *swappable) swap(o bpf.Origins) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.o = o
}

func (s *swappable) get() bpf.Origins {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.o
}

func (s *swappable) Lookup(peer netip.AddrPort) (bpf.Origin, error) { return s.get().Lookup(peer) }
func (s *swappable) LookupDNS(peer netip.AddrPort, p bpf.Proto) (bpf.Origin, error) {
	return s.get().LookupDNS(peer, p)
}

// assertOneEach checks that the cgroup has exactly one program at each of firma's attach points:
// repairs replace links, they never pile them up.
func assertOneEach(t *testing.T, cgroup string) {
	t.Helper()
	f, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, at := range []ebpf.AttachType{ebpf.AttachCGroupInetEgress, ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet4Bind, ebpf.AttachCGroupSockOps} {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Programs) != 1 {
			t.Errorf("%s: %d programs attached, want 1", at, len(res.Programs))
		}
	}
}
