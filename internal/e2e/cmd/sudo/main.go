//go:build linux

// Command sudo stands in for sudo(8) in the documentation's test, which runs the guides' commands
// as an unprivileged user inside namespaces of its own. The test installs it setuid root there, so
// that `sudo CMD` in a guide runs CMD as root the way sudo's defaults do: a fresh environment
// (env_reset: PATH is secure_path, HOME=/root, USER and LOGNAME root, SUDO_USER, SUDO_UID,
// SUDO_GID and SUDO_COMMAND naming the caller; only TERM, LANG and LC_* are kept), VAR=value words
// before the command added to it, and the command looked up in secure_path. It takes no options.
// Test code only: it asks for no password.
//
//	sudo [VAR=value…] COMMAND [ARG…]
package main

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// securePath is Debian's default secure_path.
const securePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "sudo:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) > 0 && strings.HasPrefix(args[0], "-") {
		return fmt.Errorf("%s: the docs' sudo takes no options", args[0])
	}
	uid, gid := os.Getuid(), os.Getgid()
	caller := strconv.Itoa(uid)
	if u, err := user.LookupId(caller); err == nil {
		caller = u.Username
	}
	env := []string{
		"PATH=" + securePath, "HOME=/root", "USER=root", "LOGNAME=root", "SHELL=/bin/bash",
		"SUDO_USER=" + caller, "SUDO_UID=" + strconv.Itoa(uid), "SUDO_GID=" + strconv.Itoa(gid),
	}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k == "TERM" || k == "LANG" || strings.HasPrefix(k, "LC_") {
			env = append(env, kv)
		}
	}
	for len(args) > 0 && isAssignment(args[0]) {
		env = append(env, args[0])
		args = args[1:]
	}
	if len(args) == 0 {
		return fmt.Errorf("usage: sudo [VAR=value…] COMMAND [ARG…]")
	}
	path, err := lookPath(args[0])
	if err != nil {
		return err
	}
	env = append(env, "SUDO_COMMAND="+strings.Join(append([]string{path}, args[1:]...), " "))
	if err := syscall.Setgroups([]int{0}); err != nil {
		return fmt.Errorf("setgroups: %w (is sudo setuid root?)", err)
	}
	if err := syscall.Setresgid(0, 0, 0); err != nil {
		return fmt.Errorf("setresgid: %w", err)
	}
	if err := syscall.Setresuid(0, 0, 0); err != nil {
		return fmt.Errorf("setresuid: %w", err)
	}
	return syscall.Exec(path, args, env)
}

// isAssignment reports whether word is VAR=value, as sudo reads the words before the command.
func isAssignment(word string) bool {
	name, _, ok := strings.Cut(word, "=")
	if !ok || name == "" {
		return false
	}
	for i, c := range name {
		if c != '_' && (c < 'A' || c > 'Z') && (c < 'a' || c > 'z') && (i == 0 || c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// lookPath finds name in secure_path, as sudo does (a name with a slash is used as it is).
func lookPath(name string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	for _, dir := range filepath.SplitList(securePath) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: command not found", name)
}
