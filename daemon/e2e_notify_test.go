//go:build linux

package daemon_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openfirma/firma/internal/e2e"
)

// notifyLog collects sd_notify datagrams and, at the moment READY=1 arrives, records whether the
// programs were pinned and the transparent port accepted connections.
type notifyLog struct {
	mu        sync.Mutex
	msgs      []string
	readyOK   bool
	readySeen bool
}

func TestSdNotifyReadyOnlyAfterAttach(t *testing.T) {
	sockDir, err := os.MkdirTemp("", "firma-notify-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })

	s := e2e.PrepareSidecar(t, e2e.SidecarOptions{Env: []string{"NOTIFY_SOCKET=" + sock, "WATCHDOG_USEC=300000"}})
	nl := &notifyLog{}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			msg := string(buf[:n])
			nl.mu.Lock()
			nl.msgs = append(nl.msgs, msg)
			nl.mu.Unlock()
			if strings.Contains(msg, "READY=1") {
				pinned := pinnedLinks(t, s.PinDir)
				c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.Port), time.Second)
				if err == nil {
					c.Close()
				}
				nl.mu.Lock()
				if !nl.readySeen { // the first READY=1 is the one that counts
					nl.readySeen, nl.readyOK = true, pinned && err == nil
				}
				nl.mu.Unlock()
			}
		}
	}()

	if pinnedLinks(t, s.PinDir) {
		t.Fatal("pins exist before the sidecar started")
	}
	s.Start(t)

	waitFor(t, "READY=1", func() bool { nl.mu.Lock(); defer nl.mu.Unlock(); return nl.readySeen })
	nl.mu.Lock()
	if !nl.readyOK {
		t.Errorf("READY=1 arrived before the programs were pinned and the listener was up: %q", nl.msgs)
	}
	if first := nl.msgs[0]; !strings.HasPrefix(first, "READY=1") || !strings.Contains(first, "STATUS=sidecar ready") {
		t.Errorf("first notification = %q, want READY=1 with a STATUS line", first)
	}
	nl.mu.Unlock()
	waitFor(t, "a watchdog ping", func() bool { return nl.has("WATCHDOG=1") })
	s.Stop(t)
	waitFor(t, "STOPPING=1", func() bool { return nl.has("STOPPING=1") })
}

func (nl *notifyLog) has(s string) bool {
	nl.mu.Lock()
	defer nl.mu.Unlock()
	for _, m := range nl.msgs {
		if strings.Contains(m, s) {
			return true
		}
	}
	return false
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
