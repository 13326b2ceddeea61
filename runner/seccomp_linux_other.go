//go:build linux && !amd64 && !arm64

package runner

import (
	"fmt"
	"runtime"
)

// nativeSeccompArch: firma run's filter knows x86_64 and arm64 only, and an agent is not started
// without it.
func nativeSeccompArch() (seccompArch, error) {
	return seccompArch{}, fmt.Errorf("firma run has no seccomp filter for %s (only amd64 and arm64)", runtime.GOARCH)
}
