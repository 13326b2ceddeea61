// Package doctor answers two questions an operator asks at 3 a.m.: can firma enforce on this
// host, and is the sidecar that firma.toml describes enforcing right now? Each answer is a Check
// with a status (ok, warn, fail), what was found, and what to do when it is not ok.
//
// It owns the checks of the files a config names (for `firma check config` and `firma doctor`),
// the host's kernel and privileges, and the running sidecar as seen from outside: pins, attached
// programs, listeners, control socket, the agents in monitor mode, audit log, authority, bundle
// age and /healthz. It only
// reads: it never attaches, creates, repairs or sends a byte through the sidecar's listeners
// (a probe would be a decision in the audit log), and it must not import cmd/firma.
package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/openfirma/firma/authority"
	"github.com/openfirma/firma/daemon"
)

// Status is a check's verdict. Only Fail makes a report not ready.
type Status string

const (
	OK   Status = "ok"
	Warn Status = "warn"
	Fail Status = "fail"
)

// Check is one finding.
type Check struct {
	Name   string `json:"name"`          // stable: "kernel", "sidecar.pins", "config.audit_key", …
	Status Status `json:"status"`        // ok, warn or fail
	Detail string `json:"detail"`        // what was found
	Fix    string `json:"fix,omitempty"` // what to do, when the status is not ok
}

// Report is every check, in order, and whether none failed.
type Report struct {
	Config string  `json:"config,omitempty"`
	Ready  bool    `json:"ready"`
	Checks []Check `json:"checks"`
}

// Config is what doctor knows of firma.toml: the sections the file has (nil when it lacks one),
// with every path already absolute.
type Config struct {
	Path      string
	Sidecar   *daemon.Config
	Authority *authority.Config
	// MetricsAddr is [sidecar.metrics] listen_addr: where the sidecar serves /healthz. "" when not
	// configured.
	MetricsAddr string
}

// Options tune Run.
type Options struct {
	// Timeout bounds each network probe (control socket, authority, /healthz). Default 3s.
	Timeout time.Duration
	// Now is the clock for ages (tests). Default time.Now.
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.Timeout <= 0 {
		o.Timeout = 3 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Run checks the host, the files cfg names and, when cfg has a [sidecar], the running sidecar.
func Run(ctx context.Context, cfg Config, opt Options) Report {
	opt = opt.withDefaults()
	checks := Host()
	checks = append(checks, Files(cfg)...)
	if cfg.Sidecar != nil {
		checks = append(checks, Sidecar(ctx, cfg, opt)...)
	}
	return NewReport(cfg.Path, checks)
}

// NewReport wraps checks: ready unless one failed.
func NewReport(config string, checks []Check) Report {
	r := Report{Config: config, Ready: true, Checks: checks}
	for _, c := range checks {
		if c.Status == Fail {
			r.Ready = false
		}
	}
	return r
}

// Failed returns the checks with status s.
func (r Report) Failed(s Status) []Check {
	var out []Check
	for _, c := range r.Checks {
		if c.Status == s {
			out = append(out, c)
		}
	}
	return out
}

// WriteText prints the report for a terminal: one line a check, the fix below any that is not ok,
// and a verdict.
func (r Report) WriteText(w io.Writer) error {
	width := 0
	for _, c := range r.Checks {
		width = max(width, len(c.Name))
	}
	var b strings.Builder
	if r.Config != "" {
		fmt.Fprintf(&b, "firma doctor: %s\n", r.Config)
	}
	for _, c := range r.Checks {
		label := map[Status]string{OK: "ok", Warn: "warn", Fail: "FAIL"}[c.Status]
		fmt.Fprintf(&b, "%-4s  %-*s  %s\n", label, width, c.Name, c.Detail)
		if c.Status != OK && c.Fix != "" {
			fmt.Fprintf(&b, "      %-*s  fix: %s\n", width, "", c.Fix)
		}
	}
	fails, warns := len(r.Failed(Fail)), len(r.Failed(Warn))
	switch {
	case !r.Ready:
		fmt.Fprintf(&b, "not ready: %d failed, %d warnings\n", fails, warns)
	case warns > 0:
		fmt.Fprintf(&b, "ready, with %d warnings\n", warns)
	default:
		b.WriteString("ready\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON prints the report as one indented JSON object.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func ok(name, format string, a ...any) Check {
	return Check{Name: name, Status: OK, Detail: fmt.Sprintf(format, a...)}
}

func warn(name, fix, format string, a ...any) Check {
	return Check{Name: name, Status: Warn, Detail: fmt.Sprintf(format, a...), Fix: fix}
}

func fail(name, fix, format string, a ...any) Check {
	return Check{Name: name, Status: Fail, Detail: fmt.Sprintf(format, a...), Fix: fix}
}
