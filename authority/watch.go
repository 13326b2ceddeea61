package authority

import (
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/rs/zerolog"
)

// watchDebounce collapses the burst of events one save makes (truncate, write, chmod, or the
// create+rename of an atomic replace) into one reload.
const watchDebounce = 75 * time.Millisecond

// fileWatcher runs callbacks when watched files change. One inotify instance serves any number of
// files: it watches their parent directories (refcounted), so that editors and tools that replace
// a file by rename are seen, and so that a file may be created after it is watched.
type fileWatcher struct {
	w   *fsnotify.Watcher
	log zerolog.Logger

	mu      sync.Mutex
	subs    map[*watchSub]struct{}
	dirRefs map[string]int
	closed  bool
	done    chan struct{}
	wg      sync.WaitGroup
}

type watchSub struct {
	path  string // absolute
	isDir bool   // match anything directly inside path
	fn    func()

	mu    sync.Mutex // serializes fn
	timer *time.Timer
}

func newFileWatcher(log zerolog.Logger) (*fileWatcher, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	fw := &fileWatcher{
		w:       w,
		log:     log,
		subs:    map[*watchSub]struct{}{},
		dirRefs: map[string]int{},
		done:    make(chan struct{}),
	}
	fw.wg.Add(1)
	go fw.loop()
	return fw, nil
}

// watch calls fn (debounced, never concurrently with itself) after a change to path — a file, or,
// if path is a directory when watch is called, any entry directly inside it. cancel stops it.
func (fw *fileWatcher) watch(path string, fn func()) (cancel func(), err error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	sub := &watchSub{path: abs, fn: fn}
	dir := filepath.Dir(abs)
	if fi, err := os.Stat(abs); err == nil && fi.IsDir() {
		sub.isDir = true
		dir = abs
	}
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.closed {
		return nil, os.ErrClosed
	}
	if fw.dirRefs[dir] == 0 {
		if err := fw.w.Add(dir); err != nil {
			return nil, err
		}
	}
	fw.dirRefs[dir]++
	fw.subs[sub] = struct{}{}
	var once sync.Once
	return func() {
		once.Do(func() {
			fw.mu.Lock()
			if _, ok := fw.subs[sub]; ok {
				delete(fw.subs, sub)
				if fw.dirRefs[dir]--; fw.dirRefs[dir] == 0 {
					delete(fw.dirRefs, dir)
					if !fw.closed {
						fw.w.Remove(dir)
					}
				}
			}
			fw.mu.Unlock()
			sub.mu.Lock()
			if sub.timer != nil {
				sub.timer.Stop()
			}
			sub.fn = nil
			sub.mu.Unlock()
		})
	}, nil
}

func (fw *fileWatcher) loop() {
	defer fw.wg.Done()
	for {
		select {
		case ev, ok := <-fw.w.Events:
			if !ok {
				return
			}
			fw.mu.Lock()
			for sub := range fw.subs {
				if sub.path == ev.Name || sub.isDir && (filepath.Dir(ev.Name) == sub.path || ev.Name == sub.path) {
					fw.kick(sub)
				}
			}
			fw.mu.Unlock()
		case err, ok := <-fw.w.Errors:
			if !ok {
				return
			}
			// An overflow loses events: reload everything rather than miss a change.
			fw.log.Warn().Err(err).Msg("file watch error; reloading everything watched")
			fw.mu.Lock()
			for sub := range fw.subs {
				fw.kick(sub)
			}
			fw.mu.Unlock()
		case <-fw.done:
			return
		}
	}
}

// kick (re)arms sub's debounce timer. Called with fw.mu held.
func (fw *fileWatcher) kick(sub *watchSub) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if sub.timer != nil {
		sub.timer.Reset(watchDebounce)
		return
	}
	sub.timer = time.AfterFunc(watchDebounce, func() {
		sub.mu.Lock()
		defer sub.mu.Unlock()
		if sub.fn != nil {
			sub.fn()
		}
	})
}

// Close stops all watches. Callbacks already running finish; no new ones start.
func (fw *fileWatcher) Close() error {
	fw.mu.Lock()
	if fw.closed {
		fw.mu.Unlock()
		return nil
	}
	fw.closed = true
	subs := fw.subs
	fw.subs = map[*watchSub]struct{}{}
	fw.mu.Unlock()
	for sub := range subs {
		sub.mu.Lock()
		if sub.timer != nil {
			sub.timer.Stop()
		}
		sub.fn = nil
		sub.mu.Unlock()
	}
	close(fw.done)
	err := fw.w.Close()
	fw.wg.Wait()
	return err
}

// watchPaths is a fileWatcher of its own for a fixed set of paths, all calling fn.
func watchPaths(log zerolog.Logger, paths []string, fn func()) (stop func() error, err error) {
	fw, err := newFileWatcher(log)
	if err != nil {
		return nil, err
	}
	for _, p := range paths {
		if _, err := fw.watch(p, fn); err != nil {
			fw.Close()
			return nil, err
		}
	}
	return fw.Close, nil
}
