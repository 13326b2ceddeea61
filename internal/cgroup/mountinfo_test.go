package cgroup

import (
	"reflect"
	"strings"
	"testing"
)

const hybridMountinfo = `22 28 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 master:2 - cgroup2 cgroup2 rw
90 28 0:50 / /mnt/with\040space rw - tmpfs none rw
`

func TestParseMountinfo(t *testing.T) {
	mounts, err := ParseMountinfo(strings.NewReader(hybridMountinfo))
	if err != nil {
		t.Fatal(err)
	}
	if len(mounts) != 6 {
		t.Fatalf("%d mounts", len(mounts))
	}
	if m := mounts[4]; m != (Mount{Root: "/", Point: "/sys/fs/cgroup/unified", FSType: "cgroup2", Source: "cgroup2"}) {
		t.Fatalf("optional fields mis-parsed: %+v", m)
	}
	if mounts[5].Point != "/mnt/with space" {
		t.Fatalf("escape not undone: %q", mounts[5].Point)
	}
	cg2, err := V2Mount(mounts)
	if err != nil || cg2 != "/sys/fs/cgroup/unified" {
		t.Fatalf("cgroup2 mount %q, %v", cg2, err)
	}
	if got := Points(mounts); !reflect.DeepEqual(got, []string{"/sys/fs/cgroup/cpu", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"}) {
		t.Fatalf("cgroup mounts %v", got)
	}

	unified := "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
	mounts, _ = ParseMountinfo(strings.NewReader(unified))
	if cg2, _ := V2Mount(mounts); cg2 != "/sys/fs/cgroup" {
		t.Fatalf("unified host: %q", cg2)
	}
	// A cgroup2 mount of a subtree (a container's view) is not the hierarchy's root.
	mounts, _ = ParseMountinfo(strings.NewReader("29 23 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"))
	if _, err := V2Mount(mounts); err != ErrNoCgroup2 {
		t.Fatalf("subtree mount: %v", err)
	}
	if _, err := ParseMountinfo(strings.NewReader("22 28 0:20 / /sys rw\n")); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("malformed line: %v", err)
	}
}

// TestV2MountCases covers the layouts the bpf loader, the sidecar and firma run must agree on.
func TestV2MountCases(t *testing.T) {
	cases := []struct {
		name, mountinfo, want string
		err                   error
	}{
		{"unified", "25 30 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n", "/sys/fs/cgroup", nil},
		{"hybrid", "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n" +
			"40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n" +
			"41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n", "/sys/fs/cgroup/unified", nil},
		{"subtree first, root second", "29 23 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n" +
			"30 23 0:26 / /mnt/cg2 rw - cgroup2 cgroup2 rw\n", "/mnt/cg2", nil},
		{"optional fields", "41 31 0:38 / /mnt/cg rw shared:1 master:2 - cgroup2 none rw\n", "/mnt/cg", nil},
		{"escaped space", "41 31 0:38 / /mnt/my\\040cg rw - cgroup2 none rw\n", "/mnt/my cg", nil},
		{"v1 only", "40 31 0:37 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n", "", ErrNoCgroup2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mounts, err := ParseMountinfo(strings.NewReader(tc.mountinfo))
			if err != nil {
				t.Fatal(err)
			}
			got, err := V2Mount(mounts)
			if err != tc.err || got != tc.want {
				t.Fatalf("got %q, %v; want %q, %v", got, err, tc.want, tc.err)
			}
		})
	}
}

func TestParseProcCgroup(t *testing.T) {
	got, err := ParseProcCgroup(strings.NewReader("9:name=systemd:/\n4:memory:/x\n0::/firma-agents.slice/run-1\n"))
	if err != nil || got != "/firma-agents.slice/run-1" {
		t.Fatalf("got %q, %v", got, err)
	}
	if _, err := ParseProcCgroup(strings.NewReader("4:memory:/x\n")); err == nil {
		t.Fatal("no v2 line accepted")
	}
}
