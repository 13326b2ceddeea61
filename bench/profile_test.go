package bench

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCaptureProfiles(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.Handle("/debug/pprof/allocs", pprof.Handler("allocs"))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	prefix := filepath.Join(t.TempDir(), "firma-mitm-new-r1")
	if err := CaptureProfiles(context.Background(), strings.TrimPrefix(srv.URL, "http://"), prefix, time.Second); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{prefix + ".cpu.pprof", prefix + ".allocs.pprof"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
			t.Errorf("%s is not a gzipped profile (%d bytes)", f, len(b))
		}
	}
}

// A sidecar without the debug listener's handlers fails the capture with the reason.
func TestCaptureProfilesWithoutPprof(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	err := CaptureProfiles(context.Background(), strings.TrimPrefix(srv.URL, "http://"), filepath.Join(t.TempDir(), "p"), time.Second)
	if err == nil || !strings.Contains(err.Error(), "404 Not Found") {
		t.Fatalf("err = %v", err)
	}
}

func TestDebugTOML(t *testing.T) {
	if got := DebugTOML("127.0.0.1:6060"); got != "[sidecar.debug]\nlisten_addr = \"127.0.0.1:6060\"\n" {
		t.Errorf("DebugTOML = %q", got)
	}
}
