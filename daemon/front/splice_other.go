//go:build !linux

package front

import "net"

// mover moves chunks of one direction of a relay through a pooled buffer (splice(2) is Linux's).
type mover struct {
	spliced  bool
	dst, src net.Conn
}

func newMover(dst, src net.Conn) *mover { return &mover{dst: dst, src: src} }

func (m *mover) move(max int) (int, error) { return copyOnce(m.dst, m.src, max) }
