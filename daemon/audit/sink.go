package audit

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/internal/logfields"
)

// Forwarding. Every line is written to the file first; only then does the writer goroutine hand it
// to each sink's bounded queue, without waiting. One sender goroutine per sink delivers the queue
// in order, reconnecting with backoff while the destination is down. A full queue drops the new
// record for that sink alone, counted; the file, the decision and the other sinks are unaffected.

// sinkDrainTimeout bounds how long Close waits for the sinks to deliver what they hold.
const sinkDrainTimeout = 5 * time.Second

// sinkDropLogEvery rate-limits the "dropping records" warning per sink.
const sinkDropLogEvery = 10 * time.Second

// sinkDownLogEvery repeats the "sink down" error while a sink stays down.
const sinkDownLogEvery = time.Minute

// sinkBatch bounds how many records one send carries.
const sinkBatch = 256

// errTooLarge marks a record that the transport can never carry (a datagram over its size limit):
// it is dropped and counted rather than retried.
var errTooLarge = errors.New("record too large for the transport")

// fwd is one line as the sinks get it: the line as written (no "\n") and the fields the journal
// indexes. It is shared by every sink and never changed.
type fwd struct {
	line       []byte
	seq        uint64
	id         string
	time       time.Time
	kind       Kind
	decisionID string
	outcome    string
	agentID    string
	sessionID  string
	host       string
	pid        int
	exe        string
	action     string
	mode       string
	logEvent   LogEvent
}

func newFwd(ev *Event, line []byte) fwd {
	f := fwd{line: line, seq: ev.Seq, id: ev.ID, time: ev.Time, kind: ev.Kind, decisionID: ev.DecisionID}
	if d := ev.Decision; d != nil {
		f.outcome = d.Outcome
	}
	if e := ev.Envelope; e != nil {
		f.agentID, f.sessionID, f.pid, f.exe = e.Agent.AgentID, e.Agent.SessionID, e.Agent.PID, e.Agent.Exe
		f.host, f.mode = e.Intent.Resource.Host, e.Transport.Mode
		if e.Intent.ActionClass != nil {
			f.action = *e.Intent.ActionClass
		}
	}
	if l := ev.Log; l != nil {
		f.logEvent = l.Event
		if f.agentID == "" {
			f.agentID = l.AgentID
		}
	}
	return f
}

// severity is the syslog severity of a record: a refusal or an abort is a warning, the rest info.
func (f *fwd) severity() int {
	switch f.outcome {
	case "DENY", "ABORT":
		return 4
	}
	if f.logEvent == LogSuppressed || f.logEvent == LogRecovered {
		return 4
	}
	return 6
}

// transport delivers records to one destination.
type transport interface {
	// send delivers recs in order and returns how many it delivered; on an error the rest were not
	// (errTooLarge: recs[n] never can be).
	send(recs []*fwd) (int, error)
	// close drops the connection; the next send makes a new one.
	close() error
}

// SinkStats is what one sink did since Open; the daemon exports it as metrics.
type SinkStats struct {
	Name    string
	Queued  int    // records waiting now
	Sent    uint64 // records handed to the destination
	Dropped uint64 // records this sink never sent: queue full, too large, or still queued at Close
	Retries uint64 // failed attempts, each followed by a reconnect after a backoff
	Up      bool   // false while the last attempt failed
	// LastError is the last failure, "" when none.
	LastError string
}

type sink struct {
	name string
	log  zerolog.Logger
	t    transport
	q    fwdQueue

	sent, dropped, retries atomic.Uint64
	down                   atomic.Bool
	lastErr                atomic.Pointer[string]

	// Owned by the writer goroutine: the drops not yet reported in the log.
	dropsUnlogged       uint64
	dropFirst, dropLast uint64
	lastDropLog         time.Time

	stop     chan struct{}
	done     chan struct{}
	deadline atomic.Int64 // unix nanos after which a stopping sender gives up
	now      func() time.Time

	backoffMin, backoffMax time.Duration
	// Owned by the sender goroutine.
	downSince, lastDownLog time.Time
	failures               int    // consecutive failed attempts
	unsentAtStop           uint64 // records still held when the drain deadline passed
}

func newSink(name string, queueSize int, t transport, log zerolog.Logger) *sink {
	s := &sink{
		name: name, t: t, log: log.With().Str(logfields.AuditSink, name).Logger(),
		stop: make(chan struct{}), done: make(chan struct{}), now: time.Now,
		backoffMin: sinkBackoffMin, backoffMax: sinkBackoffMax,
	}
	s.q.init(queueSize)
	return s
}

func (s *sink) stats() SinkStats {
	st := SinkStats{Name: s.name, Queued: s.q.len(), Sent: s.sent.Load(), Dropped: s.dropped.Load(),
		Retries: s.retries.Load(), Up: !s.down.Load()}
	if p := s.lastErr.Load(); p != nil {
		st.LastError = *p
	}
	return st
}

// enqueue hands recs to the sink without waiting; what does not fit is dropped and counted.
func (s *sink) enqueue(recs []*fwd) {
	n := s.q.push(recs)
	if n == len(recs) {
		return
	}
	lost := recs[n:]
	s.dropped.Add(uint64(len(lost)))
	if s.dropsUnlogged == 0 {
		s.dropFirst = lost[0].seq
	}
	s.dropsUnlogged += uint64(len(lost))
	s.dropLast = lost[len(lost)-1].seq
}

// report logs the drops not yet logged, at most once per sinkDropLogEvery unless force.
func (s *sink) report(now time.Time, force bool) {
	if s.dropsUnlogged == 0 || (!force && now.Sub(s.lastDropLog) < sinkDropLogEvery) {
		return
	}
	s.log.Warn().Uint64(logfields.AuditDropped, s.dropsUnlogged).Uint64(logfields.AuditDroppedTotal, s.dropped.Load()).
		Uint64(logfields.AuditFirstSeq, s.dropFirst).Uint64(logfields.AuditLastSeq, s.dropLast).
		Msg("audit sink queue full: records dropped for this sink (they are in the audit file)")
	s.dropsUnlogged, s.lastDropLog = 0, now
}

// run is the sender goroutine.
func (s *sink) run() {
	defer close(s.done)
	batch := make([]*fwd, 0, sinkBatch)
	for {
		batch = s.q.pop(batch[:0], sinkBatch)
		if len(batch) == 0 {
			select {
			case <-s.q.wake:
				continue
			case <-s.stop:
				if s.q.len() > 0 {
					continue
				}
				return
			}
		}
		for len(batch) > 0 {
			n, err := s.t.send(batch)
			s.sent.Add(uint64(n))
			batch = batch[n:]
			switch {
			case err == nil:
				s.up()
			case errors.Is(err, errTooLarge):
				s.dropped.Add(1)
				s.log.Error().Err(err).Uint64(logfields.AuditSeq, batch[0].seq).Int(logfields.AuditBytes, len(batch[0].line)).
					Msg("audit sink cannot carry this record: dropped for this sink (it is in the audit file)")
				batch = batch[1:]
			default:
				s.fail(err)
				if !s.wait() {
					s.giveUp(len(batch))
					return
				}
			}
		}
	}
}

func (s *sink) up() {
	if !s.down.Load() {
		return
	}
	s.down.Store(false)
	s.log.Warn().Int(logfields.AuditAttempts, s.failures).Dur(logfields.Duration, s.now().Sub(s.downSince)).
		Msg("audit sink delivering again")
	s.failures = 0
}

func (s *sink) fail(err error) {
	s.retries.Add(1)
	s.t.close()
	msg := err.Error()
	s.lastErr.Store(&msg)
	s.failures++
	now := s.now()
	if !s.down.Swap(true) {
		s.downSince, s.lastDownLog = now, now
		s.log.Error().Err(err).Msg("audit sink down: retrying with backoff; records queue meanwhile and are dropped for this sink when the queue is full")
		return
	}
	if now.Sub(s.lastDownLog) >= sinkDownLogEvery {
		s.lastDownLog = now
		s.log.Error().Err(err).Int(logfields.AuditAttempts, s.failures).Dur(logfields.Duration, now.Sub(s.downSince)).
			Int(logfields.AuditQueued, s.q.len()).Msg("audit sink still down")
	}
}

// wait sleeps the backoff for the current run of failures; false when the sink is stopping and its
// drain deadline has passed.
func (s *sink) wait() bool {
	d := min(s.backoffMin<<min(s.failures-1, 20), s.backoffMax)
	stop := s.stop
	select {
	case <-s.stop:
		left := time.Duration(s.deadline.Load() - s.now().UnixNano())
		if left <= 0 {
			return false
		}
		d, stop = min(d, left), nil // stopping: wait out the backoff, within the drain deadline
	default:
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-stop: // asked to stop while waiting: try once more at once
	}
	return true
}

// giveUp counts what is still held as dropped when the drain deadline passed.
func (s *sink) giveUp(inBatch int) {
	n := uint64(inBatch) + uint64(s.q.drop())
	s.dropped.Add(n)
	s.unsentAtStop = n
}

// shutdown stops the sender after it delivered what it holds, or at deadline.
func (s *sink) shutdown(deadline time.Time) error {
	s.deadline.Store(deadline.UnixNano())
	close(s.stop)
	t := time.NewTimer(time.Until(deadline) + 100*time.Millisecond)
	defer t.Stop()
	var err error
	select {
	case <-s.done:
	case <-t.C:
		// Stuck inside a send (a destination that accepts the connection but never reads): leave
		// the goroutine to its write deadline and count what it holds.
		n := uint64(s.q.drop())
		s.dropped.Add(n)
		s.unsentAtStop += n
		err = fmt.Errorf("audit sink %s: still sending at shutdown", s.name)
	}
	s.t.close()
	st := s.stats()
	ev := s.log.Info()
	if st.Dropped > 0 || s.unsentAtStop > 0 {
		ev = s.log.Warn()
	}
	ev.Uint64(logfields.AuditSent, st.Sent).Uint64(logfields.AuditDroppedTotal, st.Dropped).
		Uint64(logfields.AuditUnsent, s.unsentAtStop).Uint64(logfields.AuditRetries, st.Retries).Msg("audit sink closed")
	return err
}

// fwdQueue is a bounded FIFO of records: the writer goroutine pushes, the sender pops.
type fwdQueue struct {
	mu   sync.Mutex
	buf  []*fwd
	head int
	n    int
	wake chan struct{}
}

func (q *fwdQueue) init(size int) {
	q.buf = make([]*fwd, size)
	q.wake = make(chan struct{}, 1)
}

func (q *fwdQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}

// push appends what fits of recs and returns how many did.
func (q *fwdQueue) push(recs []*fwd) int {
	q.mu.Lock()
	k := min(len(recs), len(q.buf)-q.n)
	for i := range k {
		q.buf[(q.head+q.n+i)%len(q.buf)] = recs[i]
	}
	q.n += k
	q.mu.Unlock()
	if k > 0 {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
	return k
}

// pop appends up to max records to dst, oldest first.
func (q *fwdQueue) pop(dst []*fwd, max int) []*fwd {
	q.mu.Lock()
	defer q.mu.Unlock()
	k := min(max, q.n)
	for range k {
		dst = append(dst, q.buf[q.head])
		q.buf[q.head] = nil
		q.head = (q.head + 1) % len(q.buf)
	}
	q.n -= k
	return dst
}

// drop empties the queue and returns how many records it held.
func (q *fwdQueue) drop() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := q.n
	for q.n > 0 {
		q.buf[q.head] = nil
		q.head = (q.head + 1) % len(q.buf)
		q.n--
	}
	return n
}

// openSinks makes the configured sinks and starts their senders. Nothing is dialed yet: a
// destination that is down at start is retried like one that goes down later.
func openSinks(cfgs []SinkConfig, log zerolog.Logger, mk func(SinkConfig) (transport, error)) ([]*sink, error) {
	if mk == nil {
		mk = newTransport
	}
	var out []*sink
	for i, c := range cfgs {
		c = c.withDefaults()
		t, err := mk(c)
		if err != nil {
			for _, s := range out {
				s.shutdown(time.Now())
			}
			return nil, fmt.Errorf("audit.sinks[%d]: %w", i, err)
		}
		s := newSink(c.name(), c.QueueSize, t, log)
		if a, err := parseSinkAddr(c.Address); err == nil && (a.scheme == "udp" || a.scheme == "tcp") && !isLoopback(a.host) {
			s.log.Warn().Msg("audit sink sends records (hosts, paths, agents) in clear text over the network: use tcp+tls:// beyond this machine")
		}
		go s.run()
		out = append(out, s)
	}
	return out, nil
}

func newTransport(c SinkConfig) (transport, error) {
	if c.Type == SinkJournald {
		return newJournaldTransport(c), nil
	}
	return newSyslogTransport(c)
}

// isLoopback reports whether host is a loopback address or localhost.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
