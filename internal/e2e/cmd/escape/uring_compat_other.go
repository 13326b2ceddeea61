//go:build linux && !amd64

package main

// compat (int 0x80) syscalls exist on amd64 only.
func compatURingSetup(uint32, *uringParams) (int, error) { return -1, errNoCompat }
