package policies

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/openfirma/firma/internal/logfields"
)

// reloadDelay coalesces the burst of events one save makes (editors write, rename, chmod).
const reloadDelay = 150 * time.Millisecond

// Watch reloads whenever a .cedar file in the policy dir, the mapping rules file or the schema file
// changes, until ctx is done (then it returns nil). It watches directories rather than files, so
// editors that save by renaming a new file into place are seen too. A failed reload keeps the last
// good set (see Reload); Watch goes on watching. With nothing on disk to watch (all embedded) it
// just waits for ctx. The daemon wires SIGHUP to Reload itself.
func (e *Engine) Watch(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching policy files: %w", err)
	}
	defer w.Close()

	relevant, dirs := e.watchTargets()
	for _, dir := range dirs {
		if err := w.Add(dir); err != nil {
			return fmt.Errorf("watching %s: %w", dir, err)
		}
	}
	var timer *time.Timer
	var fire <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if !relevant(ev.Name) || ev.Op == fsnotify.Chmod {
				continue
			}
			if timer == nil {
				timer = time.NewTimer(reloadDelay)
			} else {
				timer.Reset(reloadDelay)
			}
			fire = timer.C
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			e.log.Warn().Err(err).Msg("policy file watcher")
		case <-fire:
			fire = nil
			// Reload logs its own outcome; a bad edit keeps the last good set.
			_ = e.Reload()
		}
	}
}

// watchTargets returns a filter for changed paths and the directories to watch.
func (e *Engine) watchTargets() (func(string) bool, []string) {
	var dirs []string
	files := map[string]bool{}
	addDir := func(d string) {
		for _, have := range dirs {
			if have == d {
				return
			}
		}
		dirs = append(dirs, d)
	}
	policyDir := ""
	if e.cfg.Dir != "" {
		policyDir = filepath.Clean(e.cfg.Dir)
		addDir(policyDir)
	}
	for _, f := range []string{e.cfg.Schema, e.mapping.RulesPath} {
		if f != "" {
			files[filepath.Clean(f)] = true
			addDir(filepath.Dir(filepath.Clean(f)))
		}
	}
	e.log.Debug().Strs(logfields.Dir, dirs).Msg("watching policy files")
	return func(name string) bool {
		name = filepath.Clean(name)
		if files[name] {
			return true
		}
		return policyDir != "" && filepath.Dir(name) == policyDir && strings.HasSuffix(name, ".cedar")
	}, dirs
}
