package mitm

import (
	"errors"
	"fmt"
	"strings"

	"github.com/openfirma/firma/internal/hostname"
	"github.com/openfirma/firma/policies"
)

// Host patterns and normalization are the policy layer's (policies.ParseHostPattern,
// hostname.Normalize), so that intercept, bypass and strict lists match exactly as mapping rules
// do: an exact name or IP literal, "*." and a name matching exactly one more label, or "*".

// HostList is a parsed intercept_hosts, bypass_hosts or strict_hosts list.
type HostList []policies.HostPattern

// ParseHostList parses every entry; the error names each bad entry by key and index.
func ParseHostList(key string, entries []string) (HostList, error) {
	var (
		l    HostList
		errs []error
	)
	for i, e := range entries {
		p, err := policies.ParseHostPattern(strings.TrimSpace(e))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s[%d]: %w", key, i, err))
			continue
		}
		l = append(l, p)
	}
	return l, errors.Join(errs...)
}

// Match reports whether any pattern matches host (in any case, with or without a trailing dot).
func (l HostList) Match(host string) bool {
	h := hostname.Normalize(host)
	for _, p := range l {
		if p.Match(h) {
			return true
		}
	}
	return false
}
