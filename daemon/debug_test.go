package daemon

import (
	"strings"
	"testing"
)

func TestDebugConfigLoopbackOnly(t *testing.T) {
	for addr, want := range map[string]string{
		"":               "",
		"127.0.0.1:6060": "",
		"[::1]:6060":     "",
		"0.0.0.0:6060":   "only a loopback address",
		"10.0.0.1:6060":  "only a loopback address",
		"localhost:6060": "want a loopback address:port",
		"127.0.0.1":      "want a loopback address:port",
	} {
		c := DebugConfig{ListenAddr: addr}
		err := c.Validate()
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("%q: %v, want %q", addr, err, want)
		}
	}
}
