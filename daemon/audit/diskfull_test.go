package audit

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/openfirma/firma/internal/duration"
	"github.com/openfirma/firma/internal/testutil"
)

// smallTmpfs mounts a tmpfs of size bytes and unmounts it when the test ends.
func smallTmpfs(t *testing.T, size string) string {
	t.Helper()
	testutil.RequireRoot(t)
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", dir, err, out)
		}
	})
	return dir
}

// fill writes a file until the filesystem is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return
		}
	}
}

func TestDiskFullRefusesThenRecovers(t *testing.T) {
	dir := smallTmpfs(t, "256k")
	key, _, pub := testKey(t)
	path := filepath.Join(dir, "audit.jsonl")
	log, logs := testLogger(t)
	w, err := Open(Config{FilePath: path, SigningKeyPath: key, FsyncInterval: duration.Of(20 * time.Millisecond)}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	for i := range 5 {
		if err := w.Append(decision(i, "api.anthropic.com", "ALLOW")); err != nil {
			t.Fatal(err)
		}
	}
	filler := filepath.Join(dir, "filler")
	fill(t, filler)

	// The audit file's last page may still have room for a few lines; then writes must fail.
	var appendErr error
	refused := 0
	for i := 0; i < 1000 && refused < 3; i++ {
		if appendErr = w.Append(decision(100+i, "paste.rs", "DENY")); appendErr != nil {
			refused++
		}
	}
	if refused < 3 {
		t.Fatal("appends kept succeeding on a full filesystem")
	}
	if !errors.Is(appendErr, ErrUnwritable) || !errors.Is(appendErr, syscall.ENOSPC) {
		t.Fatalf("Append error %v: want ErrUnwritable and ENOSPC", appendErr)
	}
	if err := w.Healthy(); !errors.Is(err, ErrUnwritable) {
		t.Fatalf("Healthy on a full disk: %v", err)
	}
	if !strings.Contains(logs.String(), "audit log not writable") {
		t.Fatalf("failure not logged: %s", logs)
	}
	// Nothing of a refused record is on disk: the file still ends with a complete line.
	if end, err := scanEnd(path); err != nil || end.good != end.size {
		t.Fatalf("partial line left after a failed write: %+v %v", end, err)
	}

	// Freeing space brings the log back without any new record: the writer retries on its own.
	os.Remove(filler)
	waitFor(t, "Healthy after freeing space", func() bool { return w.Healthy() == nil })
	if err := w.Append(decision(999, "api.anthropic.com", "ALLOW")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(pub, path)
	if err != nil || !rep.OK() {
		t.Fatalf("verify after recovery: %v %v", err, rep.Problem)
	}
	var recovered *LogRecord
	for _, l := range readLines(t, path) {
		var ev Event
		json.Unmarshal([]byte(l), &ev)
		if ev.Log != nil && ev.Log.Event == LogRecovered {
			recovered = ev.Log
		}
	}
	if recovered == nil || recovered.Refused < 3 || !strings.Contains(recovered.Error, "no space left") || recovered.Since == nil {
		t.Fatalf("recovered record: %+v", recovered)
	}
}

// A log that cannot be written at start is an error from Open, not a writer that drops records.
func TestOpenOnFullDiskFails(t *testing.T) {
	dir := smallTmpfs(t, "64k")
	fill(t, filepath.Join(dir, "filler"))
	log, _ := testLogger(t)
	if _, err := Open(Config{FilePath: filepath.Join(dir, "audit.jsonl")}, log); !errors.Is(err, ErrUnwritable) {
		t.Fatalf("Open on a full disk: %v", err)
	}
}

func TestUnwritableDirFails(t *testing.T) {
	testutil.RequireRoot(t)
	// Root ignores permissions; a read-only bind mount is what stops it.
	dir := smallTmpfs(t, "64k")
	if out, err := exec.Command("mount", "-o", "remount,ro", dir).CombinedOutput(); err != nil {
		t.Fatalf("remount ro: %v\n%s", err, out)
	}
	log, _ := testLogger(t)
	_, err := Open(Config{FilePath: filepath.Join(dir, "audit.jsonl")}, log)
	if err == nil || !errors.Is(err, syscall.EROFS) {
		t.Fatalf("Open on a read-only fs: %v", err)
	}
}

// Many connections append while the disk fills up and frees again: every Append that returned nil
// is in the log, none that returned an error is, and the chain has no hole.
func TestDiskFullUnderConcurrency(t *testing.T) {
	dir := smallTmpfs(t, "16m")
	key, _, pub := testKey(t)
	path := filepath.Join(dir, "audit.jsonl")
	log, _ := testLogger(t)
	w, err := Open(Config{FilePath: path, SigningKeyPath: key, FsyncInterval: duration.Of(10 * time.Millisecond)}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })

	var mu sync.Mutex
	ok, refused := map[string]bool{}, map[string]bool{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				time.Sleep(time.Millisecond) // the log itself must not fill the disk
				ev := decision(g*10000+i, "api.anthropic.com", "ALLOW")
				err := w.Append(ev)
				mu.Lock()
				if err == nil {
					ok[ev.ID] = true
				} else if errors.Is(err, ErrUnwritable) {
					refused[ev.ID] = true
				} else {
					t.Error(err)
				}
				mu.Unlock()
			}
		})
	}
	filler := filepath.Join(dir, "filler")
	for range 3 {
		fill(t, filler)
		time.Sleep(30 * time.Millisecond)
		os.Remove(filler)
		time.Sleep(30 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	waitFor(t, "Healthy", func() bool { return w.Healthy() == nil })
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if len(ok) == 0 || len(refused) == 0 {
		t.Fatalf("%d written, %d refused: the test did not exercise both", len(ok), len(refused))
	}
	rep, err := Verify(pub, path)
	if err != nil || !rep.OK() {
		t.Fatalf("verify: %v %v", err, rep.Problem)
	}
	seen := 0
	for _, l := range readLines(t, path) {
		var ev Event
		json.Unmarshal([]byte(l), &ev)
		if ev.Kind != KindDecision {
			continue
		}
		if refused[ev.ID] {
			t.Fatalf("a refused record is in the log: %s", ev.ID)
		}
		if ok[ev.ID] {
			seen++
		}
	}
	if seen != len(ok) {
		t.Fatalf("%d of %d acknowledged records in the log", seen, len(ok))
	}
	t.Logf("%d written, %d refused, %d lines", len(ok), len(refused), rep.Records)
}
