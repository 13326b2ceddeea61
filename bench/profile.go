package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// DebugTOML is the sidecar configuration that opens the debug listener profiles are read from.
// The sidecar must serve net/http/pprof's handlers under /debug/pprof/ there.
func DebugTOML(addr string) string {
	return fmt.Sprintf("[sidecar.debug]\nlisten_addr = %q\n", addr)
}

// CaptureProfiles reads a CPU profile and an allocation profile (the allocations made during the
// window, not since start) covering the next d from the net/http/pprof listener at addr, and
// writes them to prefix+".cpu.pprof" and prefix+".allocs.pprof" (read them with go tool pprof).
func CaptureProfiles(ctx context.Context, addr, prefix string, d time.Duration) error {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	errs := make(chan error, 2)
	for _, p := range []struct{ path, file string }{
		{fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs), prefix + ".cpu.pprof"},
		{fmt.Sprintf("/debug/pprof/allocs?seconds=%d", secs), prefix + ".allocs.pprof"},
	} {
		go func() { errs <- fetchProfile(ctx, "http://"+addr+p.path, p.file) }()
	}
	return errors.Join(<-errs, <-errs)
}

// debugClient talks to the sidecar's loopback listener, never through a proxy from the
// environment.
var debugClient = &http.Client{Transport: &http.Transport{Proxy: nil}}

func fetchProfile(ctx context.Context, url, file string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := debugClient.Do(req)
	if err != nil {
		return fmt.Errorf("profile %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("profile %s: %s: %s", url, resp.Status, b)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, resp.Body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("profile %s: %w", file, err)
	}
	return nil
}
