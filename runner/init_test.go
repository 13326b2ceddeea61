package runner

import (
	"bufio"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// fakeInit is initProc over a script of exits: each Wait returns the next one, after the test
// has had the chance to forward signals.
type fakeInit struct {
	mu    sync.Mutex // Kill runs on init's forwarding goroutine
	tr    *transcript
	pid   int
	exits []fakeExit
	sent  chan struct{} // closed by the test once it has sent what it wanted to
}

type fakeExit struct {
	pid int
	ws  syscall.WaitStatus
	err error
}

func (f *fakeInit) Start() (int, error) {
	f.tr.add("start exec step pid=%d", f.pid)
	return f.pid, nil
}

func (f *fakeInit) Wait() (int, syscall.WaitStatus, error) {
	if f.sent != nil {
		<-f.sent
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.exits[0]
	f.exits = f.exits[1:]
	f.tr.add("reaped %d", e.pid)
	return e.pid, e.ws, e.err
}

func (f *fakeInit) Kill(pid int, sig syscall.Signal) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tr.add("kill %d %v", pid, sig)
	return nil
}

// exitedWith and killedBy are wait statuses as the kernel encodes them.
func exitedWith(code int) syscall.WaitStatus         { return syscall.WaitStatus(code << 8) }
func killedBy(sig syscall.Signal) syscall.WaitStatus { return syscall.WaitStatus(sig) }

func TestSuperviseAgentReapsAndReturnsTheAgentsStatus(t *testing.T) {
	for name, tc := range map[string]struct {
		last syscall.WaitStatus
		want int
	}{
		"exit 3":    {exitedWith(3), 3},
		"exit 0":    {exitedWith(0), 0},
		"SIGTERM":   {killedBy(syscall.SIGTERM), 143},
		"SIGKILL":   {killedBy(syscall.SIGKILL), 137},
		"exit 143":  {exitedWith(143), 143},
		"interrupt": {killedBy(syscall.SIGINT), 130},
	} {
		t.Run(name, func(t *testing.T) {
			tr := &transcript{}
			p := &fakeInit{tr: tr, pid: 2, exits: []fakeExit{
				{pid: 7, ws: exitedWith(0)},              // an orphan
				{err: syscall.EINTR},                     // a signal interrupted wait4
				{pid: 9, ws: killedBy(syscall.SIGKILL)},  // another orphan
				{pid: 2, ws: syscall.WaitStatus(0x137f)}, // the agent stopped: not an end
				{pid: 2, ws: tc.last},
			}}
			code, err := superviseAgent(p, nil)
			if err != nil || code != tc.want {
				t.Fatalf("superviseAgent = %d, %v; want %d", code, err, tc.want)
			}
			assertTranscript(t, tr, `
				start exec step pid=2
				reaped 7
				reaped 0
				reaped 9
				reaped 2
				reaped 2
			`)
		})
	}
}

func TestSuperviseAgentForwardsSignals(t *testing.T) {
	tr := &transcript{}
	sent := make(chan struct{})
	p := &fakeInit{tr: tr, pid: 2, sent: sent, exits: []fakeExit{{pid: 2, ws: killedBy(syscall.SIGTERM)}}}
	sigs := make(chan syscall.Signal)
	go func() {
		sigs <- syscall.SIGHUP
		sigs <- syscall.SIGTERM
		sigs <- syscall.SIGINT // received once the previous two were forwarded
		close(sent)
	}()
	if code, err := superviseAgent(p, sigs); err != nil || code != 143 {
		t.Fatalf("superviseAgent = %d, %v", code, err)
	}
	if got := tr.String(); !strings.Contains(got, "kill 2 hangup\nkill 2 terminated\n") {
		t.Fatalf("transcript:\n%s", got)
	}
}

func TestSuperviseAgentWaitError(t *testing.T) {
	p := &fakeInit{tr: &transcript{}, pid: 2, exits: []fakeExit{{err: syscall.ECHILD}}}
	if code, err := superviseAgent(p, nil); err == nil || code != 1 {
		t.Fatalf("superviseAgent = %d, %v; want an error", code, err)
	}
}

func TestSignalStream(t *testing.T) {
	var b strings.Builder
	for _, s := range []syscall.Signal{syscall.SIGTERM, syscall.SIGHUP, syscall.SIGINT} {
		if err := writeSignal(&b, s); err != nil {
			t.Fatal(err)
		}
	}
	var got []syscall.Signal
	for s := range readSignals(bufio.NewReader(strings.NewReader(b.String()))) {
		got = append(got, s)
	}
	if len(got) != 3 || got[0] != syscall.SIGTERM || got[1] != syscall.SIGHUP || got[2] != syscall.SIGINT {
		t.Fatalf("got %v", got)
	}
	// Anything that is not a signal number ends the stream.
	for _, in := range []string{"15\nkill\n1\n", "15\n0\n1\n", "15\n99\n1\n", "15\n-9\n"} {
		var n int
		for range readSignals(bufio.NewReader(strings.NewReader(in))) {
			n++
		}
		if n != 1 {
			t.Errorf("%q: %d signals, want 1", in, n)
		}
	}
}
