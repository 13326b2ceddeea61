package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// fakeProc writes a /proc with the given processes: pid → parent, RSS in kB, descriptors, and
// CPU ticks (user, system).
type fakeProcess struct {
	ppid, rssKB, fds int
	utime, stime     int
	comm             string
}

func fakeProc(t *testing.T, procs map[int]fakeProcess) string {
	t.Helper()
	root := t.TempDir()
	for pid, p := range procs {
		dir := filepath.Join(root, strconv.Itoa(pid))
		if err := os.MkdirAll(filepath.Join(dir, "fd"), 0o755); err != nil {
			t.Fatal(err)
		}
		// Fields 3… of a real stat line, with utime and stime at 14 and 15.
		stat := fmt.Sprintf("%d (%s) S %d 1 1 0 -1 4194560 100 0 0 0 %d %d 0 0 20 0 1 0 100 1000 200\n", pid, p.comm, p.ppid, p.utime, p.stime)
		writeFile(t, filepath.Join(dir, "stat"), stat, 0o644)
		writeFile(t, filepath.Join(dir, "status"), fmt.Sprintf("Name:\t%s\nVmPeak:\t 9999 kB\nVmRSS:\t %d kB\nThreads:\t1\n", p.comm, p.rssKB), 0o644)
		for i := range p.fds {
			writeFile(t, filepath.Join(dir, "fd", strconv.Itoa(i)), "", 0o644)
		}
	}
	if err := os.Mkdir(filepath.Join(root, "self"), 0o755); err != nil { // not a pid: ignored
		t.Fatal(err)
	}
	return root
}

func TestTreeUsage(t *testing.T) {
	root := fakeProc(t, map[int]fakeProcess{
		100: {ppid: 1, rssKB: 1000, fds: 10, utime: 150, stime: 50, comm: "squid"},
		101: {ppid: 100, rssKB: 200, fds: 3, utime: 10, stime: 0, comm: "security_file_certgen"},
		102: {ppid: 101, rssKB: 50, fds: 1, utime: 0, stime: 5, comm: "a) (weird name"},
		200: {ppid: 1, rssKB: 7777, fds: 77, utime: 999, stime: 999, comm: "unrelated"},
	})
	u, err := TreeUsage(root, 100)
	if err != nil {
		t.Fatal(err)
	}
	want := Usage{RSS: 1250 << 10, FDs: 14, CPU: 2150 * time.Millisecond, Procs: 3}
	if u != want {
		t.Errorf("usage = %+v, want %+v", u, want)
	}
	if d := want.Sub(Usage{RSS: 250 << 10, FDs: 4, CPU: time.Second, Procs: 1}); d != (Usage{RSS: 1000 << 10, FDs: 10, CPU: 1150 * time.Millisecond, Procs: 2}) {
		t.Errorf("Sub = %+v", d)
	}
	if _, err := TreeUsage(root, 999); err == nil {
		t.Error("a missing process has usage")
	}
}

func TestReadStatMalformed(t *testing.T) {
	dir := t.TempDir()
	for name, text := range map[string]string{"no comm": "12 sleep S 1", "short": "12 (x) S 1 2 3", "not numbers": "12 (x) S one 1 1 0 -1 0 0 0 0 0 a b"} {
		p := filepath.Join(dir, "stat")
		writeFile(t, p, text, 0o644)
		if _, err := readStat(p); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

func writeFile(tb testing.TB, path, text string, mode os.FileMode) {
	tb.Helper()
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		tb.Fatal(err)
	}
}
