package runner

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
	"syscall"
)

// The init step is PID 1 of the agent's PID namespace. The kernel gives that process two duties
// nobody else can do: it adopts every orphan (and must reap it, or zombies pile up), and when it
// exits everything else in the namespace is killed. So the agent never runs as PID 1: init starts
// the exec step as its child, reaps whatever ends up under it, forwards the signals firma run asks
// for, and exits with the agent's status.
//
// firma run talks to init over the pipe that carried the spec: after the spec's JSON line, each
// line is a signal number to forward to the agent. Signals sent to init itself are not forwarded:
// those from a terminal reach the agent directly (it is in the terminal's foreground process group
// too), and an agent has no business signalling its init.

// initProc is what init does to processes; the real one makes syscalls, tests record.
type initProc interface {
	// Start starts the exec step and returns its pid (in the namespace).
	Start() (int, error)
	// Wait reaps any child and returns its pid and status; it blocks until one exits.
	Wait() (int, syscall.WaitStatus, error)
	Kill(pid int, sig syscall.Signal) error
}

// superviseAgent starts the agent and waits for it, reaping every other process that exits in
// the meantime and forwarding each signal from sigs. It returns the agent's status as firma run
// reports it: its exit code, or 128+n when signal n ended it.
func superviseAgent(p initProc, sigs <-chan syscall.Signal) (int, error) {
	pid, err := p.Start()
	if err != nil {
		return 1, err
	}
	exited, forwarder := make(chan struct{}), make(chan struct{})
	defer func() {
		close(exited)
		<-forwarder
	}()
	go func() {
		defer close(forwarder)
		for {
			select {
			case sig, ok := <-sigs:
				if !ok {
					return
				}
				p.Kill(pid, sig) // the agent may be exiting as we send: nothing to do about it
			case <-exited:
				return
			}
		}
	}()
	for {
		wpid, ws, err := p.Wait()
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return 1, fmt.Errorf("waiting for the agent: %w", err)
		}
		if wpid != pid {
			continue // an orphan that ended under init: reaped, nothing more
		}
		switch {
		case ws.Exited():
			return ws.ExitStatus(), nil
		case ws.Signaled():
			return 128 + int(ws.Signal()), nil
		}
	}
}

// readSignals turns the lines of r (decimal signal numbers) into signals on the returned channel,
// which is closed at the end of r. A line that is not a signal number ends the stream: only
// firma run writes there.
func readSignals(r *bufio.Reader) <-chan syscall.Signal {
	ch := make(chan syscall.Signal, 4)
	go func() {
		defer close(ch)
		for {
			line, err := r.ReadString('\n')
			if line != "" {
				n, perr := strconv.Atoi(strings.TrimSpace(line))
				if perr != nil || n <= 0 || n >= 65 {
					return
				}
				ch <- syscall.Signal(n)
			}
			if err != nil {
				return
			}
		}
	}()
	return ch
}

// writeSignal is firma run's side of the signal stream.
func writeSignal(w io.Writer, sig syscall.Signal) error {
	_, err := fmt.Fprintf(w, "%d\n", int(sig))
	return err
}
