package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// rotatedName is the name the live file takes when rotated: its first seq, zero-padded to 20
// digits so that names sort in chain order.
func rotatedName(live string, firstSeq uint64) string {
	return live + "." + fmt.Sprintf("%020d", firstSeq)
}

// rotatedSeq returns the first seq a rotated file's name carries, or false when name is not a
// rotated file of live.
func rotatedSeq(live, name string) (uint64, bool) {
	prefix := filepath.Base(live) + "."
	base := filepath.Base(name)
	if !strings.HasPrefix(base, prefix) || len(base) != len(prefix)+20 {
		return 0, false
	}
	n, err := strconv.ParseUint(base[len(prefix):], 10, 64)
	return n, err == nil
}

// listRotated returns live's rotated files, oldest first.
func listRotated(live string) ([]string, error) {
	dir := filepath.Dir(live)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("listing audit dir %s: %w", dir, err)
	}
	var out []string
	for _, e := range ents {
		if _, ok := rotatedSeq(live, e.Name()); ok && e.Type().IsRegular() {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	sort.Strings(out)
	return out, nil
}

// Files returns the files of the log whose live file is live, in chain order: the rotated files
// oldest first, then the live file when it exists.
func Files(live string) ([]string, error) {
	out, err := listRotated(live)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(live); err == nil {
		out = append(out, live)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	return out, nil
}

// tornSuffix marks the file a resume saves a crash's incomplete last line to.
const tornSuffix = ".torn-"

// IsTornSave reports whether path is where a resume saved a torn tail (file_path + ".torn-" + unix
// nanoseconds): evidence kept beside the log, not part of the chain.
func IsTornSave(path string) bool {
	base := filepath.Base(path)
	i := strings.LastIndex(base, tornSuffix)
	if i < 0 {
		return false
	}
	_, err := strconv.ParseUint(base[i+len(tornSuffix):], 10, 64)
	return err == nil
}

// lineInfo is what the writer needs of a line to chain after it.
type lineInfo struct {
	seq  uint64
	hash string // hashBody(body(line))
}

func parseLineInfo(line []byte) (lineInfo, error) {
	var ev struct {
		Seq uint64 `json:"seq"`
	}
	if err := json.Unmarshal(line, &ev); err != nil {
		return lineInfo{}, err
	}
	if ev.Seq == 0 {
		return lineInfo{}, errors.New("no seq")
	}
	body, _ := splitLine(line)
	return lineInfo{seq: ev.Seq, hash: hashBody(body)}, nil
}

// fileEnd is the end of a log file as found on disk.
type fileEnd struct {
	last *lineInfo // the last complete line; nil when the file has none
	good int64     // bytes up to and including that line's "\n"
	size int64     // file size; size > good means an incomplete (torn) tail
}

// scanEnd reads the end of path. A last complete line that is not an audit record is an error: it
// is not the writer's, and chaining over it would hide that.
func scanEnd(path string) (fileEnd, error) {
	f, err := os.Open(path)
	if err != nil {
		return fileEnd{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fileEnd{}, err
	}
	end := fileEnd{size: fi.Size()}
	for chunk := int64(64 << 10); ; chunk *= 2 {
		off := max(0, end.size-chunk)
		buf := make([]byte, end.size-off)
		if _, err := f.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
			return fileEnd{}, fmt.Errorf("reading %s: %w", path, err)
		}
		i := bytes.LastIndexByte(buf, '\n')
		if i < 0 && off > 0 {
			continue
		}
		if i < 0 {
			return end, nil // no complete line at all
		}
		j := bytes.LastIndexByte(buf[:i], '\n')
		if j < 0 && off > 0 {
			continue
		}
		end.good = off + int64(i) + 1
		info, err := parseLineInfo(buf[j+1 : i])
		if err != nil {
			return fileEnd{}, fmt.Errorf("%s: the last complete line (ending at byte %d) is not an audit record (%v): check it with firma audit verify", path, end.good, err)
		}
		end.last = &info
		return end, nil
	}
}

// readFirstLine returns the first line of path without its "\n"; complete is false when the file
// ends before a newline (line is then what there is, empty for an empty file).
func readFirstLine(path string) (line []byte, complete bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	line, err = bufio.NewReaderSize(f, 64<<10).ReadBytes('\n')
	if errors.Is(err, io.EOF) {
		return line, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("reading %s: %w", path, err)
	}
	return line[:len(line)-1], true, nil
}

// firstLine returns the first complete line of path, or nil when it has none.
func firstLine(path string) (*lineInfo, error) {
	line, complete, err := readFirstLine(path)
	if err != nil || !complete {
		return nil, err
	}
	info, err := parseLineInfo(line)
	if err != nil {
		return nil, fmt.Errorf("%s:1: not an audit record: %w", path, err)
	}
	return &info, nil
}

// syncDir fsyncs a directory so that a rename or create in it survives a power failure.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
