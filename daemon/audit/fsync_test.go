package audit

import (
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/openfirma/firma/internal/duration"
)

// OnFsync hears of every fsync of the live file, requested (Sync) or periodic.
func TestOnFsync(t *testing.T) {
	w := openTest(t, Config{FilePath: filepath.Join(t.TempDir(), "audit.jsonl"), FsyncInterval: duration.Of(10 * time.Millisecond)})
	var mu sync.Mutex
	var calls []error
	w.OnFsync(func(took time.Duration, err error) {
		if took < 0 {
			t.Errorf("fsync took %v", took)
		}
		mu.Lock()
		calls = append(calls, err)
		mu.Unlock()
	})
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(calls)
	}
	if err := w.Append(decision(1, "api.anthropic.com", "ALLOW")); err != nil {
		t.Fatal(err)
	}
	if err := w.Sync(); err != nil {
		t.Fatal(err)
	}
	if count() < 1 {
		t.Fatal("Sync did not report its fsync")
	}
	n := count()
	if err := w.Append(decision(2, "api.anthropic.com", "ALLOW")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the periodic fsync", func() bool { return count() > n })
	mu.Lock()
	defer mu.Unlock()
	for _, err := range calls {
		if err != nil {
			t.Errorf("fsync error %v", err)
		}
	}
}
