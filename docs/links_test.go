package docs

import (
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// pending are pages other branches are writing: a link to one is checked once the page exists.
// Remove an entry when its page lands.
var pending = map[string]bool{}

var mdLink = regexp.MustCompile(`\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)

// TestLinks checks every relative link of every Markdown file in the repository: its file exists
// in the repository, and its #anchor is a heading of the page it names. Users who clone the
// repository have nothing beside it, so nothing may point outside it.
func TestLinks(t *testing.T) {
	root := repoRoot(t)
	files := trackedFiles(t, root)
	anchors := map[string]map[string]bool{}
	anchorsOf := func(rel string) map[string]bool {
		if a, ok := anchors[rel]; ok {
			return a
		}
		data, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			return nil
		}
		anchors[rel] = headingAnchors(string(data))
		return anchors[rel]
	}
	checked := 0
	for _, rel := range files {
		if !strings.HasSuffix(rel, ".md") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		for n, line := range proseLines(string(data)) {
			for _, m := range mdLink.FindAllStringSubmatch(line, -1) {
				target := m[1]
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				checked++
				file, anchor, _ := strings.Cut(target, "#")
				dest := rel
				if file != "" {
					dest = path.Clean(path.Join(path.Dir(rel), file))
				}
				if strings.HasPrefix(dest, "../") || dest == ".." {
					t.Errorf("%s:%d: %s points outside the repository", rel, n+1, target)
					continue
				}
				if _, err := os.Stat(filepath.Join(root, dest)); err != nil {
					if !pending[dest] {
						t.Errorf("%s:%d: %s: no such file in the repository", rel, n+1, target)
					}
					continue
				}
				if anchor != "" && strings.HasSuffix(dest, ".md") && !anchorsOf(dest)[anchor] {
					t.Errorf("%s:%d: %s: %s has no heading #%s", rel, n+1, target, dest, anchor)
				}
			}
		}
	}
	if checked < 50 {
		t.Errorf("only %d links checked: the scan is broken", checked)
	}
}

// TestStandsAlone fails when a file of the repository refers to what a clone does not have: the
// developers' shared directory beside the checkout.
func TestStandsAlone(t *testing.T) {
	root := repoRoot(t)
	needle := "../" + "shared"
	for _, rel := range trackedFiles(t, root) {
		data, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			continue
		}
		if i := strings.Index(string(data), needle); i >= 0 {
			line := strings.Count(string(data[:i]), "\n") + 1
			t.Errorf("%s:%d: refers to %s, which a clone does not have", rel, line, needle)
		}
	}
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// trackedFiles lists the repository's files as a clone would have them: tracked, and untracked
// but not ignored (a new page not yet committed).
func trackedFiles(t *testing.T, root string) []string {
	t.Helper()
	out, err := exec.Command("git", "-C", root, "ls-files", "--cached", "--others", "--exclude-standard").Output()
	if err != nil {
		t.Skipf("git ls-files: %v (not a git checkout)", err)
	}
	var files []string
	for _, f := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if _, err := os.Stat(filepath.Join(root, f)); err == nil {
			files = append(files, f)
		}
	}
	return files
}

// proseLines returns the document's lines with the lines of fenced code blocks blanked.
func proseLines(md string) []string {
	lines := strings.Split(md, "\n")
	fence := ""
	for i, line := range lines {
		trimmed := strings.TrimLeft(line, " ")
		if fence == "" {
			if f := fenceOf(trimmed); f != "" && len(line)-len(trimmed) <= 3 && !(f[0] == '`' && strings.Contains(trimmed[len(f):], "`")) {
				fence = f
				lines[i] = ""
			}
			continue
		}
		if strings.HasPrefix(trimmed, fence) && strings.Trim(trimmed, fence[:1]+" ") == "" {
			fence = ""
		}
		lines[i] = ""
	}
	return lines
}

// headingAnchors returns the anchors GitHub gives a document's headings: lowercase, letters,
// digits, '-' and '_' kept, spaces made '-', everything else dropped; repeats get -1, -2….
func headingAnchors(md string) map[string]bool {
	out := map[string]bool{}
	seen := map[string]int{}
	for _, line := range proseLines(md) {
		if !strings.HasPrefix(line, "#") {
			continue
		}
		text := strings.TrimSpace(strings.TrimLeft(line, "#"))
		var b strings.Builder
		for _, r := range strings.ToLower(text) {
			switch {
			case unicode.IsLetter(r), unicode.IsDigit(r), r == '-', r == '_':
				b.WriteRune(r)
			case r == ' ':
				b.WriteRune('-')
			}
		}
		a := b.String()
		if n := seen[a]; n > 0 {
			out[a+"-"+strconv.Itoa(n)] = true
		} else {
			out[a] = true
		}
		seen[a]++
	}
	return out
}

func TestHeadingAnchors(t *testing.T) {
	got := headingAnchors("# Title\n## `[sidecar.interceptor.https_mitm]`\n## `[run.profiles.<name>]`\n" +
		"```sh\n# not a heading\n```\n## Step 1: Bootstrap the CA\n## Step 1: Bootstrap the CA\n")
	for _, want := range []string{"title", "sidecarinterceptorhttps_mitm", "runprofilesname", "step-1-bootstrap-the-ca", "step-1-bootstrap-the-ca-1"} {
		if !got[want] {
			t.Errorf("no anchor %q in %v", want, got)
		}
	}
	if got["not-a-heading"] {
		t.Error("a comment in a code block became a heading")
	}
}
