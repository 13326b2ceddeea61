package bench

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
)

// Machine is where and what a run measured, for the report's header.
type Machine struct {
	CPU      string   // model name
	Cores    int      // online CPUs
	Kernel   string   // release
	Go       string   // toolchain that built the harness, the sidecar and the client
	Commit   string   // firma's git commit, "+dirty" when the tree has changes
	Versions []string // of the peers, "squid 5.7"
	// LoadStart and LoadEnd are the 1, 5 and 15 minute load averages when the run started and
	// ended: other work on the machine is the first suspect when numbers move.
	LoadStart, LoadEnd string
}

// ReadMachine describes this machine and the firma checkout in dir.
func ReadMachine(dir string) Machine {
	m := Machine{Cores: runtime.NumCPU(), Go: runtime.Version(), CPU: "unknown", Kernel: "unknown", Commit: "unknown",
		LoadStart: LoadAvg()}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		m.CPU = cpuModel(f)
		f.Close()
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if out, err := git(dir, "rev-parse", "--short=12", "HEAD"); err == nil {
		m.Commit = out
		if st, err := git(dir, "status", "--porcelain", "--untracked-files=no"); err == nil && st != "" {
			m.Commit += "+dirty"
		}
	}
	return m
}

// LoadAvg is the first three fields of /proc/loadavg ("" when unreadable).
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

// cpuModel is the first "model name" of a /proc/cpuinfo.
func cpuModel(r io.Reader) string {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func git(dir string, args ...string) (string, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	out, err := cmd.Output()
	return strings.TrimSpace(string(out)), err
}
