//go:build linux

package bpf

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/openfirma/firma/internal/logfields"
)

// Refusals streams the kernel's refusal reports until ctx is done, then closes the channel. The
// ring buffer is pinned: reports made while no sidecar read them (up to its size) arrive first.
// There is one ring buffer, so only one reader should run at a time.
func (p *Programs) Refusals(ctx context.Context) (<-chan Refusal, error) {
	rd, err := ringbuf.NewReader(p.objs.Refusals)
	if err != nil {
		return nil, fmt.Errorf("opening refusal ring buffer: %w", err)
	}
	out := make(chan Refusal, 64)
	stop := context.AfterFunc(ctx, func() { rd.Close() })
	go func() {
		defer close(out)
		defer stop()
		defer rd.Close()
		for {
			rec, err := rd.Read()
			if errors.Is(err, ringbuf.ErrClosed) {
				return
			}
			if err != nil {
				p.log.Error().Err(err).Msg("reading refusal ring buffer")
				continue
			}
			r, err := decodeRefusal(rec.RawSample)
			if err != nil {
				p.log.Error().Err(err).Int(logfields.Count, len(rec.RawSample)).Msg("decoding refusal")
				continue
			}
			select {
			case out <- r:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// decodeRefusal reads one ring buffer record.
func decodeRefusal(raw []byte) (Refusal, error) {
	var e redirectRefusal
	if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &e); err != nil {
		return Refusal{}, err
	}
	r := Refusal{
		Kind:       RefusalKind(e.Kind),
		PID:        e.Who.Pid,
		TID:        e.Who.Tid,
		UID:        e.Who.Uid,
		GID:        e.Who.Gid,
		Comm:       commString(e.Who.Comm),
		CgroupID:   e.CgroupId,
		Cookie:     e.Cookie,
		Family:     int(e.Family),
		Type:       int(e.Type),
		Protocol:   int(e.Protocol),
		Level:      int(e.Level),
		Option:     int(e.Optname),
		BPFCmd:     int(e.BpfCmd),
		Ifindex:    e.Ifindex,
		LocalPort:  e.LocalPort,
		IPProto:    int(e.Proto),
		Suppressed: e.Suppressed,
	}
	if e.Addr != ([16]byte{}) || e.Port != 0 {
		r.Addr = netip.AddrPortFrom(netip.AddrFrom16(e.Addr).Unmap(), e.Port)
	}
	return r, nil
}
