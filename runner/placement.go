package runner

import (
	"context"
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"strings"
	"time"
)

// cgroupFS is the seam for cgroup2 directory operations. Paths are absolute.
type cgroupFS interface {
	IsDir(dir string) error
	Mkdir(dir string) error
	Open(dir string) (int, error) // a directory fd for clone3's CLONE_INTO_CGROUP
	Close(fd int) error
	Kill(dir string) error              // cgroup.kill: SIGKILL everything in the subtree
	Populated(dir string) (bool, error) // cgroup.events "populated"
	Rmdir(dir string) error
}

// placement is the agent's cgroup, made before the agent exists.
type placement struct {
	Rel string // relative to the cgroup2 mount, leading slash: what the sidecar is told
	Dir string // absolute directory
	FD  int    // the agent is cloned into this cgroup

	// started is called once the agent runs (systemd: lets the placeholder process go).
	started func()
	// kill ends every process in the cgroup now.
	kill func() error
	// remove kills what is left, waits until the cgroup is empty and removes it.
	remove func(ctx context.Context) error
}

// placer makes a fresh cgroup named name below parent (both relative to the cgroup2 mount).
type placer interface {
	Place(ctx context.Context, parent, name string) (*placement, error)
}

// cgroupfsPlacer makes the cgroup with mkdir: the path that works without systemd.
type cgroupfsPlacer struct {
	fs    cgroupFS
	mount string
}

func (p cgroupfsPlacer) Place(_ context.Context, parent, name string) (*placement, error) {
	rel := path.Join(parent, name)
	dir := filepath.Join(p.mount, rel)
	if err := p.fs.Mkdir(dir); err != nil {
		return nil, fmt.Errorf("creating cgroup %s: %w", dir, err)
	}
	fd, err := p.fs.Open(dir)
	if err != nil {
		p.fs.Rmdir(dir)
		return nil, fmt.Errorf("opening cgroup %s: %w", dir, err)
	}
	return &placement{
		Rel:     rel,
		Dir:     dir,
		FD:      fd,
		started: func() {},
		kill:    func() error { return p.fs.Kill(dir) },
		remove: func(ctx context.Context) error {
			p.fs.Close(fd)
			return removeCgroup(ctx, p.fs, dir)
		},
	}, nil
}

// removeCgroup kills everything in dir, waits for it to empty and removes it.
func removeCgroup(ctx context.Context, fs cgroupFS, dir string) error {
	if err := fs.IsDir(dir); err != nil {
		return nil // already gone
	}
	if err := fs.Kill(dir); err != nil {
		return fmt.Errorf("killing cgroup %s: %w", dir, err)
	}
	delay := time.Millisecond
	for {
		populated, err := fs.Populated(dir)
		if err == nil && !populated {
			err = fs.Rmdir(dir)
			if err == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("removing cgroup %s: %w (last error: %v)", dir, ctx.Err(), err)
		case <-time.After(delay):
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// systemdConn is the seam for the D-Bus calls the systemd placer makes.
type systemdConn interface {
	// StartScope creates transient scope unit in slice holding pid, and waits for the job.
	StartScope(ctx context.Context, unit, slice, description string, pid int) error
	// StopUnit stops unit (killing what is left in it) and waits for the job.
	StopUnit(ctx context.Context, unit string) error
	Close()
}

// placeholder is a process of ours that systemd moves into a new scope (a scope cannot be created
// empty). The agent is then cloned straight into the scope's cgroup, and the placeholder exits:
// nothing the agent runs is ever moved.
type placeholder interface {
	PID() int
	Release() // ends the placeholder and reaps it; idempotent
}

// systemdPlacer makes the cgroup a transient scope in a slice, over D-Bus.
type systemdPlacer struct {
	conn  systemdConn
	fs    cgroupFS
	mount string
	hold  func() (placeholder, error)
	desc  string // the scope's Description=
}

// errNotSlice means the parent is not a systemd slice's cgroup, so systemd cannot place there.
var errNotSlice = errors.New("not a systemd slice")

func (p systemdPlacer) Place(ctx context.Context, parent, name string) (*placement, error) {
	slice := path.Base(parent)
	if sliceCgroup(slice) != parent {
		return nil, fmt.Errorf("%s: %w", parent, errNotSlice)
	}
	unit := name + ".scope"
	h, err := p.hold()
	if err != nil {
		p.conn.Close()
		return nil, fmt.Errorf("starting scope placeholder: %w", err)
	}
	if err := p.conn.StartScope(ctx, unit, slice, p.desc, h.PID()); err != nil {
		h.Release()
		p.conn.Close()
		return nil, fmt.Errorf("starting transient scope %s in %s: %w", unit, slice, err)
	}
	rel := path.Join(parent, unit)
	dir := filepath.Join(p.mount, rel)
	stop := func(ctx context.Context) error {
		defer p.conn.Close()
		h.Release()
		err := p.conn.StopUnit(ctx, unit)
		// systemd removes the cgroup when the scope stops; make sure nothing is left either way.
		if rerr := removeCgroup(ctx, p.fs, dir); rerr != nil {
			return errors.Join(err, rerr)
		}
		return nil
	}
	fd, err := p.fs.Open(dir)
	if err != nil {
		stop(ctx)
		return nil, fmt.Errorf("opening scope cgroup %s: %w", dir, err)
	}
	return &placement{
		Rel:     rel,
		Dir:     dir,
		FD:      fd,
		started: h.Release,
		kill:    func() error { return p.fs.Kill(dir) },
		remove: func(ctx context.Context) error {
			p.fs.Close(fd)
			return stop(ctx)
		},
	}, nil
}

// sliceCgroup is where systemd puts a slice unit's cgroup: a-b-c.slice lives at
// /a.slice/a-b.slice/a-b-c.slice.
func sliceCgroup(slice string) string {
	base, ok := strings.CutSuffix(slice, ".slice")
	if !ok || base == "" || base == "-" {
		return ""
	}
	var b strings.Builder
	parts := strings.Split(base, "-")
	for i := range parts {
		b.WriteString("/" + strings.Join(parts[:i+1], "-") + ".slice")
	}
	return b.String()
}
