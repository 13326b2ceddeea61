package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
)

var (
	buildMu  sync.Mutex
	buildDir string
	built    = map[string]string{}
)

// BuildGo builds the Go command pkg (an import path in this module) once per test binary and
// returns the path of the executable, in a directory removed only with the machine's temp files:
// callers build in a sync.Once and keep the path for the whole test binary.
func BuildGo(pkg string) (string, error) {
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[pkg]; ok {
		return p, nil
	}
	if buildDir == "" {
		d, err := os.MkdirTemp("", "firma-test-bin-")
		if err != nil {
			return "", err
		}
		buildDir = d
	}
	out := filepath.Join(buildDir, filepath.Base(pkg))
	if b, err := exec.Command("go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	built[pkg] = out
	return out, nil
}
