//go:build !linux

package bpf

import (
	"context"
	"net/netip"

	"github.com/rs/zerolog"
)

// Programs is unavailable off Linux.
type Programs struct{}

func Attach(Config, zerolog.Logger) (*Programs, error)             { return nil, ErrUnsupported }
func (*Programs) Close() error                                     { return nil }
func (*Programs) Lookup(netip.AddrPort) (Origin, error)            { return Origin{}, ErrUnsupported }
func (*Programs) LookupDNS(netip.AddrPort, Proto) (Origin, error)  { return Origin{}, ErrUnsupported }
func (*Programs) Counters() (map[string]uint64, error)             { return nil, ErrUnsupported }
func (*Programs) Features() Features                               { return Features{} }
func (*Programs) Check() Status                                    { return Status{} }
func (*Programs) Repair() error                                    { return ErrUnsupported }
func (*Programs) Refusals(context.Context) (<-chan Refusal, error) { return nil, ErrUnsupported }
func Inspect(cfg Config) Status                                    { return Status{Cgroup: cfg.Cgroup} }
func Cleanup(string) error                                         { return ErrUnsupported }
func Pinned(string) bool                                           { return false }
func CgroupID(string) (uint64, error)                              { return 0, ErrUnsupported }
