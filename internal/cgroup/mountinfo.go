package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Mount is one line of /proc/<pid>/mountinfo.
type Mount struct {
	Root   string // the mounted directory inside its filesystem
	Point  string // where it is mounted
	FSType string
	Source string
}

// ErrNoCgroup2 means no cgroup2 filesystem showing the hierarchy's root is mounted.
var ErrNoCgroup2 = errors.New("no cgroup2 mount found")

// ParseMountinfo reads mountinfo text (proc(5)):
//
//	41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
//
// Paths are unescaped (\040 is a space). A malformed line is an error naming its number.
func ParseMountinfo(r io.Reader) ([]Mount, error) {
	var mounts []Mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		fields := strings.Fields(sc.Text())
		sep := -1
		for i := 6; i < len(fields); i++ { // optional fields start at 6 and end with "-"
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 6 || sep < 0 || sep+2 >= len(fields) {
			return nil, fmt.Errorf("mountinfo line %d: malformed: %q", n, sc.Text())
		}
		mounts = append(mounts, Mount{
			Root:   unescapeOctal(fields[3]),
			Point:  unescapeOctal(fields[4]),
			FSType: fields[sep+1],
			Source: unescapeOctal(fields[sep+2]),
		})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading mountinfo: %w", err)
	}
	return mounts, nil
}

// SelfMounts parses /proc/self/mountinfo.
func SelfMounts() ([]Mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseMountinfo(f)
}

// V2Mount returns where the unified hierarchy is mounted: /sys/fs/cgroup on most hosts,
// /sys/fs/cgroup/unified on hybrid ones. When several cgroup2 mounts exist the first one that shows
// the hierarchy's root wins; a mount of a subtree (a container's bind mount) is not the root, and
// cgroup paths would not resolve against it.
func V2Mount(mounts []Mount) (string, error) {
	for _, m := range mounts {
		if m.FSType == "cgroup2" && m.Root == "/" {
			return m.Point, nil
		}
	}
	return "", ErrNoCgroup2
}

// FindV2Mount is V2Mount of this process's mount table.
func FindV2Mount() (string, error) {
	mounts, err := SelfMounts()
	if err != nil {
		return "", err
	}
	return V2Mount(mounts)
}

// Points returns every cgroup (v1) and cgroup2 mount point.
func Points(mounts []Mount) []string {
	var points []string
	for _, m := range mounts {
		if m.FSType == "cgroup" || m.FSType == "cgroup2" {
			points = append(points, m.Point)
		}
	}
	return points
}

// unescapeOctal undoes mountinfo's \ooo escapes (space, tab, newline, backslash).
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && s[i+1] >= '0' && s[i+1] <= '3' && isOctal(s[i+2]) && isOctal(s[i+3]) {
			v := (s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0')
			b.WriteByte(v)
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
