package bench

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Usage is what a process tree holds at one moment: resident memory, open descriptors, and the CPU
// time it has used so far.
type Usage struct {
	RSS   int64 // bytes
	FDs   int
	CPU   time.Duration // user + system
	Procs int
}

// Sub is u − v, field by field.
func (u Usage) Sub(v Usage) Usage {
	return Usage{RSS: u.RSS - v.RSS, FDs: u.FDs - v.FDs, CPU: u.CPU - v.CPU, Procs: u.Procs - v.Procs}
}

// userHZ is the unit of the CPU times in /proc/<pid>/stat; Linux fixes it at 100 for userspace.
const userHZ = 100

// TreeUsage sums Usage over pid and all its descendants (squid's helpers, for instance), reading
// the proc filesystem at procRoot ("/proc").
func TreeUsage(procRoot string, pid int) (Usage, error) {
	tree, err := descendants(procRoot, pid)
	if err != nil {
		return Usage{}, err
	}
	var total Usage
	for _, p := range tree {
		u, err := processUsage(filepath.Join(procRoot, strconv.Itoa(p)))
		if err != nil {
			if p != pid && os.IsNotExist(err) {
				continue // a helper that exited meanwhile
			}
			return Usage{}, err
		}
		total.RSS += u.RSS
		total.FDs += u.FDs
		total.CPU += u.CPU
		total.Procs++
	}
	return total, nil
}

// descendants is pid followed by every process below it, found through the parent pid in each
// process's stat file.
func descendants(procRoot string, pid int) ([]int, error) {
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, err
	}
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(filepath.Join(procRoot, e.Name(), "stat"))
		if err != nil {
			continue // gone, or not ours to read
		}
		children[st.ppid] = append(children[st.ppid], p)
	}
	tree := []int{pid}
	for i := 0; i < len(tree); i++ {
		tree = append(tree, children[tree[i]]...)
	}
	return tree, nil
}

func processUsage(dir string) (Usage, error) {
	st, err := readStat(filepath.Join(dir, "stat"))
	if err != nil {
		return Usage{}, err
	}
	rss, err := readVmRSS(filepath.Join(dir, "status"))
	if err != nil {
		return Usage{}, err
	}
	fds, err := os.ReadDir(filepath.Join(dir, "fd"))
	if err != nil {
		return Usage{}, err
	}
	return Usage{RSS: rss, FDs: len(fds), CPU: st.cpu}, nil
}

type procStat struct {
	ppid int
	cpu  time.Duration
}

// readStat parses /proc/<pid>/stat: "pid (comm) state ppid … utime stime …". comm may hold spaces
// and parentheses, so fields are counted from the last ')'.
func readStat(path string) (procStat, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return procStat{}, err
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("%s: no command name", path)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return procStat{}, fmt.Errorf("%s: %d fields", path, len(f)+2)
	}
	ppid, err1 := strconv.Atoi(f[1])
	utime, err2 := strconv.ParseInt(f[11], 10, 64)
	stime, err3 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return procStat{}, fmt.Errorf("%s: malformed", path)
	}
	return procStat{ppid: ppid, cpu: time.Duration(utime+stime) * time.Second / userHZ}, nil
}

// readVmRSS returns the VmRSS line of /proc/<pid>/status in bytes (0 for a kernel thread or a
// zombie, which have none).
func readVmRSS(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "VmRSS:")
		if !ok {
			continue
		}
		kb, unit, _ := strings.Cut(strings.TrimSpace(v), " ")
		n, err := strconv.ParseInt(kb, 10, 64)
		if err != nil || unit != "kB" {
			return 0, fmt.Errorf("%s: VmRSS %q", path, v)
		}
		return n << 10, nil
	}
	return 0, sc.Err()
}
