package metrics

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"
)

// ErrInUse means another process already serves the endpoint.
var ErrInUse = errors.New("metrics endpoint in use")

// Listen binds the endpoint. A unix socket's directory must exist (it is not created, nor is its
// mode changed); a socket file nobody answers on is replaced, anything else at the path is an
// error; the socket is made 0600 (root only) and removed when the listener closes.
func Listen(e Endpoint) (net.Listener, error) {
	if e.Network != "unix" {
		ln, err := net.Listen(e.Network, e.Address)
		if err != nil {
			return nil, fmt.Errorf("metrics listener %s: %w", e, err)
		}
		return ln, nil
	}
	path := e.Address
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("metrics socket %s: its directory must exist: %v", path, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("metrics socket %s: exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("metrics socket %s: %w by another process", path, ErrInUse)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("metrics socket %s: removing a stale socket: %w", path, err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("metrics socket %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("metrics socket %s: %w", path, err)
	}
	return ln, nil
}
