package docs

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/openfirma/firma/daemon/audit"
)

// recordFields returns the JSON path of every member an audit record can have: a struct opens its
// members; a list of structs is one member (its row describes what each element holds).
func recordFields(t reflect.Type, prefix string) []string {
	var out []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name := strings.Split(f.Tag.Get("json"), ",")[0]
		if !f.IsExported() || name == "-" || name == "" {
			continue
		}
		path := name
		if prefix != "" {
			path = prefix + "." + name
		}
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && ft != reflect.TypeFor[time.Time]() {
			out = append(out, recordFields(ft, path)...)
			continue
		}
		out = append(out, path)
	}
	return out
}

// TestAuditFieldsDocumented fails when the audit record gains a member docs/audit.md's table of
// fields does not describe, or the table describes one the record does not have.
func TestAuditFieldsDocumented(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("audit.md"))
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	in := false
	cell := regexp.MustCompile("`([a-z_.]+)`")
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "#") {
			in = strings.TrimSpace(strings.TrimLeft(line, "#")) == "Every field"
			continue
		}
		if !in || !strings.HasPrefix(line, "| `") {
			continue
		}
		first := strings.SplitN(line[1:], "|", 2)[0]
		for _, m := range cell.FindAllStringSubmatch(first, -1) {
			documented[m[1]] = true
		}
	}
	fields := recordFields(reflect.TypeFor[audit.Event](), "")
	if len(fields) < 40 {
		t.Fatalf("found only %d fields: the walk is broken", len(fields))
	}
	known := map[string]bool{}
	var missing []string
	for _, f := range fields {
		known[f] = true
		if !documented[f] {
			missing = append(missing, f)
		}
	}
	var stale []string
	for f := range documented {
		if !known[f] {
			stale = append(stale, f)
		}
	}
	sort.Strings(missing)
	sort.Strings(stale)
	if len(missing) > 0 {
		t.Errorf("docs/audit.md's \"Every field\" table does not describe:\n  %s", strings.Join(missing, "\n  "))
	}
	if len(stale) > 0 {
		t.Errorf("docs/audit.md's \"Every field\" table describes members the record does not have:\n  %s", strings.Join(stale, "\n  "))
	}
}
