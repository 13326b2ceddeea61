package audit

import (
	"strconv"

	"github.com/coreos/go-systemd/v22/journal"
)

// JournalMessageID is the MESSAGE_ID of every audit record firma sends to the journal:
// `journalctl MESSAGE_ID=deac8e22e861480cb5395cb57d6895cb -o cat` exports the chain.
const JournalMessageID = "deac8e22e861480cb5395cb57d6895cb"

// journaldTransport sends each record with the journal's native protocol (go-systemd's journal
// package, on /run/systemd/journal/socket; a journal namespace is bind-mounted there by systemd
// for a unit with LogNamespace=). MESSAGE is the line exactly as in the file; the FIRMA_* fields
// make the records searchable without parsing it.
type journaldTransport struct {
	facility string
	appName  string
	sendFn   func(msg string, p journal.Priority, vars map[string]string) error
}

func newJournaldTransport(cfg SinkConfig) *journaldTransport {
	return &journaldTransport{facility: strconv.Itoa(facilities[cfg.Facility]), appName: cfg.AppName, sendFn: journal.Send}
}

// journalFields are the fields of f besides MESSAGE and PRIORITY; empty values are left out.
func (t *journaldTransport) journalFields(f *fwd) map[string]string {
	v := map[string]string{
		"MESSAGE_ID":        JournalMessageID,
		"SYSLOG_IDENTIFIER": t.appName,
		"SYSLOG_FACILITY":   t.facility,
		"FIRMA_KIND":        string(f.kind),
		"FIRMA_SEQ":         strconv.FormatUint(f.seq, 10),
		"FIRMA_EVENT_ID":    f.id,
	}
	set := func(k, val string) {
		if val != "" {
			v[k] = val
		}
	}
	set("FIRMA_DECISION_ID", f.decisionID)
	set("FIRMA_OUTCOME", f.outcome)
	set("FIRMA_AGENT_ID", f.agentID)
	set("FIRMA_SESSION_ID", f.sessionID)
	set("FIRMA_HOST", f.host)
	set("FIRMA_EXE", f.exe)
	set("FIRMA_ACTION_CLASS", f.action)
	set("FIRMA_MODE", f.mode)
	set("FIRMA_LOG_EVENT", string(f.logEvent))
	if f.pid != 0 {
		v["FIRMA_PID"] = strconv.Itoa(f.pid)
	}
	return v
}

func (t *journaldTransport) send(recs []*fwd) (int, error) {
	for i, f := range recs {
		if err := t.sendFn(string(f.line), journal.Priority(f.severity()), t.journalFields(f)); err != nil {
			return i, err
		}
	}
	return len(recs), nil
}

func (t *journaldTransport) close() error { return nil }
