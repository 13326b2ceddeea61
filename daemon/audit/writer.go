package audit

import (
	"bytes"
	"cmp"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/internal/logfields"
)

var (
	// ErrClosed is returned by Append and Healthy after Close.
	ErrClosed = errors.New("audit log closed")
	// ErrUnwritable wraps every failure to put a record on disk: the record is not in the log, and the
	// connection it describes must not proceed.
	ErrUnwritable = errors.New("audit log not writable")
	// ErrInvalid marks an event the writer refuses (no kind, or a kind reserved to the writer).
	ErrInvalid = errors.New("invalid audit event")
)

// maxBatch bounds how many records one write(2) carries.
const maxBatch = 512

// Writer appends events to the log. Append is safe for concurrent use; one goroutine owns the file.
type Writer struct {
	cfg    Config
	path   string
	log    zerolog.Logger
	signer crypto.Signer // nil: unsigned
	keyID  string

	// gate: Append and Rotate hold it shared while handing a request to the writer goroutine; Close
	// holds it exclusively to shut the door, so nothing is handed over after the final drain.
	gate   sync.RWMutex
	closed atomic.Bool

	reqs chan *request
	ctl  chan ctlRequest
	quit chan struct{}
	done chan struct{}

	writeErr atomic.Pointer[error] // the last write failed: set until a write succeeds
	syncErr  atomic.Pointer[error] // the last fsync failed: set until one succeeds
	closeErr error

	// The syncer's view of the live file. syncMu is held for an fsync, and by the writer goroutine
	// only to swap or close the file (rotation), never for a write.
	syncMu sync.Mutex
	syncF  *os.File
	dirty  atomic.Bool

	// Everything below is owned by the writer goroutine (by Open before it starts).
	f         *os.File // the live file; nil when it could not be (re)opened
	size      int64    // bytes of complete lines in f
	tailDirty bool     // a failed write may have left bytes after size that a truncate did not remove
	firstSeq  uint64   // seq of f's first line; 0 while it has none
	seq       uint64   // the last line on disk
	hash      string   // hashBody of that line
	meta      []*Event // KindLog records to write before the next records (an open record first)
	outage    *outage
	// rotateAfter holds size rotation back for a while after it failed (the old file is still
	// being written), so that a failing rename is not retried and logged on every write.
	rotateAfter time.Time
	buf         []byte
	arena       []byte

	sinks   []*sink       // forwarding, after the file: see sink.go
	drain   time.Duration // how long Close lets the sinks deliver
	limiter *limiter      // refusal records per agent and class: see limit.go
	now     func() time.Time
}

type request struct {
	ev  *Event
	p   pending
	err chan error
}

var requestPool = sync.Pool{New: func() any { return &request{err: make(chan error, 1)} }}

type ctlKind int

const (
	ctlFlush ctlKind = iota
	ctlRotate
)

type ctlRequest struct {
	kind ctlKind
	resp chan error
}

// outage is the state of a run of failed writes, for the "recovered" record that ends it.
type outage struct {
	since   time.Time
	err     string
	refused int64
}

// Open continues the chain from the files at cfg.FilePath (or starts one), cutting off and saving a
// torn last line left by a crash, and writes an open or resume record before returning: a log that
// cannot be written at start is an error.
func Open(cfg Config, log zerolog.Logger) (*Writer, error) {
	return open(cfg, log, openOptions{})
}

// openOptions are the seams tests use; the zero value is what Open does.
type openOptions struct {
	transport func(SinkConfig) (transport, error) // nil: the real transports
	now       func() time.Time                    // nil: time.Now
	drain     time.Duration                       // 0: sinkDrainTimeout
}

func open(cfg Config, log zerolog.Logger, o openOptions) (*Writer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	w := &Writer{
		cfg:  cfg,
		path: cfg.FilePath,
		log:  log,
		reqs: make(chan *request, maxBatch),
		ctl:  make(chan ctlRequest),
		quit: make(chan struct{}),
		done: make(chan struct{}),
		now:  o.now,
	}
	if w.now == nil {
		w.now = time.Now
	}
	w.drain = cmp.Or(o.drain, sinkDrainTimeout)
	w.limiter = newLimiter(float64(cfg.RefusalRate), cfg.RefusalBurst, cfg.RefusalWindow.Duration)
	if cfg.SigningKeyPath != "" {
		s, err := LoadSigningKey(cfg.SigningKeyPath)
		if err != nil {
			return nil, err
		}
		w.signer, w.keyID = s, KeyID(s.Public())
	} else {
		log.Warn().Str(logfields.File, w.path).Msg("audit log unsigned: no signing_key_path, lines are hash-chained but not signed")
	}
	if err := os.MkdirAll(filepath.Dir(w.path), 0o700); err != nil {
		return nil, fmt.Errorf("audit dir: %w", err)
	}
	sinks, err := openSinks(cfg.Sinks, log, o.transport)
	if err != nil {
		return nil, err
	}
	w.sinks = sinks
	fail := func(err error) (*Writer, error) {
		w.closeSinks(time.Now())
		return nil, err
	}
	if err := w.resume(); err != nil {
		return fail(err)
	}
	if err := w.writeBatch(nil); err != nil {
		w.closeFile()
		return fail(err)
	}
	go w.run()
	go w.syncer()
	log.Info().Str(logfields.File, w.path).Uint64(logfields.AuditSeq, w.seq).
		Bool(logfields.AuditSigned, w.signer != nil).Str(logfields.AuditKeyID, w.keyID).Msg("audit log open")
	return w, nil
}

// Append writes ev as the next line of the log. It fills ID (when empty), Time (when zero; made UTC),
// Seq, PrevHash and Sig, and returns once write(2) of the line has completed. An error wrapping
// ErrUnwritable means the record is not in the log. ev must not be changed until Append returns.
func (w *Writer) Append(ev *Event) error {
	if ev == nil {
		return fmt.Errorf("%w: nil", ErrInvalid)
	}
	if ev.Kind != KindDecision && ev.Kind != KindCompletion {
		return fmt.Errorf("%w: kind %q (want %q or %q)", ErrInvalid, ev.Kind, KindDecision, KindCompletion)
	}
	if ev.Log != nil {
		return fmt.Errorf("%w: log records are the writer's own", ErrInvalid)
	}
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	ev.Time = ev.Time.UTC()
	if ev.ID == "" {
		ev.ID = newID(ev.Time)
	}
	p, err := encodePending(ev)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	r := requestPool.Get().(*request)
	r.ev, r.p = ev, p
	w.gate.RLock()
	if w.closed.Load() {
		w.gate.RUnlock()
		requestPool.Put(r)
		return ErrClosed
	}
	w.reqs <- r
	w.gate.RUnlock()
	err = <-r.err
	r.ev, r.p = nil, pending{}
	requestPool.Put(r)
	return err
}

// Healthy is nil while records can be written, else why not (it wraps ErrUnwritable or is
// ErrClosed). The daemon denies new connections while it is non-nil; the writer keeps retrying in
// the background and Healthy turns nil again once a write succeeds.
func (w *Writer) Healthy() error {
	if w.closed.Load() {
		return ErrClosed
	}
	if p := w.writeErr.Load(); p != nil {
		return *p
	}
	if p := w.syncErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Rotate renames the live file aside and starts a new one whose open record chains to the old
// file's last line. The daemon calls it on SIGHUP/SIGUSR1.
func (w *Writer) Rotate() error { return w.control(ctlRotate) }

// Sync writes any pending log records and fsyncs the live file now.
func (w *Writer) Sync() error { return w.control(ctlFlush) }

func (w *Writer) control(k ctlKind) error {
	c := ctlRequest{kind: k, resp: make(chan error, 1)}
	w.gate.RLock()
	if w.closed.Load() {
		w.gate.RUnlock()
		return ErrClosed
	}
	w.ctl <- c
	w.gate.RUnlock()
	return <-c.resp
}

// Close writes the records already handed over, a close record, fsyncs and closes the file. Later
// Appends return ErrClosed.
func (w *Writer) Close() error {
	w.gate.Lock()
	if w.closed.Swap(true) {
		w.gate.Unlock()
		<-w.done
		return nil
	}
	w.gate.Unlock()
	close(w.quit)
	<-w.done
	return errors.Join(w.closeErr, w.closeSinks(time.Now().Add(w.drain)))
}

// closeSinks lets every sink deliver what it holds until deadline, then stops it.
func (w *Writer) closeSinks(deadline time.Time) error {
	var wg sync.WaitGroup
	errs := make([]error, len(w.sinks))
	for i, s := range w.sinks {
		s.report(time.Now(), true)
		wg.Go(func() { errs[i] = s.shutdown(deadline) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Stats is what the log's forwarding and refusal limiting did since Open.
type Stats struct {
	Sinks []SinkStats
	// Suppressed counts the records AppendLimited kept out of the log (each run of them is
	// summarised by a "suppressed" record).
	Suppressed uint64
}

// Stats reports the sinks' counters and the refusal limiter's; safe to call at any time.
func (w *Writer) Stats() Stats {
	st := Stats{Suppressed: w.limiter.total.Load()}
	for _, s := range w.sinks {
		st.Sinks = append(st.Sinks, s.stats())
	}
	return st
}

// run is the writer goroutine.
func (w *Writer) run() {
	defer close(w.done)
	tick := time.NewTicker(w.cfg.FsyncInterval.Duration)
	defer tick.Stop()
	batch := make([]*request, 0, maxBatch)
	for {
		select {
		case r := <-w.reqs:
			batch = w.collect(append(batch[:0], r))
			w.answer(batch, w.writeBatch(batch))
		case c := <-w.ctl:
			c.resp <- w.handle(c.kind)
		case <-tick.C:
			w.tick()
		case <-w.quit:
			w.shutdown(batch)
			return
		}
	}
}

// collect adds whatever else is already queued, up to maxBatch.
func (w *Writer) collect(batch []*request) []*request {
	for len(batch) < maxBatch {
		select {
		case r := <-w.reqs:
			batch = append(batch, r)
		default:
			return batch
		}
	}
	return batch
}

func (w *Writer) answer(batch []*request, err error) {
	for _, r := range batch {
		r.err <- err
	}
}

func (w *Writer) handle(k ctlKind) error {
	if k == ctlRotate {
		if err := w.rotate("rotated (signal)"); err != nil {
			w.log.Error().Err(err).Str(logfields.File, w.path).Msg("audit log rotation failed")
			if w.f != nil {
				return err // still writing the old file
			}
		}
	}
	if err := w.writeBatch(nil); err != nil {
		return err
	}
	w.syncNow()
	if p := w.syncErr.Load(); p != nil {
		return *p
	}
	return nil
}

// tick runs every fsync interval in the writer goroutine: it notices a live file that was moved,
// removed or written by someone else, and retries writing while the log is failing, so that health
// comes back without waiting for traffic.
func (w *Writer) tick() {
	if w.f != nil && !w.tailDirty {
		w.checkFile()
	}
	now := w.now()
	for _, s := range w.sinks {
		s.report(now, false)
	}
	w.queueSummaries(now, false)
	if w.outage != nil || w.f == nil || len(w.meta) > 0 {
		w.writeBatch(nil)
	}
}

// checkFile compares the open file with what is at the path.
func (w *Writer) checkFile() {
	fi, err := w.f.Stat()
	if err != nil {
		return
	}
	pi, err := os.Stat(w.path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return // cannot tell; the next tick looks again
	}
	if err != nil || !os.SameFile(fi, pi) {
		w.log.Error().Str(logfields.File, w.path).Msg("audit file was moved or removed by someone else; starting a new file that continues the chain")
		w.closeFile()
		w.queueOpen("reopened (file moved or removed)", "")
		return
	}
	if fi.Size() != w.size {
		w.log.Error().Str(logfields.File, w.path).Int64(logfields.AuditBytes, fi.Size()-w.size).
			Msg("audit file was changed by another writer; rotating it aside")
		if err := w.rotate("rotated (file changed by another writer)"); err != nil {
			w.log.Error().Err(err).Str(logfields.File, w.path).Msg("audit log rotation failed")
		}
	}
}

func (w *Writer) shutdown(batch []*request) {
	// The gate is shut: nothing more can be queued, so what is queued now is all there will be.
	for len(w.reqs) > 0 {
		batch = w.collect(append(batch[:0], <-w.reqs))
		w.answer(batch, w.writeBatch(batch))
	}
	w.queueSummaries(w.now(), true)
	w.meta = append(w.meta, w.logEvent(&LogRecord{Event: LogClose}))
	err := w.writeBatch(nil)
	if w.f != nil {
		err = errors.Join(err, w.closeFile())
	}
	w.closeErr = err
	closed := error(ErrClosed)
	w.writeErr.Store(&closed)
	w.log.Info().Str(logfields.File, w.path).Uint64(logfields.AuditSeq, w.seq).Str(logfields.AuditHash, w.hash).Msg("audit log closed")
}

// writeBatch writes the queued log records and then batch's records with one write(2). On failure
// no record of this call is left in the file and every one of them gets the error.
func (w *Writer) writeBatch(batch []*request) error {
	err := w.prepare()
	if err == nil {
		err = w.write(batch)
	}
	if err != nil {
		err = fmt.Errorf("%w: %s: %w", ErrUnwritable, w.path, err)
		if w.outage == nil {
			w.outage = &outage{since: time.Now().UTC(), err: err.Error()}
			w.log.Error().Err(err).Str(logfields.File, w.path).Msg("audit log not writable: new connections are denied until it is")
		}
		w.outage.refused += int64(len(batch))
		w.writeErr.Store(&err)
		return err
	}
	if w.outage != nil {
		w.log.Warn().Str(logfields.File, w.path).Int64(logfields.AuditRefused, w.outage.refused).
			Time("since", w.outage.since).Msg("audit log writable again")
		w.outage = nil
	}
	w.writeErr.Store(nil)
	return nil
}

// prepare makes sure there is a live file with nothing after its last complete line, rotating it
// first when it has reached max_size_bytes.
func (w *Writer) prepare() error {
	if w.f == nil {
		if err := w.openLive(); err != nil {
			return err
		}
	}
	if w.tailDirty {
		if err := w.f.Truncate(w.size); err != nil {
			return fmt.Errorf("cutting off a partial write: %w", err)
		}
		w.tailDirty = false
	}
	if w.size >= w.cfg.MaxSizeBytes && !time.Now().Before(w.rotateAfter) {
		if err := w.rotate("rotated (size)"); err != nil {
			w.log.Error().Err(err).Str(logfields.File, w.path).Msg("audit log rotation failed")
			if w.f == nil {
				return err
			}
			w.rotateAfter = time.Now().Add(time.Minute)
		}
	}
	return nil
}

// write chains, signs and writes the queued log records and batch.
func (w *Writer) write(batch []*request) error {
	n := len(w.meta) + len(batch)
	if w.outage != nil {
		n++
	}
	if n == 0 {
		return nil
	}
	ps := make([]*pending, 0, n)
	metas := w.meta
	if w.outage != nil {
		since := w.outage.since
		metas = append(metas[:len(metas):len(metas)], w.logEvent(&LogRecord{
			Event: LogRecovered, Since: &since, Refused: w.outage.refused, Error: w.outage.err,
		}))
	}
	for _, ev := range metas {
		p, err := encodePending(ev)
		if err != nil {
			return err
		}
		ps = append(ps, &p)
	}
	for _, r := range batch {
		ps = append(ps, &r.p)
	}

	// Chain in order.
	bodies := make([][]byte, n)
	prevs := make([]string, n)
	seq, prev := w.seq, w.hash
	arena := w.arena[:0]
	for i, p := range ps {
		seq++
		start := len(arena)
		arena = p.appendBody(arena, seq, prev)
		bodies[i] = arena[start:len(arena):len(arena)]
		prevs[i] = prev
		prev = hashBody(bodies[i])
	}
	w.arena = arena

	sigs := make([]string, n)
	if w.signer != nil {
		if err := w.sign(bodies, sigs); err != nil {
			return err
		}
	}
	buf := w.buf[:0]
	var ends []int
	if len(w.sinks) > 0 {
		ends = make([]int, n)
	}
	for i := range bodies {
		buf = appendLine(buf, bodies[i], sigs[i])
		if ends != nil {
			ends[i] = len(buf) - 1
		}
	}
	w.buf = buf

	if _, err := w.f.Write(buf); err != nil {
		if terr := w.f.Truncate(w.size); terr != nil {
			w.tailDirty = true
			return errors.Join(err, fmt.Errorf("cutting off the partial write: %w", terr))
		}
		return err
	}
	w.dirty.Store(true)
	if w.firstSeq == 0 {
		w.firstSeq = w.seq + 1
	}
	w.size += int64(len(buf))
	w.seq, w.hash = seq, prev
	w.meta = w.meta[:0]
	off := n - len(batch)
	for i, r := range batch {
		r.ev.Seq = w.seq - uint64(len(batch)-1-i)
		r.ev.PrevHash = prevs[off+i]
		r.ev.Sig = sigs[off+i]
	}
	if ends != nil {
		w.forward(buf, ends, metas, batch)
	}
	return nil
}

// forward hands the lines just written (buf, each ending at ends[i]) to every sink. It copies them
// once: the sinks keep them after buf is reused.
func (w *Writer) forward(buf []byte, ends []int, metas []*Event, batch []*request) {
	own := bytes.Clone(buf)
	fs := make([]fwd, len(ends))
	ptrs := make([]*fwd, len(ends))
	start := 0
	for i, end := range ends {
		var ev *Event
		if i < len(metas) {
			ev = metas[i]
			ev.Seq = w.seq - uint64(len(ends)-1-i)
		} else {
			ev = batch[i-len(metas)].ev
		}
		fs[i] = newFwd(ev, own[start:end:end])
		ptrs[i] = &fs[i]
		start = end + 1
	}
	for _, s := range w.sinks {
		s.enqueue(ptrs)
	}
}

// sign fills sigs, spreading the work over the CPUs for a large batch.
func (w *Writer) sign(bodies [][]byte, sigs []string) error {
	// An *ecdsa.PrivateKey signs deterministically (RFC 6979, random nil): the same standard ECDSA
	// signature that any verifier accepts, without the hedged signer's SHA-512 DRBG, which cost a
	// fifth of the signing time. Another crypto.Signer gets the system's randomness.
	random := io.Reader(rand.Reader)
	if _, ok := w.signer.(*ecdsa.PrivateKey); ok {
		random = nil
	}
	one := func(i int) error {
		sum := sha256.Sum256(bodies[i])
		der, err := w.signer.Sign(random, sum[:], crypto.SHA256)
		if err != nil {
			return fmt.Errorf("signing: %w", err)
		}
		sigs[i] = base64.StdEncoding.EncodeToString(der)
		return nil
	}
	workers := min(runtime.GOMAXPROCS(0), len(bodies)/4)
	if workers < 2 {
		for i := range bodies {
			if err := one(i); err != nil {
				return err
			}
		}
		return nil
	}
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for k := range workers {
		wg.Go(func() {
			for i := k; i < len(bodies); i += workers {
				if err := one(i); err != nil {
					errs[k] = err
					return
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (w *Writer) logEvent(r *LogRecord) *Event {
	now := time.Now().UTC()
	if r.Event == LogOpen || r.Event == LogResume {
		r.KeyID = w.keyID
	}
	return &Event{ID: newID(now), Time: now, Kind: KindLog, Log: r}
}

// queueOpen makes an open record the first thing the next write puts in the (new) file.
func (w *Writer) queueOpen(reason, previous string) {
	open := w.logEvent(&LogRecord{Event: LogOpen, Reason: reason, PreviousFile: previous})
	meta := []*Event{open}
	for _, m := range w.meta {
		if m.Log.Event != LogOpen && m.Log.Event != LogResume {
			meta = append(meta, m)
		}
	}
	w.meta = meta
}

// resume finds where the chain stands on disk and opens the live file. Only Open calls it.
func (w *Writer) resume() error {
	w.hash = GenesisHash
	var torn *LogRecord
	fi, err := os.Stat(w.path)
	switch {
	case err == nil && fi.Size() > 0:
		end, err := scanEnd(w.path)
		if err != nil {
			return fmt.Errorf("resuming audit log: %w", err)
		}
		if end.size > end.good {
			torn, err = w.cutTorn(end)
			if err != nil {
				return err
			}
		}
		if end.last != nil {
			first, err := firstLine(w.path)
			if err != nil {
				return fmt.Errorf("resuming audit log: %w", err)
			}
			w.firstSeq, w.size = first.seq, end.good
			w.seq, w.hash = end.last.seq, end.last.hash
			r := &LogRecord{Event: LogResume, Reason: "restart"}
			if torn != nil {
				r.TornBytes, r.TornSavedTo = torn.TornBytes, torn.TornSavedTo
			}
			w.meta = append(w.meta, w.logEvent(r))
			return w.openLive()
		}
	case err == nil || errors.Is(err, os.ErrNotExist):
	default:
		return fmt.Errorf("resuming audit log: %w", err)
	}

	// No line in the live file: continue from the newest rotated file, or start a chain.
	rotated, err := listRotated(w.path)
	if err != nil {
		return err
	}
	reason, previous := "new chain", ""
	if len(rotated) > 0 {
		last := rotated[len(rotated)-1]
		end, err := scanEnd(last)
		if err != nil {
			return fmt.Errorf("resuming audit log: %w", err)
		}
		if end.last == nil || end.size != end.good {
			return fmt.Errorf("resuming audit log: rotated file %s does not end with a complete record; check it with firma audit verify", last)
		}
		w.seq, w.hash = end.last.seq, end.last.hash
		reason, previous = "restart", filepath.Base(last)
	}
	w.queueOpen(reason, previous)
	if torn != nil {
		w.meta[0].Log.TornBytes, w.meta[0].Log.TornSavedTo = torn.TornBytes, torn.TornSavedTo
	}
	return w.openLive()
}

// cutTorn saves the incomplete tail a crash left after the last complete line beside the file and
// truncates the file to that line.
func (w *Writer) cutTorn(end fileEnd) (*LogRecord, error) {
	f, err := os.OpenFile(w.path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("repairing audit log: %w", err)
	}
	defer f.Close()
	tail := make([]byte, end.size-end.good)
	if _, err := f.ReadAt(tail, end.good); err != nil {
		return nil, fmt.Errorf("repairing audit log: reading torn tail: %w", err)
	}
	saved := fmt.Sprintf("%s%s%d", w.path, tornSuffix, time.Now().UnixNano())
	if err := writeFileSync(saved, tail); err != nil {
		return nil, fmt.Errorf("repairing audit log: saving torn tail: %w", err)
	}
	if err := f.Truncate(end.good); err != nil {
		return nil, fmt.Errorf("repairing audit log: %w", err)
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("repairing audit log: %w", err)
	}
	w.log.Warn().Str(logfields.File, w.path).Int64(logfields.AuditBytes, int64(len(tail))).
		Str(logfields.AuditSavedTo, saved).Msg("audit log ended with an incomplete line (crash or power loss); cut it off and saved it")
	return &LogRecord{TornBytes: int64(len(tail)), TornSavedTo: filepath.Base(saved)}, nil
}

func writeFileSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close(), syncDir(filepath.Dir(path)))
}

// openLive opens (or creates) the live file. An existing non-empty file must end with the line the
// chain stands at: the writer never chains over lines it did not write.
func (w *Writer) openLive() error {
	f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	switch size := fi.Size(); {
	case size == 0:
		w.firstSeq = 0
		if len(w.meta) == 0 || w.meta[0].Log.Event != LogOpen {
			w.queueOpen("reopened (file moved or removed)", "")
		}
	case size == w.size && w.firstSeq != 0:
		// The file this writer has been writing (reopened after a failed rename).
	default:
		end, err := scanEnd(w.path)
		if err == nil && (end.last == nil || end.last.hash != w.hash || end.good != end.size) {
			err = fmt.Errorf("%s holds lines that do not end at seq %d of this chain; move it aside", w.path, w.seq)
		}
		var first *lineInfo
		if err == nil {
			first, err = firstLine(w.path)
		}
		if err != nil {
			f.Close()
			return err
		}
		w.firstSeq = first.seq
	}
	w.size = fi.Size()
	if err := syncDir(filepath.Dir(w.path)); err != nil {
		f.Close()
		return err
	}
	w.f = f
	w.syncMu.Lock()
	w.syncF = f
	w.syncMu.Unlock()
	return nil
}

// closeFile fsyncs and closes the live file.
func (w *Writer) closeFile() error {
	w.syncMu.Lock()
	defer w.syncMu.Unlock()
	f := w.f
	w.f, w.syncF = nil, nil
	if f == nil {
		return nil
	}
	err := f.Sync()
	if err != nil {
		w.setSyncErr(err)
	}
	return errors.Join(err, f.Close())
}

// rotate renames the live file to its rotated name and opens a new live file whose open record
// (queued, written by the next write) chains to the old file's last line.
func (w *Writer) rotate(reason string) error {
	if w.f == nil || w.firstSeq == 0 {
		return nil // nothing written to this file yet
	}
	if err := w.closeFile(); err != nil {
		w.log.Error().Err(err).Str(logfields.File, w.path).Msg("audit fsync before rotation failed")
	}
	dst := rotatedName(w.path, w.firstSeq)
	if _, err := os.Lstat(dst); err == nil {
		return errors.Join(fmt.Errorf("rotating %s: %s exists", w.path, dst), w.openLive())
	}
	if err := os.Rename(w.path, dst); err != nil {
		return errors.Join(fmt.Errorf("rotating %s: %w", w.path, err), w.openLive())
	}
	w.firstSeq, w.size, w.tailDirty = 0, 0, false
	w.queueOpen(reason, filepath.Base(dst))
	err := w.openLive()
	if err != nil {
		err = fmt.Errorf("rotating %s: new live file: %w", w.path, err)
	}
	w.log.Info().Str(logfields.File, w.path).Str(logfields.AuditRotatedTo, dst).
		Uint64(logfields.AuditSeq, w.seq).Str(logfields.AuditHash, w.hash).Msg("audit log rotated")
	w.retain()
	return err
}

// retain deletes the oldest rotated files beyond max_files.
func (w *Writer) retain() {
	if w.cfg.MaxFiles <= 0 {
		return
	}
	rotated, err := listRotated(w.path)
	if err != nil {
		w.log.Error().Err(err).Msg("audit retention")
		return
	}
	for _, old := range rotated[:max(0, len(rotated)+1-w.cfg.MaxFiles)] {
		if err := os.Remove(old); err != nil {
			w.log.Error().Err(err).Str(logfields.File, old).Msg("audit retention: removing old file")
			continue
		}
		w.log.Info().Str(logfields.File, old).Msg("audit retention: removed old file")
	}
}

// syncer fsyncs the live file every fsync interval when something was written since the last one.
func (w *Writer) syncer() {
	tick := time.NewTicker(w.cfg.FsyncInterval.Duration)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			if w.dirty.Load() {
				w.syncNow()
			}
		case <-w.quit:
			return
		}
	}
}

func (w *Writer) syncNow() {
	w.syncMu.Lock()
	defer w.syncMu.Unlock()
	if w.syncF == nil {
		return
	}
	w.dirty.Store(false)
	if err := w.syncF.Sync(); err != nil {
		w.dirty.Store(true)
		w.setSyncErr(err)
		return
	}
	if w.syncErr.Swap(nil) != nil {
		w.log.Warn().Str(logfields.File, w.path).Msg("audit fsync succeeds again")
	}
}

func (w *Writer) setSyncErr(err error) {
	err = fmt.Errorf("%w: fsync %s: %w", ErrUnwritable, w.path, err)
	if w.syncErr.Swap(&err) == nil {
		w.log.Error().Err(err).Str(logfields.File, w.path).
			Msg("audit fsync failed: lines written since the last fsync may not survive a power failure; new connections are denied")
	}
}
