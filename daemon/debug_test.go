package daemon

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

func TestValidateDebugAddr(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:6060": true,
		"[::1]:6060":     true,
		"localhost:6060": true,
		"127.0.0.2:0":    true,
		"0.0.0.0:6060":   false,
		"10.0.0.1:6060":  false,
		":6060":          false,
		"127.0.0.1":      false,
		"example:6060":   false,
	} {
		if err := validateDebugAddr(addr); (err == nil) != ok {
			t.Errorf("validateDebugAddr(%q) = %v, want ok=%v", addr, err, ok)
		}
	}
}

// Negative idle timeouts are refused naming the key; 0 (never) is accepted.
func TestValidateIdleTimeout(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Transparent.IdleTimeout.Duration = -1
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "sidecar.transparent.idle_timeout") {
		t.Fatalf("Validate with a negative idle_timeout: %v", err)
	}
	cfg.Debug.ListenAddr = "0.0.0.0:6060"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "sidecar.debug.listen_addr") {
		t.Fatalf("Validate with a debug listener on every address: %v", err)
	}
}

// The debug listener serves net/http/pprof.
func TestServeDebug(t *testing.T) {
	s := &Sidecar{log: zerolog.Nop()}
	defer s.Close()
	addr, err := s.serveDebug("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Get("http://" + addr.String() + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(b), "goroutine profile") {
		t.Fatalf("GET /debug/pprof/goroutine: %s\n%s", resp.Status, b)
	}
}
