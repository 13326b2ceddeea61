package control

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/openfirma/firma/internal/testutil"
)

// TestListenSocketDir: Listen creates a missing directory 0700, uses a safe existing one as it is
// (never chmod: it may be /tmp), and refuses one that another user could replace the socket in.
func TestListenSocketDir(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mode   os.FileMode // of the existing dir; 0 = missing
		parent os.FileMode // of its parent (0 = the test's own 0700 temp dir)
		unsafe bool
	}{
		{name: "missing", mode: 0},
		{name: "missing below missing", mode: 0, parent: 0},
		{name: "0755", mode: 0o755},
		{name: "0700", mode: 0o700},
		{name: "sticky world-writable like /tmp", mode: os.ModeSticky | 0o777},
		{name: "world-writable", mode: 0o777, unsafe: true},
		{name: "group-writable", mode: 0o775, unsafe: true},
		{name: "sticky group-writable", mode: os.ModeSticky | 0o770},
		{name: "parent world-writable", mode: 0o755, parent: 0o777, unsafe: true},
		{name: "parent sticky world-writable", mode: 0o700, parent: os.ModeSticky | 0o777},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			if tc.parent != 0 {
				base = filepath.Join(base, "parent")
				mkdirMode(t, base, tc.parent)
			}
			dir := filepath.Join(base, "run")
			if tc.name == "missing below missing" {
				dir = filepath.Join(base, "a", "b", "run")
			}
			if tc.mode != 0 {
				mkdirMode(t, dir, tc.mode)
			}
			ln, err := Listen(filepath.Join(dir, "control.sock"))
			if tc.unsafe {
				if !errors.Is(err, ErrUnsafeSocketDir) {
					t.Fatalf("Listen = %v, want ErrUnsafeSocketDir", err)
				}
				if _, err := os.Lstat(filepath.Join(dir, "control.sock")); !errors.Is(err, os.ErrNotExist) {
					t.Error("a socket was created in the unsafe directory")
				}
			} else {
				if err != nil {
					t.Fatalf("Listen: %v", err)
				}
				ln.Close()
			}
			want := tc.mode
			if want == 0 {
				want = 0o700
			}
			if got := modeOf(t, dir); got != want {
				t.Errorf("dir mode %04o, want %04o", got, want)
			}
			if tc.parent != 0 && modeOf(t, base) != tc.parent {
				t.Errorf("parent mode changed to %04o", modeOf(t, base))
			}
		})
	}
}

// TestListenSocketDirOwner: a directory another (non-root) user owns is refused, however tight its
// mode, and so is one below a directory that user owns (they could rename it away).
func TestListenSocketDirOwner(t *testing.T) {
	testutil.RequireRoot(t)
	const nobody = 65534
	own := filepath.Join(t.TempDir(), "theirs")
	mkdirMode(t, own, 0o700)
	if err := os.Chown(own, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	below := filepath.Join(own, "run")
	mkdirMode(t, below, 0o700)
	for _, dir := range []string{own, below} {
		if _, err := Listen(filepath.Join(dir, "control.sock")); !errors.Is(err, ErrUnsafeSocketDir) {
			t.Errorf("Listen in %s = %v, want ErrUnsafeSocketDir", dir, err)
		}
	}
	// The system's own /tmp is fine for a root-owned socket, and is left as it is.
	if fi, err := os.Stat("/tmp"); err == nil && fi.Mode()&os.ModeSticky != 0 && fi.Mode().Perm() == 0o777 {
		if err := CheckSocketDir("/tmp"); err != nil {
			t.Errorf("CheckSocketDir(/tmp): %v", err)
		}
	}
}

func mkdirMode(t *testing.T, dir string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil {
		t.Fatal(err)
	}
}

func modeOf(t *testing.T, p string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode() & (os.ModePerm | os.ModeSticky)
}
