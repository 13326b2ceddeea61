package runner

import (
	"errors"
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMarkInheritedCloexec(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	// A descriptor as a shell leaves it: without close-on-exec.
	fd, err := unix.Dup(int(r.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if flags, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); flags&unix.FD_CLOEXEC != 0 {
		t.Fatal("dup set close-on-exec")
	}
	if err := markInheritedCloexec(3); err != nil {
		t.Fatal(err)
	}
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Fatalf("descriptor %d: flags %#x, %v; want close-on-exec and still open", fd, flags, err)
	}
	for _, std := range []int{0, 1, 2} {
		if flags, err := unix.FcntlInt(uintptr(std), unix.F_GETFD, 0); err == nil && flags&unix.FD_CLOEXEC != 0 {
			t.Errorf("stdio descriptor %d marked close-on-exec", std)
		}
	}
}

// TestMarkCloexecFallbacks: without close_range the descriptors /proc lists are marked; without
// /proc, every number up to the limit.
func TestMarkCloexecFallbacks(t *testing.T) {
	for name, tc := range map[string]struct {
		closeRange error
		list       func() ([]int, error)
		want       string
		wantErr    bool
	}{
		"close_range works":         {nil, nil, "", false},
		"no close_range (ENOSYS)":   {unix.ENOSYS, func() ([]int, error) { return []int{0, 1, 2, 3, 7, 9}, nil }, "3 7 9 ", false},
		"no CLOEXEC flag (EINVAL)":  {unix.EINVAL, func() ([]int, error) { return []int{5}, nil }, "5 ", false},
		"no /proc either":           {unix.ENOSYS, func() ([]int, error) { return nil, errors.New("no /proc") }, "3 4 5 ", false},
		"close_range fails (EPERM)": {unix.EPERM, nil, "", true},
	} {
		t.Run(name, func(t *testing.T) {
			var got string
			err := markCloexec(3, fdOps{
				closeRange: func(int) error { return tc.closeRange },
				list:       tc.list,
				setCloexec: func(fd int) error {
					got += fmt.Sprintf("%d ", fd)
					if fd == 9 {
						return unix.EBADF // closed since it was listed
					}
					return nil
				},
				limit: func() int { return 6 },
			})
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("marked %q, err %v; want %q (error %v)", got, err, tc.want, tc.wantErr)
			}
		})
	}
}
