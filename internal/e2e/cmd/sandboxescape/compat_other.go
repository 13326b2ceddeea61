//go:build linux && !amd64

package main

// probeCompat: only x86_64 is tried through its 32-bit entry here.
func probeCompat(*Report) {}

// probeArchOnly: the port I/O calls are x86_64's.
func probeArchOnly(*Report) {}
