//go:build !linux

package bpf

import "net"

// Offload is the kernel offload of tunnels; Linux only.
type Offload struct{}

// OpenOffload returns ErrUnsupported off Linux.
func OpenOffload() (*Offload, error) { return nil, ErrUnsupported }

// Close does nothing.
func (o *Offload) Close() error { return nil }

// Offloaded is the agent side of an offloaded tunnel; Linux only.
type Offloaded struct{}

// Tunnel returns ErrUnsupported off Linux.
func (o *Offload) Tunnel(*net.TCPConn) (*Offloaded, error) { return nil, ErrUnsupported }

// Switch returns ErrUnsupported off Linux.
func (t *Offloaded) Switch() (bool, error) { return false, ErrUnsupported }

// Queued returns ErrUnsupported off Linux.
func (t *Offloaded) Queued() (int, error) { return 0, ErrUnsupported }

// Demote returns ErrUnsupported off Linux.
func (t *Offloaded) Demote() error { return ErrUnsupported }
