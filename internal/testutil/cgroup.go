//go:build linux

package testutil

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/internal/cgroup"
)

// Cgroup is a cgroup2 directory made for one test and removed (with anything left in it) afterwards.
type Cgroup struct {
	Path string // absolute
	Rel  string // relative to the cgroup2 mount, with a leading slash
	ID   uint64
}

// NewCgroup creates a fresh cgroup named firma-test-<rand> under parent (a *Cgroup, or nil for the
// cgroup2 root).
func NewCgroup(tb testing.TB, parent *Cgroup) *Cgroup {
	tb.Helper()
	RequireRoot(tb)
	base := ""
	rel := ""
	if parent != nil {
		base, rel = parent.Path, parent.Rel
	} else {
		mnt, err := cgroup.FindV2Mount()
		if err != nil {
			tb.Fatal(err)
		}
		base = mnt
	}
	name := "firma-test-" + randHex(tb, 4)
	cg := &Cgroup{Path: filepath.Join(base, name), Rel: rel + "/" + name}
	if err := os.Mkdir(cg.Path, 0o755); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { removeCgroup(tb, cg.Path) })
	id, err := bpf.CgroupID(cg.Path)
	if err != nil {
		tb.Fatal(err)
	}
	cg.ID = id
	return cg
}

// Command prepares name to start inside the cgroup from its first instruction, with an environment
// that carries no proxy variables.
func (cg *Cgroup) Command(ctx context.Context, tb testing.TB, name string, args ...string) *exec.Cmd {
	tb.Helper()
	fd, err := syscall.Open(cg.Path, syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { syscall.Close(fd) })
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	cmd.Env = CleanEnv()
	return cmd
}

// CleanEnv is this process's environment without any proxy variable.
func CleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToLower(k) {
		case "http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy":
			continue
		}
		env = append(env, kv)
	}
	return env
}

// removeCgroup kills whatever is left in a cgroup subtree and removes it, deepest first.
func removeCgroup(tb testing.TB, path string) {
	var dirs []string
	filepath.WalkDir(path, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	os.WriteFile(filepath.Join(path, "cgroup.kill"), []byte("1"), 0)
	for i := len(dirs) - 1; i >= 0; i-- {
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := os.Remove(dirs[i])
			if err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			if time.Now().After(deadline) {
				tb.Errorf("removing cgroup %s: %v (procs: %s)", dirs[i], err, procs(dirs[i]))
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func procs(path string) string {
	b, _ := os.ReadFile(filepath.Join(path, "cgroup.procs"))
	return strings.Join(strings.Fields(string(b)), ",")
}

func randHex(tb testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// FreePort returns a TCP port that was free on 127.0.0.1 and [::1] a moment ago.
func FreePort(tb testing.TB) uint16 {
	tb.Helper()
	return FreePorts(tb, 1)[0]
}

// FreePorts returns n distinct TCP ports that were free on 127.0.0.1 and [::1] a moment ago: all
// are held open until every one is chosen, so none is returned twice.
func FreePorts(tb testing.TB, n int) []uint16 {
	tb.Helper()
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	var ports []uint16
	for tries := 0; len(ports) < n && tries < 50*n; tries++ {
		l4, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		held = append(held, l4)
		port := l4.Addr().(*net.TCPAddr).Port
		l6, err := net.Listen("tcp6", "[::1]:"+strconv.Itoa(port))
		if err != nil {
			continue
		}
		held = append(held, l6)
		ports = append(ports, uint16(port))
	}
	if len(ports) < n {
		tb.Fatal("no free ports on both loopbacks")
	}
	return ports
}
