package bpf

import "errors"

// ErrNotAdopted means the agent's socket of a tunnel could not be handed to the kernel: the tunnel
// stays in user space.
var ErrNotAdopted = errors.New("agent socket not adopted")

// errAgentGone means the agent's socket of an offloaded tunnel has closed.
var errAgentGone = errors.New("agent socket closed")
