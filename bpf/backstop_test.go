//go:build linux

package bpf_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf/link"

	"github.com/openfirma/firma/bpf"
)

// TestBackstopAlone takes cgroup/setsockopt away — as a compat syscall, a kernel without the hook
// or a tampering root would — and checks that the route-changing options it refuses no longer get
// anything out: the packet backstop drops every packet they route, and reports it. Then Repair puts
// the refusal back.
func TestBackstopAlone(t *testing.T) {
	t.Parallel()
	l := newLab(t, nil)
	for _, name := range []string{"firma_setsockopt", "firma_socket_setsockopt"} {
		pl, err := link.LoadPinnedLink(filepath.Join(l.cfg.PinDir, "links", name), nil)
		if err != nil {
			continue // the BPF LSM one exists only where it could be attached
		}
		if err := pl.Detach(); err != nil {
			t.Fatal(err)
		}
		pl.Close()
	}
	if l.progs.Check().OK() {
		t.Fatal("setsockopt detached and Check sees nothing")
	}

	// What each option does once it is set: the connect or datagram after it is dropped (TCP: the
	// SYN, so connect times out; UDP: sendto fails), or it reroutes nothing and gets to the sidecar.
	dropped := func(op string) outcome {
		errno := "EPERM"
		if op == "connect" || op == "sendto MSG_FASTOPEN" {
			errno = "TIMEOUT"
		}
		return outcome{failed: op, errnos: []string{errno}, report: bpf.RefusalEgress}
	}
	want := map[string]outcome{
		"so_bindtodevice_connect":  dropped("connect"),
		"so_bindtodevice_tfo":      dropped("sendto MSG_FASTOPEN"),
		"so_bindtoifindex_connect": dropped("connect"),
		"ip_unicast_if_dns":        dropped("sendto"),
		"ipv6_rthdr_srh":           dropped("sendto"),
		"ip_options_lsrr":          dropped("connect"),
		"ip_options_ssrr":          dropped("sendto"),
		"ipv6_dstopts":             dropped("sendto"),
		"ipv6_pktinfo_sticky":      dropped("sendto"),
	}
	var names []string
	for n := range want {
		names = append(names, n)
	}
	got, _ := l.runEscape(t, "-only", strings.Join(names, ","))
	for name, w := range want {
		l.checkAttempt(t, got[name], w)
	}
	l.assertSealed(t)

	if err := l.progs.Repair(); err != nil {
		t.Fatal(err)
	}
	if err := l.progs.Check().Err(); err != nil {
		t.Fatalf("after repair: %v", err)
	}
	got, _ = l.runEscape(t, "-only", "so_bindtodevice_connect")
	l.checkAttempt(t, got["so_bindtodevice_connect"], refused("setsockopt SO_BINDTODEVICE", bpf.RefusalSockopt))
}
