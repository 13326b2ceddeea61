package docs

import (
	"fmt"
	"maps"
	"strconv"
	"strings"
	"testing"
)

// block is one fenced code block of a Markdown file.
type block struct {
	file  string
	line  int    // of the opening fence, from 1
	lang  string // the info string's first word
	attrs map[string]string
	text  string // the content, with the fence's indentation removed
}

func (b block) String() string { return fmt.Sprintf("%s:%d", b.file, b.line) }

// runs reports whether the test runs the block: only `sh` blocks run.
func (b block) runs() bool { return b.lang == "sh" }

// blockAttrs are the attributes an `sh` block may carry after its language.
var blockAttrs = map[string]bool{
	"terminal": true, // runs in the background, in the terminal of this name
	"ready":    true, // what a terminal's output shows once it is up
}

// parseBlocks returns the fenced code blocks of a Markdown document (``` or ~~~ fences, indented
// by at most three spaces, as CommonMark has them). An unclosed fence, an attribute the test does
// not know, or a terminal without ready is an error naming the line.
func parseBlocks(file, md string) ([]block, error) {
	var (
		blocks []block
		cur    *block
		fence  string
		indent int
		body   []string
	)
	lines := strings.Split(md, "\n")
	for i, line := range lines {
		if cur == nil {
			trimmed := strings.TrimLeft(line, " ")
			ind := len(line) - len(trimmed)
			f := fenceOf(trimmed)
			if ind > 3 || f == "" {
				continue
			}
			info := strings.TrimSpace(trimmed[len(f):])
			if f[0] == '`' && strings.Contains(info, "`") {
				continue // an inline code span, not a fence
			}
			b := block{file: file, line: i + 1, attrs: map[string]string{}}
			fields, err := splitInfo(info)
			if err != nil {
				return nil, fmt.Errorf("%s:%d: %v", file, i+1, err)
			}
			if len(fields) > 0 {
				b.lang = fields[0]
			}
			for _, kv := range fields[min(1, len(fields)):] {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || !blockAttrs[k] {
					return nil, fmt.Errorf("%s:%d: unknown block attribute %q (know terminal=NAME, ready=TEXT)", file, i+1, kv)
				}
				b.attrs[k] = v
			}
			if (b.attrs["terminal"] == "") != (b.attrs["ready"] == "") {
				return nil, fmt.Errorf("%s:%d: a terminal block needs both terminal= and ready=", file, i+1)
			}
			if len(b.attrs) > 0 && b.lang != "sh" {
				return nil, fmt.Errorf("%s:%d: only sh blocks take attributes", file, i+1)
			}
			cur, fence, indent, body = &b, f, ind, nil
			continue
		}
		trimmed := strings.TrimLeft(line, " ")
		if ind := len(line) - len(trimmed); ind <= 3 && strings.HasPrefix(trimmed, fence) &&
			strings.Trim(trimmed, fence[:1]) == "" && len(strings.TrimRight(trimmed, " ")) >= len(fence) {
			cur.text = strings.Join(body, "\n")
			blocks = append(blocks, *cur)
			cur = nil
			continue
		}
		// Remove up to the opening fence's indentation.
		n := 0
		for n < indent && n < len(line) && line[n] == ' ' {
			n++
		}
		body = append(body, line[n:])
	}
	if cur != nil {
		return nil, fmt.Errorf("%s:%d: code block never closed", file, cur.line)
	}
	return blocks, nil
}

// fenceOf returns the fence a line starts with (three or more backticks or tildes), or "".
func fenceOf(s string) string {
	for _, c := range []byte{'`', '~'} {
		n := 0
		for n < len(s) && s[n] == c {
			n++
		}
		if n >= 3 {
			return s[:n]
		}
	}
	return ""
}

// splitInfo splits an info string into words; a value may be double-quoted (ready="sidecar ready").
func splitInfo(info string) ([]string, error) {
	var words []string
	for info = strings.TrimSpace(info); info != ""; info = strings.TrimSpace(info) {
		end := strings.IndexByte(info, ' ')
		if eq := strings.IndexByte(info, '='); eq >= 0 && (end < 0 || eq < end) && eq+1 < len(info) && info[eq+1] == '"' {
			q, err := strconv.QuotedPrefix(info[eq+1:])
			if err != nil {
				return nil, fmt.Errorf("bad quoted value in %q", info)
			}
			v, _ := strconv.Unquote(q)
			words = append(words, info[:eq+1]+v)
			info = info[eq+1+len(q):]
			continue
		}
		if end < 0 {
			end = len(info)
		}
		words = append(words, info[:end])
		info = info[end:]
	}
	return words, nil
}

func TestParseBlocks(t *testing.T) {
	md := "# Title\n" +
		"Some `inline` and ```not a fence``` text.\n" +
		"```sh\n" +
		"echo one\n" +
		"echo two\n" +
		"```\n" +
		"1. In a list:\n" +
		"   ```sh terminal=sidecar ready=\"sidecar ready\"\n" +
		"   sudo firma sidecar -c firma.toml\n" +
		"   ```\n" +
		"~~~toml\n" +
		"[sidecar]\n" +
		"```\n" +
		"~~~\n" +
		"````shell\n" +
		"```\n" +
		"````\n"
	got, err := parseBlocks("x.md", md)
	if err != nil {
		t.Fatal(err)
	}
	want := []block{
		{line: 3, lang: "sh", text: "echo one\necho two"},
		{line: 8, lang: "sh", attrs: map[string]string{"terminal": "sidecar", "ready": "sidecar ready"}, text: "sudo firma sidecar -c firma.toml"},
		{line: 11, lang: "toml", text: "[sidecar]\n```"},
		{line: 15, lang: "shell", text: "```"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d blocks: %+v", len(got), got)
	}
	for i, w := range want {
		g := got[i]
		if g.line != w.line || g.lang != w.lang || g.text != w.text || !maps.Equal(g.attrs, w.attrs) {
			t.Errorf("block %d = %+v, want %+v", i, g, w)
		}
	}
	if !got[0].runs() || !got[1].runs() || got[2].runs() || got[3].runs() {
		t.Error("only sh blocks run")
	}

	for _, bad := range []string{
		"```sh\necho never closed\n",
		"```sh termnal=x ready=y\n```\n",
		"```sh terminal=x\n```\n",
		"```shell terminal=x ready=y\n```\n",
		"```sh ready=\"unterminated\n```\n",
	} {
		if _, err := parseBlocks("bad.md", bad); err == nil {
			t.Errorf("parseBlocks(%q) accepted it", bad)
		}
	}
}
