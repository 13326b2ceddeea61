package bpf

import (
	"errors"
	"strings"
	"testing"
)

func TestParseCgroup2Mount(t *testing.T) {
	cases := []struct {
		name, mountinfo, want string
		err                   error
	}{
		{"unified", "25 30 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n", "/sys/fs/cgroup", nil},
		{"hybrid", "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n" +
			"40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n" +
			"41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n", "/sys/fs/cgroup/unified", nil},
		{"optional fields", "41 31 0:38 / /mnt/cg rw shared:1 master:2 - cgroup2 none rw\n", "/mnt/cg", nil},
		{"escaped space", "41 31 0:38 / /mnt/my\\040cg rw - cgroup2 none rw\n", "/mnt/my cg", nil},
		{"v1 only", "40 31 0:37 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n", "", ErrNoCgroup2},
		{"garbage", "not a mountinfo line\n\n", "", ErrNoCgroup2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseCgroup2Mount(strings.NewReader(tc.mountinfo))
			if !errors.Is(err, tc.err) || got != tc.want {
				t.Fatalf("got %q, %v; want %q, %v", got, err, tc.want, tc.err)
			}
		})
	}
}
