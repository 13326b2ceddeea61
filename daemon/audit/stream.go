package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Format says how the lines given to Verify carry the records.
type Format string

const (
	// FormatAuto looks at the first lines of the first input to choose one of the others.
	FormatAuto Format = "auto"
	// FormatFile is the log files as the writer wrote them: every line is a record.
	FormatFile Format = "file"
	// FormatJournal is a journal export: `journalctl -o cat` (MESSAGE only), `-o json` (one JSON
	// object per entry; MESSAGE holds the line) or `-o short*` (a syslog-like prefix). Lines that
	// are not audit records (other services' messages) are skipped.
	FormatJournal Format = "journal"
	// FormatSyslog is a file a syslog daemon wrote: each line is a prefix (RFC 5424 or RFC 3164
	// header, as rsyslog's templates write them) and then the record. Lines without a record are
	// skipped.
	FormatSyslog Format = "syslog"
)

// ParseFormat reads a --format value.
func ParseFormat(s string) (Format, error) {
	switch f := Format(s); f {
	case FormatAuto, FormatFile, FormatJournal, FormatSyslog:
		return f, nil
	case "":
		return FormatAuto, nil
	}
	return "", fmt.Errorf("format %q: want auto, file, journal or syslog", s)
}

// recordStart is how every record line begins: the writer puts id first.
var recordStart = []byte(`{"id":`)

// framed is what a line of an input holds: the record (nil when the line carries none) and,
// where the framing says, the host and program that sent it.
type framed struct {
	rec       []byte
	host, app string
}

// unframe strips the transport framing of one line of an input in format f.
func unframe(f Format, raw []byte) framed {
	raw = bytes.TrimSuffix(raw, []byte("\r"))
	switch f {
	case FormatFile:
		return framed{rec: raw}
	case FormatJournal:
		if bytes.HasPrefix(raw, recordStart) {
			return framed{rec: raw}
		}
		if bytes.HasPrefix(raw, []byte("{")) {
			return unframeJournalJSON(raw)
		}
	}
	return unframeSyslog(raw)
}

// unframeJournalJSON reads one entry of `journalctl -o json`.
func unframeJournalJSON(raw []byte) framed {
	var e struct {
		Message    json.RawMessage `json:"MESSAGE"`
		Hostname   string          `json:"_HOSTNAME"`
		Identifier string          `json:"SYSLOG_IDENTIFIER"`
	}
	if json.Unmarshal(raw, &e) != nil || len(e.Message) == 0 {
		return framed{}
	}
	var msg []byte
	var s string
	if json.Unmarshal(e.Message, &s) == nil {
		msg = []byte(s)
	} else if json.Unmarshal(e.Message, &msg) != nil { // journalctl writes non-UTF-8 values as byte arrays
		return framed{}
	}
	if !bytes.HasPrefix(msg, recordStart) {
		return framed{}
	}
	return framed{rec: msg, host: e.Hostname, app: e.Identifier}
}

// unframeSyslog finds the record after a syslog prefix and reads the host and program from the
// prefix: "<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD " (RFC 5424), "Mmm dd hh:mm:ss HOST TAG: "
// (RFC 3164, journalctl -o short) or "RFC3339-TIME HOST TAG: " (rsyslog's file format).
func unframeSyslog(raw []byte) framed {
	i := bytes.Index(raw, recordStart)
	if i < 0 {
		return framed{}
	}
	out := framed{rec: raw[i:]}
	fields := strings.Fields(string(raw[:i]))
	switch {
	case len(fields) >= 4 && strings.HasPrefix(fields[0], "<") && strings.HasSuffix(fields[0], ">1"):
		out.host, out.app = fields[2], fields[3]
	case len(fields) >= 5 && isMonth(fields[0]):
		out.host, out.app = fields[3], tagName(fields[4])
	case len(fields) >= 3 && isRFC3339(fields[0]):
		out.host, out.app = fields[1], tagName(fields[2])
	}
	out.host, out.app = nilDash(out.host), nilDash(out.app)
	return out
}

func isMonth(s string) bool {
	_, err := time.Parse("Jan", s)
	return err == nil
}

func isRFC3339(s string) bool {
	_, err := time.Parse(time.RFC3339Nano, s)
	return err == nil
}

// tagName is the program of an RFC 3164 TAG: "firma[123]:" → "firma".
func tagName(tag string) string {
	tag = strings.TrimSuffix(tag, ":")
	if i := strings.IndexByte(tag, '['); i >= 0 {
		tag = tag[:i]
	}
	return tag
}

func nilDash(s string) string {
	if s == "-" {
		return ""
	}
	return s
}

// resolveFormat is the format of inputs given as f, whose first file is first: "" is FormatFile,
// FormatAuto is detected from first.
func resolveFormat(f Format, first string) (Format, error) {
	switch f {
	case "":
		return FormatFile, nil
	case FormatAuto:
		return detectFormat(first)
	case FormatFile, FormatJournal, FormatSyslog:
		return f, nil
	}
	return "", fmt.Errorf("unknown format %q", f)
}

// detectFormat chooses the format of path from its first line that holds a record.
func detectFormat(path string) (Format, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	for n := 0; n < 10000; n++ {
		raw, err := br.ReadBytes('\n')
		line := bytes.TrimRight(raw, "\r\n")
		switch {
		case bytes.HasPrefix(line, recordStart):
			return FormatFile, nil
		case bytes.HasPrefix(line, []byte("{")) && bytes.Contains(line, []byte(`"MESSAGE"`)):
			return FormatJournal, nil
		case bytes.Contains(line, recordStart):
			return FormatSyslog, nil
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", err
		}
	}
	return "", fmt.Errorf("%s: no audit record in its first lines: give --format", path)
}
