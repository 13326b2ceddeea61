package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// TestMain lets the test binary act as a control client in a child process (for the root tests
// that need a different uid or cgroup): FIRMA_CONTROL_DIAL=<socket> prints what Info returned.
func TestMain(m *testing.M) {
	if path := os.Getenv("FIRMA_CONTROL_DIAL"); path != "" {
		c, err := Dial(context.Background(), path)
		if err == nil {
			_, err = c.Info(context.Background())
		}
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("ok")
		os.Exit(0)
	}
	if path := os.Getenv("FIRMA_CONTROL_IMPOSTOR"); path != "" {
		impostor(path)
		return
	}
	os.Exit(m.Run())
}

// impostor listens on path as whoever runs it, says "listening", answers the first request of the
// first connection with an Info that names the cgroup root, and says how many bytes it received.
func impostor(path string) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("listening")
	c, err := ln.Accept()
	if err != nil {
		os.Exit(1)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, _ := io.ReadAll(io.LimitReader(c, 1))
	if len(b) > 0 {
		c.Write([]byte(`{"ok":true,"info":{"version":"impostor","cgroup":"/"}}` + "\n"))
	}
	fmt.Printf("received %d bytes\n", len(b))
	os.Exit(0)
}

type fakeRegistry struct {
	info Info
	mu   sync.Mutex
	regs map[string]Registration
	// reject, when set, is returned by Register.
	reject  error
	refused []Refusal
}

func (f *fakeRegistry) Info() Info { return f.info }

func (f *fakeRegistry) Register(_ context.Context, r Registration) error {
	if f.reject != nil {
		return f.reject
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.regs[r.Cgroup] = r
	return nil
}

func (f *fakeRegistry) Unregister(_ context.Context, cg string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.regs, cg)
	return nil
}

func (f *fakeRegistry) Refused(_ context.Context, r Refusal) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refused = append(f.refused, r)
	return nil
}

func (f *fakeRegistry) registered(cg string) (Registration, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.regs[cg]
	return r, ok
}

// startServer serves reg on a socket in a fresh temp dir, accepting this process's uid.
func startServer(t *testing.T, reg *fakeRegistry, tweak func(*Server)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "run", "control.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(reg, zerolog.Nop())
	s.uid = uint32(os.Getuid())
	s.peerCgroup = func(int32) (string, error) { return "/user.slice", nil }
	if tweak != nil {
		tweak(s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return path
}

func newRegistry() *fakeRegistry {
	return &fakeRegistry{
		info: Info{
			Version:   "test",
			Cgroup:    "/firma-agents.slice",
			CACertPEM: "-----BEGIN CERTIFICATE-----\n...\n",
			DNS:       "127.0.0.1:15053",
			Hide:      []string{"/run/firma/control.sock", "/var/lib/firma/ca"},
		},
		regs: map[string]Registration{},
	}
}

func dial(t *testing.T, path string) *Client {
	t.Helper()
	c, err := Dial(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestInfoRegisterUnregister(t *testing.T) {
	reg := newRegistry()
	path := startServer(t, reg, nil)
	c := dial(t, path)
	ctx := context.Background()

	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Cgroup != reg.info.Cgroup || info.CACertPEM != reg.info.CACertPEM || info.DNS != reg.info.DNS ||
		strings.Join(info.Hide, ",") != strings.Join(reg.info.Hide, ",") || info.Version != "test" {
		t.Fatalf("info = %+v, want %+v", info, reg.info)
	}

	r := Registration{Cgroup: "/firma-agents.slice/run-1", AgentID: "codex", SessionID: "s1",
		CapabilityFile: "/etc/firma/cap.toml", PID: 42}
	if err := c.Register(ctx, r); err != nil {
		t.Fatal(err)
	}
	if got, ok := reg.registered(r.Cgroup); !ok || got != r {
		t.Fatalf("registered %+v (%v), want %+v", got, ok, r)
	}
	// The same connection carries further requests.
	if err := c.Unregister(ctx, "firma-agents.slice/run-1/"); err != nil {
		t.Fatal(err)
	}
	if _, ok := reg.registered(r.Cgroup); ok {
		t.Fatal("still registered after Unregister")
	}
}

func TestRegisterUnderSlashlessParent(t *testing.T) {
	reg := newRegistry()
	reg.info.Cgroup = "firma-agents.slice/"
	c := dial(t, startServer(t, reg, nil))
	if err := c.Register(context.Background(), Registration{Cgroup: "/firma-agents.slice/run-1", AgentID: "a"}); err != nil {
		t.Fatal(err)
	}
}

func TestRegisterRefusalsComeBackVerbatim(t *testing.T) {
	reg := newRegistry()
	reg.reject = errors.New("capability /etc/firma/cap.toml: token expired at 2026-01-01T00:00:00Z")
	c := dial(t, startServer(t, reg, nil))
	err := c.Register(context.Background(), Registration{Cgroup: "/firma-agents.slice/x", AgentID: "codex"})
	if !errors.Is(err, ErrRejected) || err.Error() != reg.reject.Error() {
		t.Fatalf("err = %v, want the registry's message verbatim", err)
	}
}

func TestRegisterValidation(t *testing.T) {
	reg := newRegistry()
	c := dial(t, startServer(t, reg, nil))
	for _, tc := range []struct {
		r    Registration
		want string
	}{
		{Registration{Cgroup: "/elsewhere/x", AgentID: "a"}, "not below the enforced parent"},
		{Registration{Cgroup: "/firma-agents.slice", AgentID: "a"}, "not below the enforced parent"},
		{Registration{Cgroup: "/firma-agents.slice/../x", AgentID: "a"}, "empty, . or .."},
		{Registration{Cgroup: "firma-agents.slice/x", AgentID: "a"}, "canonical form"},
		{Registration{Cgroup: "/firma-agents.slice/x", AgentID: ""}, "agent_id is empty"},
		{Registration{Cgroup: "/firma-agents.slice/x", AgentID: "a", CapabilityFile: "cap.toml"}, "not an absolute path"},
	} {
		err := c.Register(context.Background(), tc.r)
		if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Register(%+v) = %v, want rejection containing %q", tc.r, err, tc.want)
		}
	}
	if len(reg.regs) != 0 {
		t.Fatalf("invalid registrations reached the registry: %v", reg.regs)
	}
}

// TestRefused: a sandbox refusal reaches the registry as sent; a malformed one never does.
func TestRefused(t *testing.T) {
	reg := newRegistry()
	c := dial(t, startServer(t, reg, nil))
	ctx := context.Background()
	ok := Refusal{PID: 4242, Syscall: "socket", Family: 17, Type: 3, Protocol: 768}
	if err := c.Refused(ctx, ok); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []Refusal{{PID: 0, Syscall: "bpf"}, {PID: -1, Syscall: "bpf"}, {PID: 1, Syscall: ""},
		{PID: 1, Syscall: "bpf\n{\"op\""}, {PID: 1, Syscall: "Ptrace"}, {PID: 1, Syscall: strings.Repeat("a", 65)}, {PID: 1, Syscall: "bpf", Suppressed: -1}} {
		if err := c.Refused(ctx, bad); !errors.Is(err, ErrRejected) {
			t.Errorf("Refused(%+v) = %v, want a rejection", bad, err)
		}
	}
	reg.mu.Lock()
	defer reg.mu.Unlock()
	if len(reg.refused) != 1 || reg.refused[0] != ok {
		t.Fatalf("the registry got %+v, want only %+v", reg.refused, ok)
	}
}

func TestPeerUIDIsChecked(t *testing.T) {
	reg := newRegistry()
	path := startServer(t, reg, func(s *Server) { s.uid = uint32(os.Getuid()) + 1 })
	c := dial(t, path)
	_, err := c.Info(context.Background())
	if !errors.Is(err, ErrPermission) || !strings.Contains(err.Error(), fmt.Sprintf("peer uid %d", os.Getuid())) {
		t.Fatalf("Info from the wrong uid = %v, want ErrPermission naming the uid", err)
	}
}

func TestPeerInsideEnforcedCgroupIsRefused(t *testing.T) {
	for _, cg := range []string{"/firma-agents.slice", "/firma-agents.slice/claude.service"} {
		reg := newRegistry()
		var asked int32
		path := startServer(t, reg, func(s *Server) {
			s.peerCgroup = func(pid int32) (string, error) { asked = pid; return cg, nil }
		})
		_, err := dial(t, path).Info(context.Background())
		if !errors.Is(err, ErrPermission) || !strings.Contains(err.Error(), "inside the enforced cgroup") {
			t.Fatalf("peer in %s: err = %v, want ErrPermission", cg, err)
		}
		if int(asked) != os.Getpid() {
			t.Fatalf("cgroup looked up for pid %d, want ours (%d)", asked, os.Getpid())
		}
	}
	// The sidecar may report its parent without the leading slash, as firma.toml writes it.
	reg := newRegistry()
	reg.info.Cgroup = "firma-agents.slice"
	path := startServer(t, reg, func(s *Server) {
		s.peerCgroup = func(int32) (string, error) { return "/firma-agents.slice/x", nil }
	})
	if _, err := dial(t, path).Info(context.Background()); !errors.Is(err, ErrPermission) {
		t.Fatalf("peer inside a slash-less parent: %v", err)
	}
	// A sibling whose name merely starts with the parent's is not inside it.
	reg = newRegistry()
	path = startServer(t, reg, func(s *Server) {
		s.peerCgroup = func(int32) (string, error) { return "/firma-agents.slice-other", nil }
	})
	if _, err := dial(t, path).Info(context.Background()); err != nil {
		t.Fatalf("peer in a sibling cgroup: %v", err)
	}
}

func TestDialWithoutSidecar(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "control.sock")
	_, err := Dial(context.Background(), missing)
	if !errors.Is(err, ErrSidecarNotRunning) || !strings.Contains(err.Error(), "firma sidecar is not running") ||
		!strings.Contains(err.Error(), missing) {
		t.Fatalf("Dial(missing) = %v", err)
	}

	// A socket file nobody listens on: connection refused.
	stale := filepath.Join(dir, "stale.sock")
	makeStaleSocket(t, stale)
	_, err = Dial(context.Background(), stale)
	if !errors.Is(err, ErrSidecarNotRunning) || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("Dial(stale) = %v", err)
	}
}

func makeStaleSocket(t *testing.T, path string) {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
}

func TestListenPermissionsAndStaleSocket(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "control.sock")
	makeStaleSocket(t, path)

	ln, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	for p, want := range map[string]os.FileMode{dir: 0o755, path: 0o600} { // an existing dir keeps its mode
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", p, fi.Mode().Perm(), want)
		}
	}
	// A second sidecar must not steal a live socket.
	if _, err := Listen(path); !errors.Is(err, ErrSocketInUse) {
		t.Fatalf("Listen on a live socket = %v, want ErrSocketInUse", err)
	}
	ln.Close()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file left after close: %v", err)
	}

	// Something that is not a socket is never removed.
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen over a regular file = %v", err)
	}
	if _, err := Listen("relative.sock"); err == nil {
		t.Fatal("Listen accepted a relative path")
	}
}

func TestServeStopsAndRemovesSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "control.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	go func() { done <- NewServer(newRegistry(), zerolog.Nop()).Serve(ctx, ln) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Lstat(path); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("socket never appeared")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// An idle client connection must not keep Serve from returning.
	c := dial(t, path)
	_ = c
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left after Serve: %v", err)
	}
}

func TestBadRequests(t *testing.T) {
	path := startServer(t, newRegistry(), nil)
	for _, line := range []string{`{"op":"nope"}`, `{"op":"register"}`, `{"op":"unregister","cgroup":"/a/../b"}`} {
		conn, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintln(conn, line)
		buf := make([]byte, 512)
		n, _ := conn.Read(buf)
		conn.Close()
		if !strings.Contains(string(buf[:n]), `"ok":false`) {
			t.Errorf("%s → %s, want a refusal", line, buf[:n])
		}
	}
}
