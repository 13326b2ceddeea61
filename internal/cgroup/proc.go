package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// OfProcess returns the cgroup v2 path of pid as this process sees it.
func OfProcess(pid int32) (string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	defer f.Close()
	return ParseProcCgroup(f)
}

// ParseProcCgroup returns the cgroup v2 path ("0::/path") from /proc/<pid>/cgroup text.
func ParseProcCgroup(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			return Clean(p)
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", errors.New("no cgroup v2 entry")
}
