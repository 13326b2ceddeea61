// Package testutil holds firma's shared test helpers: privilege gating, cgroups, network namespaces,
// a test CA generated at runtime, and fake upstreams that count what reaches them. Test code only.
package testutil
