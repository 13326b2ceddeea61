//go:build !linux

package authority

import (
	"errors"
	"net/netip"
)

// socketOwner is Linux-only: elsewhere no caller is trusted to request capabilities over HTTP.
func socketOwner(local, remote netip.AddrPort) (uint32, error) { return 0, errors.ErrUnsupported }
