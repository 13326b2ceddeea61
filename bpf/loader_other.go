//go:build !linux

package bpf

import (
	"net/netip"

	"github.com/rs/zerolog"
)

// Programs is unavailable off Linux.
type Programs struct{}

func Attach(Config, zerolog.Logger) (*Programs, error)     { return nil, ErrUnsupported }
func (*Programs) Close() error                             { return nil }
func (*Programs) Lookup(netip.AddrPort) (Origin, error)    { return Origin{}, ErrUnsupported }
func (*Programs) LookupDNS(netip.AddrPort) (Origin, error) { return Origin{}, ErrUnsupported }
func (*Programs) Counters() (map[string]uint64, error)     { return nil, ErrUnsupported }
func Cleanup(string) error                                 { return ErrUnsupported }
func Pinned(string) bool                                   { return false }
func CgroupID(string) (uint64, error)                      { return 0, ErrUnsupported }
