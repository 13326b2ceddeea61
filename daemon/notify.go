package daemon

import (
	"context"
	"time"

	sdd "github.com/coreos/go-systemd/v22/daemon"
	"github.com/rs/zerolog"
)

// Notifier reports the sidecar's state to systemd (Type=notify). Without NOTIFY_SOCKET — systemd is
// not supervising, or not running at all — every call is a no-op.
type Notifier struct {
	log zerolog.Logger
}

func NewNotifier(log zerolog.Logger) *Notifier { return &Notifier{log: log} }

// Ready sends READY=1 with a STATUS= line. Call it only once programs are attached and listeners up.
func (n *Notifier) Ready(status string) {
	n.send(sdd.SdNotifyReady + "\nSTATUS=" + status)
}

// Status updates the STATUS= line.
func (n *Notifier) Status(status string) { n.send("STATUS=" + status) }

// Stopping sends STOPPING=1.
func (n *Notifier) Stopping() { n.send(sdd.SdNotifyStopping + "\nSTATUS=draining") }

// Watchdog pings WATCHDOG=1 at half the interval systemd asked for (WatchdogSec=) while healthy
// reports nil, until ctx ends. A sidecar that stops being healthy stops pinging, and systemd
// restarts it.
func (n *Notifier) Watchdog(ctx context.Context, healthy func() error) {
	interval, err := sdd.SdWatchdogEnabled(false)
	if err != nil || interval == 0 {
		return
	}
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := healthy(); err != nil {
				n.log.Error().Err(err).Msg("unhealthy: withholding watchdog ping")
				n.Status("unhealthy: " + err.Error())
				continue
			}
			n.send(sdd.SdNotifyWatchdog)
		}
	}
}

func (n *Notifier) send(state string) {
	if _, err := sdd.SdNotify(false, state); err != nil {
		n.log.Warn().Err(err).Msg("sd_notify failed")
	}
}
