package daemon

import (
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// TestProcIdentity: a thread's report is recorded under its process, with its real ids.
func TestProcIdentity(t *testing.T) {
	tids := make(chan int)
	go func() {
		runtime.LockOSThread() // a thread of its own, not the main one
		defer runtime.UnlockOSThread()
		tids <- unix.Gettid()
		<-tids
	}()
	tid := <-tids
	defer close(tids)
	tgid, uid, gid, comm := procIdentity(tid)
	if int(tgid) != os.Getpid() || int(uid) != os.Getuid() || int(gid) != os.Getgid() || comm == "" {
		t.Errorf("thread %d: tgid %d uid %d gid %d comm %q; want %d %d %d and a comm", tid, tgid, uid, gid, comm,
			os.Getpid(), os.Getuid(), os.Getgid())
	}
	if tgid, _, _, _ := procIdentity(1 << 30); tgid != 0 {
		t.Errorf("no such pid: tgid %d", tgid)
	}
}
