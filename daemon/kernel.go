package daemon

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/daemon/judge"
)

// integrityInterval is how often the sidecar checks that its programs are still attached, pinned
// and its own: the longest a detached program goes unnoticed.
const integrityInterval = 2 * time.Second

// kernelRefusals turns every refusal the kernel reports (a socket family, a route-changing option, a
// packet not routed to the sidecar…) into an audit record, naming the process and the agent. The
// kernel rate-limits its reports per cgroup; what it suppressed gets a record of its own.
func (s *Sidecar) kernelRefusals(ctx context.Context, progs *bpf.Programs) {
	ch, err := progs.Refusals(ctx)
	if err != nil {
		s.log.Error().Err(err).Msg("kernel refusals cannot be read: they will not be audited")
		return
	}
	for r := range ch {
		f := s.flowOf(bpf.Origin{PID: r.PID, UID: r.UID, GID: r.GID, CgroupID: r.CgroupID, Comm: r.Comm})
		host := ""
		if r.Addr.IsValid() {
			host = r.Addr.Addr().String()
		}
		in := judge.Intent{Method: "KERNEL", Host: host, Port: int(r.Addr.Port()), Transport: "kernel", Mode: judge.ModeKernel,
			Refuse: "kernel refused " + r.Kind.String() + ": " + r.Detail()}
		s.judge.Decide(ctx, f, in)
		if r.Suppressed > 0 {
			in.Refuse = fmt.Sprintf("kernel refusals suppressed: %d more from this cgroup since its last report", r.Suppressed)
			in.Host, in.Port = "", 0
			s.judge.Decide(ctx, f, in)
		}
	}
}

// integrity keeps the kernel programs in force: every interval it checks that each link is pinned,
// attached to the configured cgroup and runs this sidecar's program. Anything else — a detached link
// (`firma sidecar --cleanup --force`, bpftool), removed pins, a replaced program — is logged as an
// error, reported unhealthy until repaired, and repaired.
func (s *Sidecar) integrity(ctx context.Context, progs *bpf.Programs, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st := progs.Check()
		if st.OK() {
			s.setKernelFault(nil)
			continue
		}
		err := st.Err()
		s.setKernelFault(err)
		s.metrics.KernelFault()
		s.log.Error().Err(err).Msg("kernel programs not in force: repairing")
		if rerr := progs.Repair(); rerr != nil {
			s.log.Error().Err(rerr).Msg("repair failed")
			continue
		}
		if st := progs.Check(); st.OK() {
			s.log.Warn().Msg("kernel programs repaired")
			s.setKernelFault(nil)
			s.metrics.KernelRepaired()
		}
	}
}

// kernelFault is what the integrity check last found wrong, or nil.
type kernelFault struct {
	mu  sync.Mutex
	err error
}

func (s *Sidecar) setKernelFault(err error) {
	s.fault.mu.Lock()
	s.fault.err = err
	s.fault.mu.Unlock()
}

func (s *Sidecar) kernelErr() error {
	s.fault.mu.Lock()
	defer s.fault.mu.Unlock()
	return s.fault.err
}
