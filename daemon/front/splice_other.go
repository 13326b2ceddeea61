//go:build !linux

package front

import "net"

// mover moves chunks of one direction of a relay through a pooled buffer (splice(2) is Linux's).
type mover struct {
	spliced  bool
	dst, src net.Conn
	ready    func() // when set, called once a chunk has been read, before it is written
}

func newMover(dst, src net.Conn) *mover { return &mover{dst: dst, src: src} }

func (m *mover) move(max int) (int, error) { return copyOnce(m.dst, m.src, max, m.ready) }
