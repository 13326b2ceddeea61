package runner

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"github.com/openfirma/firma/daemon/control"
)

// flakySidecar answers Refused with the errors it is given, in turn, and keeps what it got.
type flakySidecar struct {
	errs   []error
	calls  *int
	closed *int
	got    *[]control.Refusal
}

func (f *flakySidecar) Info(context.Context) (control.Info, error)           { return control.Info{}, nil }
func (f *flakySidecar) Register(context.Context, control.Registration) error { return nil }
func (f *flakySidecar) Unregister(context.Context, string) error             { return nil }
func (f *flakySidecar) Close() error                                         { *f.closed++; return nil }
func (f *flakySidecar) Refused(_ context.Context, r control.Refusal) error {
	*f.calls++
	if f.got != nil {
		*f.got = append(*f.got, r)
	}
	if len(f.errs) == 0 {
		return nil
	}
	err := f.errs[0]
	f.errs = f.errs[1:]
	return err
}

// TestRefusalReporter: a connection that broke is made again once; an answer from the sidecar is
// not asked again; a sidecar that cannot be reached is logged (the first time, then every 100th),
// never retried in a loop.
func TestRefusalReporter(t *testing.T) {
	var calls, closed, dials int
	var errs []error
	var dialErr error
	var logs bytes.Buffer
	r := &refusalReporter{log: zerolog.New(&logs), dial: func(context.Context) (sidecar, error) {
		dials++
		if dialErr != nil {
			return nil, dialErr
		}
		return &flakySidecar{errs: errs, calls: &calls, closed: &closed}, nil
	}}
	ref := control.Refusal{PID: 7, Syscall: "bpf"}

	r.report(ref)
	r.report(ref)
	if dials != 1 || calls != 2 || logs.Len() != 0 {
		t.Fatalf("two reports: %d dials, %d calls, logs %q; want one connection for both", dials, calls, logs.String())
	}

	r.sc.(*flakySidecar).errs = []error{errors.New("broken pipe")}
	r.report(ref)
	if dials != 2 || calls != 4 || logs.Len() != 0 {
		t.Fatalf("after a broken connection: %d dials, %d calls, logs %q; want one redial", dials, calls, logs.String())
	}

	r.sc.(*flakySidecar).errs = []error{&control.RemoteError{Message: "pid 7 is in cgroup /x"}}
	r.report(ref)
	if dials != 2 || calls != 5 || !strings.Contains(logs.String(), "pid 7 is in cgroup /x") {
		t.Fatalf("a refusal from the sidecar: %d dials, %d calls, logs %q; want no retry and a warning", dials, calls, logs.String())
	}

	logs.Reset()
	dialErr = errors.New("firma sidecar is not running")
	for range 150 {
		r.report(ref)
	}
	if n := strings.Count(logs.String(), "could not report"); n != 1 {
		t.Fatalf("150 failed reports logged %d times, want once (the 2nd and 101st failures overall: one of them here)\n%s", n, logs.String())
	}
	r.close()
}

// TestRefusalReporterRateLimit: past the report rate, refusals are counted, not sent, and the next
// report carries the count; what is still counted at the end is logged.
func TestRefusalReporterRateLimit(t *testing.T) {
	var calls, closed int
	var got []control.Refusal
	var logs bytes.Buffer
	r := &refusalReporter{log: zerolog.New(&logs), limit: rate.NewLimiter(0, 2), dial: func(context.Context) (sidecar, error) {
		return &flakySidecar{calls: &calls, closed: &closed, got: &got}, nil
	}}
	for i := range 5 {
		r.report(control.Refusal{PID: 10 + i, Syscall: "bpf"})
	}
	if calls != 2 || got[0].Suppressed != 0 || got[1].Suppressed != 0 {
		t.Fatalf("5 refusals with a burst of 2: %d sent %+v; want 2, nothing suppressed yet", calls, got)
	}
	r.limit = rate.NewLimiter(rate.Inf, 1)
	r.report(control.Refusal{PID: 20, Syscall: "ptrace"})
	if calls != 3 || got[2].PID != 20 || got[2].Suppressed != 3 {
		t.Fatalf("the next report: %+v, want pid 20 carrying the 3 refusals not sent", got[2])
	}
	r.report(control.Refusal{PID: 21, Syscall: "ptrace"})
	if got[3].Suppressed != 0 {
		t.Fatalf("the count was sent twice: %+v", got[3])
	}
	r.limit = rate.NewLimiter(0, 0)
	r.report(control.Refusal{PID: 22, Syscall: "ptrace"})
	r.close()
	if !strings.Contains(logs.String(), `"unreported":1`) {
		t.Fatalf("a count left at the end is not logged: %s", logs.String())
	}
}
