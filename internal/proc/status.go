// Package proc reads what firma needs of /proc.
package proc

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// StatusFields reads the named fields of /proc/<pid>/status ("self" for this process), each value
// trimmed; a field the file lacks is absent from the map.
func StatusFields(pid string, fields ...string) (map[string]string, error) {
	f, err := os.Open("/proc/" + pid + "/status")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := make(map[string]string, len(fields))
	sc := bufio.NewScanner(f)
	for sc.Scan() && len(out) < len(fields) {
		k, v, found := strings.Cut(sc.Text(), ":")
		for _, want := range fields {
			if found && k == want {
				out[k] = strings.TrimSpace(v)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("/proc/%s/status: %w", pid, err)
	}
	return out, nil
}
