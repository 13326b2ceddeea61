// Package docs holds firma's user documentation (Markdown, beside this file) and the test that
// keeps it true: docs_test.go clones the repository, and runs the README's and the guides' command
// blocks exactly as written, as a user would type them, against fake upstreams.
//
// The convention the test relies on: a fenced block tagged `sh` runs, in order, in the guide's
// shell (exported variables and the working directory carry over from one block to the next) and
// must succeed; `sh terminal=NAME ready="TEXT"` is a command that keeps running in a terminal of
// its own (a sidecar, an authority) — the test starts it in the background, restarting whatever
// ran in that terminal before, and waits until its output shows TEXT. Blocks tagged anything else
// (`shell`, `console`, `toml`, `text`…) are shown, never run: examples for systems the test cannot
// stand in for (systemd, journald), files to read, output to expect.
//
// The package has no code: nothing may import it.
package docs
