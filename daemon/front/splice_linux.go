//go:build linux

package front

import (
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// mover moves chunks of one direction of a relay. Between two TCP connections it uses splice(2)
// through a pipe that it takes from a pool only once the source has bytes, and gives back before
// it waits again: an idle tunnel holds no pipe, only its two sockets.
type mover struct {
	spliced  bool
	dst, src net.Conn
	rdst     syscall.RawConn
	rsrc     syscall.RawConn
	ready    func() // when set, called once a chunk has been read, before it is written
}

func newMover(dst, src net.Conn) *mover {
	m := &mover{dst: dst, src: src}
	d, dok := dst.(*net.TCPConn)
	s, sok := src.(*net.TCPConn)
	if !dok || !sok {
		return m
	}
	var err1, err2 error
	m.rdst, err1 = d.SyscallConn()
	m.rsrc, err2 = s.SyscallConn()
	m.spliced = err1 == nil && err2 == nil
	return m
}

// move moves at most max bytes from src to dst, waiting for src to have some. It returns 0, io.EOF
// at src's end.
func (m *mover) move(max int) (int, error) {
	if !m.spliced {
		return copyOnce(m.dst, m.src, max, m.ready)
	}
	var (
		p    *pipe
		n    int
		serr error
	)
	err := m.rsrc.Read(func(fd uintptr) bool {
		if p == nil {
			if p, serr = pipes.get(); serr != nil {
				return true
			}
		}
		var k int64
		k, serr = unix.Splice(int(fd), nil, p.w, nil, max, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		n = int(k)
		if serr == unix.EAGAIN {
			pipes.put(p)
			p = nil
			return false
		}
		return serr != unix.EINTR
	})
	if err == nil {
		err = serr
	}
	if err != nil || n == 0 {
		if p != nil {
			pipes.put(p)
		}
		if err == nil {
			err = io.EOF
		}
		return 0, wrapErr("splice", err)
	}
	if m.ready != nil {
		m.ready()
	}
	written := 0
	for written < n {
		var w int
		werr := m.rdst.Write(func(fd uintptr) bool {
			var k int64
			k, serr = unix.Splice(p.r, nil, int(fd), nil, n-written, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			w = int(k)
			return serr != unix.EAGAIN && serr != unix.EINTR
		})
		if werr == nil {
			werr = serr
		}
		if w > 0 {
			written += w
		}
		if werr != nil {
			p.close() // bytes left in it belong to nobody now
			return written, wrapErr("splice", werr)
		}
	}
	pipes.put(p)
	return written, nil
}

func wrapErr(op string, err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return os.NewSyscallError(op, errno)
	}
	return err
}

// pipe is a pipe a relay moves bytes through; empty whenever it is in the pool.
type pipe struct{ r, w int }

func (p *pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}

// pipePool keeps a few empty pipes for the next moves and closes the rest: a relay holds a pipe only
// while it moves bytes, so the pool is as large as the moves in progress at once, at most.
type pipePool struct {
	mu   sync.Mutex
	free []*pipe
}

var pipes pipePool

// maxIdlePipes bounds the pipes kept open while no relay moves bytes.
var maxIdlePipes = 4 * runtime.GOMAXPROCS(0)

func (pp *pipePool) get() (*pipe, error) {
	pp.mu.Lock()
	if n := len(pp.free); n > 0 {
		p := pp.free[n-1]
		pp.free = pp.free[:n-1]
		pp.mu.Unlock()
		return p, nil
	}
	pp.mu.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	// A larger pipe moves more per splice; where the kernel refuses, the default 64 KiB does.
	unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, maxChunk)
	return &pipe{r: fds[0], w: fds[1]}, nil
}

func (pp *pipePool) put(p *pipe) {
	pp.mu.Lock()
	if len(pp.free) < maxIdlePipes {
		pp.free = append(pp.free, p)
		p = nil
	}
	pp.mu.Unlock()
	if p != nil {
		p.close()
	}
}
