//go:build linux

package bpf

// SetLSMPath points the loader at another list of active LSMs (a kernel without BPF LSM) until
// the returned function restores it.
func SetLSMPath(p string) (restore func()) {
	old := lsmPath
	lsmPath = p
	return func() { lsmPath = old }
}
