package cgroup

import (
	"fmt"
	"path"
	"strings"
)

// SlicePath turns a cgroup path whose leading elements are systemd slices into the path systemd
// actually uses: a dash in a slice name is nesting, so "firma-agents.slice" lives at
// "/firma.slice/firma-agents.slice" and a service with Slice=firma-agents.slice at
// "/firma.slice/firma-agents.slice/x.service". A path that already spells out the nesting is left as
// it is. The result is canonical (Clean). firma uses the same path when systemd is absent, so
// configuration means the same cgroup on every host.
func SlicePath(p string) (string, error) {
	cg, err := Clean(p)
	if err != nil || cg == "/" {
		return cg, err
	}
	elems := strings.Split(cg[1:], "/")
	run := 0
	for run < len(elems) && strings.HasSuffix(elems[run], ".slice") {
		run++
	}
	if run == 0 {
		return cg, nil
	}
	want, err := sliceChain(elems[run-1])
	if err != nil {
		return "", fmt.Errorf("cgroup %q: %w", p, err)
	}
	switch {
	case run == 1:
	case run == len(want) && strings.Join(elems[:run], "/") == strings.Join(want, "/"):
	default:
		return "", fmt.Errorf("cgroup %q: slices %s do not nest as systemd nests %s (%s)",
			p, strings.Join(elems[:run], "/"), elems[run-1], strings.Join(want, "/"))
	}
	return "/" + strings.Join(append(want, elems[run:]...), "/"), nil
}

// sliceChain is the chain of slices systemd creates for one slice name: a-b-c.slice is
// a.slice/a-b.slice/a-b-c.slice. "-.slice" is the root slice.
func sliceChain(name string) ([]string, error) {
	if name == "-.slice" {
		return nil, nil
	}
	base := strings.TrimSuffix(name, ".slice")
	if base == "" || strings.HasPrefix(base, "-") || strings.HasSuffix(base, "-") || strings.Contains(base, "--") {
		return nil, fmt.Errorf("%q is not a valid slice name", name)
	}
	parts := strings.Split(base, "-")
	chain := make([]string, len(parts))
	for i := range parts {
		chain[i] = strings.Join(parts[:i+1], "-") + ".slice"
	}
	return chain, nil
}

// Clean is the canonical form of a cgroup path relative to the cgroup2 mount: a leading slash, no
// trailing slash. It refuses "..", "." and empty elements.
func Clean(p string) (string, error) {
	trimmed := strings.Trim(p, "/")
	if trimmed == "" {
		return "/", nil
	}
	for _, el := range strings.Split(trimmed, "/") {
		if el == "" || el == "." || el == ".." {
			return "", fmt.Errorf("cgroup path %q has an empty, . or .. element", p)
		}
	}
	return path.Clean("/" + trimmed), nil
}

// Under reports whether cgroup child lies strictly below parent (both canonical).
func Under(child, parent string) bool {
	if parent == "/" {
		return child != "/"
	}
	return strings.HasPrefix(child, parent+"/")
}

// Canonical is SlicePath for a path that has already been validated: an invalid one falls back to
// plain cleaning (a leading slash, no trailing slash).
func Canonical(p string) string {
	if cg, err := SlicePath(p); err == nil {
		return cg
	}
	return path.Clean("/" + strings.Trim(p, "/"))
}

// ValidRelative accepts a relative cgroup path without "..", other than the root, whose slices nest
// as systemd nests them.
func ValidRelative(p string) bool {
	if strings.Trim(p, "/") == "" {
		return false
	}
	_, err := SlicePath(p)
	return err == nil
}
