//go:build !linux

package doctor

import (
	"runtime"

	"github.com/openfirma/firma/daemon"
)

// Host reports that firma enforces only on Linux.
func Host() []Check {
	return []Check{fail("kernel", "run firma on Linux 5.8 or later", "%s: firma's enforcement needs Linux cgroup BPF", runtime.GOOS)}
}

func enforcement(*daemon.Config) []Check {
	return []Check{fail("sidecar.programs", "run firma on Linux", "no kernel enforcement on %s", runtime.GOOS)}
}
