package policies

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// TestGolden runs every fixture file in testdata: request → expected decision.
func TestGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/*.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 5 {
		t.Fatalf("found only %d fixture files: %v", len(files), files)
	}
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			f, err := LoadFixtures(path)
			if err != nil {
				t.Fatal(err)
			}
			e, err := f.Engine(zerolog.Nop())
			if err != nil {
				t.Fatal(err)
			}
			results, err := f.Run(context.Background(), e)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range results {
				if !r.OK() {
					t.Errorf("%s:%d: %s: %s\n\tgot %s", path, r.Case.Line, r.Case.Name, strings.Join(r.Mismatch, "; "), r.Describe())
				}
			}
		})
	}
}

// wants reads the "want:" lines a testdata file starts with.
func wants(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimLeft(line, "/# ")
		if w, ok := strings.CutPrefix(line, "want: "); ok {
			out = append(out, w)
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s has no want: lines", path)
	}
	return out
}

func checkWants(t *testing.T, path string, err, kind error) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s loaded without error", path)
	}
	if kind != nil && !errors.Is(err, kind) {
		t.Errorf("error does not wrap %v: %v", kind, err)
	}
	for _, w := range wants(t, path) {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q:\n%v", w, err)
		}
	}
}

// TestInvalidPolicies covers every validation error path: each file must fail with the errors its
// want: lines name, at the right file, line and column.
func TestInvalidPolicies(t *testing.T) {
	files, _ := filepath.Glob("testdata/invalid/policies/*.cedar")
	if len(files) < 8 {
		t.Fatalf("found only %d invalid policy files", len(files))
	}
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			_, err := LoadFiles([]string{path}, nil)
			checkWants(t, path, err, ErrInvalidPolicy)
		})
	}
}

func TestInvalidRules(t *testing.T) {
	files, _ := filepath.Glob("testdata/invalid/rules/*.toml")
	if len(files) < 8 {
		t.Fatalf("found only %d invalid rules files", len(files))
	}
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			_, err := LoadRules(path, nil)
			checkWants(t, path, err, ErrInvalidRules)
		})
	}
}

func TestInvalidSchemas(t *testing.T) {
	files, _ := filepath.Glob("testdata/invalid/schema/*.cedarschema")
	if len(files) < 4 {
		t.Fatalf("found only %d invalid schema files", len(files))
	}
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			_, err := LoadSchema(path)
			checkWants(t, path, err, ErrInvalidSchema)
		})
	}
}

// TestInvalidDirKeepsAllProblems: one load reports every bad file, sorted, not just the first.
func TestInvalidDirReportsEveryProblem(t *testing.T) {
	_, err := LoadDir("testdata/invalid/policies", nil)
	var le *LoadError
	if !errors.As(err, &le) {
		t.Fatalf("want a *LoadError, got %v", err)
	}
	files := map[string]bool{}
	for i, p := range le.Problems {
		files[filepath.Base(p.File)] = true
		if i > 0 && le.Problems[i-1].File > p.File {
			t.Errorf("problems not sorted by file: %s before %s", le.Problems[i-1].File, p.File)
		}
		if p.Line == 0 {
			t.Errorf("problem without a line: %v", p)
		}
	}
	all, _ := filepath.Glob("testdata/invalid/policies/*.cedar")
	if len(files) != len(all) {
		t.Errorf("problems name %d files, want all %d:\n%v", len(files), len(all), err)
	}
	if !strings.HasPrefix(err.Error(), "loading policy dir testdata/invalid/policies: testdata/invalid/policies/") {
		t.Errorf("error does not name the dir and file first: %v", err)
	}
}

func TestInvalidFixtures(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bad.toml")
	os.WriteFile(path, []byte(`
[[case]]
name = "x"
principal = "a"
method = "GET"
host = "example.com"
expect = "MAYBE"

[[case]]
principal = "a"
host = "example.com"
method = "GET"
context = { user = "root", uid = "zero" }
expect = "DENY"
`), 0o644)
	_, err := LoadFixtures(path)
	if !errors.Is(err, ErrInvalidFixture) {
		t.Fatalf("want ErrInvalidFixture, got %v", err)
	}
	for _, w := range []string{
		`bad.toml:2: x: expect = "MAYBE"`,
		`bad.toml:9: case 2 (line 9): context.user: not a context key`,
		`bad.toml:9: case 2 (line 9): context.uid: want an integer, got string`,
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q:\n%v", w, err)
		}
	}
}

// TestFixtureMismatchIsReported: a fixture that expects the wrong thing fails, naming what differs.
func TestFixtureMismatchIsReported(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "wrong.toml")
	os.WriteFile(path, []byte(`
[[case]]
principal = "a"
method = "CONNECT"
host = "paste.rs"
expect = "ALLOW"
expect_reason = "permitted by policy"
expect_action = "web.request"
expect_policies = ["nope"]
`), 0o644)
	f, err := LoadFixtures(path)
	if err != nil {
		t.Fatal(err)
	}
	e, err := f.Engine(zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	res, err := f.Run(context.Background(), e)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || res[0].OK() || len(res[0].Mismatch) != 4 {
		t.Fatalf("want 4 mismatches, got %+v", res)
	}
}

func TestFixtureUnknownAction(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.toml")
	os.WriteFile(path, []byte("[[case]]\nprincipal = \"a\"\nmethod = \"GET\"\nhost = \"x.com\"\naction = \"web.requests\"\nexpect = \"DENY\"\n"), 0o644)
	f, err := LoadFixtures(path)
	if err != nil {
		t.Fatal(err)
	}
	e, _ := f.Engine(zerolog.Nop())
	if _, err := f.Run(context.Background(), e); !errors.Is(err, ErrInvalidFixture) || !strings.Contains(err.Error(), `x.toml:1: case 1 (line 1): action "web.requests" is not an action class`) {
		t.Errorf("got %v", err)
	}
}
