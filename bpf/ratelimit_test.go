//go:build linux

package bpf_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/internal/testutil"
)

// TestRefusalRateLimit floods refusals from one cgroup and checks the accounting: far fewer reports
// than refusals, and every refusal either reported or counted in the Suppressed of a later report
// of the same cgroup — while another cgroup's refusal is reported at once, from its own bucket.
func TestRefusalRateLimit(t *testing.T) {
	t.Parallel()
	testutil.RequireRoot(t)
	parent := testutil.NewCgroup(t, nil)
	flooder, other := testutil.NewCgroup(t, parent), testutil.NewCgroup(t, parent)
	cfg := bpf.Config{
		Cgroup:       parent.Path,
		PinDir:       filepath.Join("/sys/fs/bpf", "firma-test-"+filepath.Base(parent.Path)),
		SidecarPort:  testutil.FreePort(t),
		RefusalRate:  5,
		RefusalBurst: 3,
	}
	progs := attachCfg(t, cfg)
	reports := collectRefusals(t, progs)
	// n refusals at once, then one every 300 ms (each has credit again at 5/s) trickle times.
	refuse := func(cg *testutil.Cgroup, n, trickle int) {
		t.Helper()
		script := `import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
def refuse():
    try:
        s.sendto(b"x", ("127.0.0.7", 9))
    except PermissionError:
        pass
for i in range(int(sys.argv[1])):
    refuse()
for i in range(int(sys.argv[2])):
    time.sleep(0.3)
    refuse()`
		if out, err := cg.Command(context.Background(), t, "python3", "-c", script, strconv.Itoa(n), strconv.Itoa(trickle)).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	const flood, trickle = 300, 3
	refuse(flooder, flood, trickle)
	refuse(other, 1, 0)
	if _, ok := reports.await(func(r bpf.Refusal) bool { return r.CgroupID == other.ID && r.Suppressed == 0 }); !ok {
		t.Error("another cgroup's refusal was not reported at once")
	}
	attempts := flood + trickle
	// Each trickled refusal is reported; the first carries what the flood left suppressed.
	if _, ok := reports.await(func(r bpf.Refusal) bool { return r.CgroupID == flooder.ID && r.Suppressed > 0 }); !ok {
		t.Fatal("no report carried the suppressed refusals")
	}
	counters, err := progs.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := reports.awaitCount(int(counters["refusal_events"])); !ok {
		t.Fatalf("refusal_events = %d, %d reports read", counters["refusal_events"], len(reports.snapshot()))
	}

	var reported, suppressed uint64
	for _, r := range reports.snapshot() {
		if r.CgroupID == flooder.ID {
			reported++
			suppressed += r.Suppressed
		}
	}
	if reported >= flood/2 {
		t.Errorf("%d reports for %d refusals: the rate limit did not hold", reported, attempts)
	}
	if counters["refuse_udp"] != uint64(attempts+1) {
		t.Errorf("refuse_udp = %d, want %d", counters["refuse_udp"], attempts+1)
	}
	// The report that carried the count emptied the bucket, and nothing was refused after it.
	if reported+suppressed != uint64(attempts) {
		t.Errorf("%d reported + %d suppressed, for %d refusals", reported, suppressed, attempts)
	}
	if counters["refusal_events_suppressed"] != suppressed {
		t.Errorf("refusal_events_suppressed = %d, reports carried %d", counters["refusal_events_suppressed"], suppressed)
	}
}

// TestAttachWithoutBPFLSM stands in a kernel whose active LSMs lack "bpf", and one without
// securityfs: Attach must succeed with the cgroup programs in force and say what is missing.
func TestAttachWithoutBPFLSM(t *testing.T) {
	testutil.RequireRoot(t)
	lsm := filepath.Join(t.TempDir(), "lsm")
	if err := os.WriteFile(lsm, []byte("lockdown,capability,landlock\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, path, missing string }{
		{"no bpf lsm", lsm, "BPF LSM is not active"},
		{"no securityfs", filepath.Join(t.TempDir(), "absent"), "cannot confirm that BPF LSM is active"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer bpf.SetLSMPath(tc.path)()
			cg := testutil.NewCgroup(t, nil)
			cfg := bpf.Config{Cgroup: cg.Path, PinDir: filepath.Join("/sys/fs/bpf", "firma-test-"+filepath.Base(cg.Path)), SidecarPort: testutil.FreePort(t)}
			t.Cleanup(func() { bpf.Cleanup(cfg.PinDir) })
			progs, err := bpf.Attach(cfg, zerolog.Nop())
			if err != nil {
				t.Fatalf("attach without BPF LSM: %v", err)
			}
			defer progs.Close()
			f := progs.Features()
			if f.SocketFamilies || f.CompatSockopt || f.BPFSyscall || f.TunDevices || f.Complete() {
				t.Errorf("features claimed without BPF LSM: %v", f)
			}
			if !strings.Contains(f.String(), tc.missing) {
				t.Errorf("features %q do not say %q", f, tc.missing)
			}
			st := progs.Check()
			if err := st.Err(); err != nil || len(st.Links) < 17 {
				t.Errorf("check: %v (%d links)", err, len(st.Links))
			}
		})
	}
}
