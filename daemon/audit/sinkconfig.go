package audit

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// Sink types.
const (
	SinkJournald = "journald"
	SinkSyslog   = "syslog"
)

// SinkConfig is one [[sidecar.audit.sinks]] entry.
type SinkConfig struct {
	// Type is "journald" (the native journal protocol on /run/systemd/journal/socket) or "syslog"
	// (RFC 5424 to Address).
	Type string `toml:"type"`
	// Address is where a syslog sink sends: "unix:///dev/log" (datagram, or stream when the socket
	// is one), "unixgram:///path", "unixstream:///path", "udp://host:514", "tcp://host:514",
	// "tcp+tls://host:6514". Stream transports frame each message by octet counting (RFC 6587,
	// RFC 5425).
	Address string `toml:"address"`
	// CAFile holds the PEM roots a tcp+tls sink verifies the server with ("" ⇒ the system's).
	CAFile string `toml:"ca_file"`
	// ServerName is the name a tcp+tls sink expects in the server's certificate ("" ⇒ the
	// address's host).
	ServerName string `toml:"server_name"`
	// CertFile and KeyFile are a client certificate for tcp+tls receivers that require one.
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`
	// Facility is the syslog facility name ("authpriv", "local0"…) of syslog messages and of the
	// journal's SYSLOG_FACILITY. Default "authpriv": audit records are security records.
	Facility string `toml:"facility"`
	// AppName is the RFC 5424 APP-NAME and the journal's SYSLOG_IDENTIFIER. Default "firma".
	AppName string `toml:"app_name"`
	// Hostname is the RFC 5424 HOSTNAME. Default: the machine's host name (journald sets its own).
	Hostname string `toml:"hostname"`
	// QueueSize bounds the records waiting for this sink; when it is full, new records are dropped
	// for this sink (never for the file) and counted. Default 10000.
	QueueSize int `toml:"queue_size"`
}

const (
	DefaultSinkQueueSize = 10000
	DefaultSinkFacility  = "authpriv"
	DefaultSinkAppName   = "firma"
)

// sinkBackoff bounds the wait between two attempts at a sink that is down.
const (
	sinkBackoffMin = 50 * time.Millisecond
	sinkBackoffMax = 5 * time.Second
)

func (s SinkConfig) withDefaults() SinkConfig {
	if s.QueueSize == 0 {
		s.QueueSize = DefaultSinkQueueSize
	}
	if s.Facility == "" {
		s.Facility = DefaultSinkFacility
	}
	if s.AppName == "" {
		s.AppName = DefaultSinkAppName
	}
	return s
}

// facilities are the RFC 5424 facility codes by the names syslog.conf uses.
var facilities = map[string]int{
	"kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
	"uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "audit": 13, "alert": 14, "clock": 15,
	"local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20,
	"local5": 21, "local6": 22, "local7": 23,
}

// sinkAddr is a parsed syslog address.
type sinkAddr struct {
	scheme string // unix, unixgram, unixstream, udp, tcp, tcp+tls
	target string // a socket path or host:port
	host   string // host of host:port
}

func parseSinkAddr(s string) (sinkAddr, error) {
	u, err := url.Parse(s)
	if err != nil {
		return sinkAddr{}, err
	}
	a := sinkAddr{scheme: u.Scheme}
	switch u.Scheme {
	case "unix", "unixgram", "unixstream":
		if u.Host != "" || u.Path == "" || !strings.HasPrefix(u.Path, "/") {
			return sinkAddr{}, fmt.Errorf("%q: want %s:///absolute/socket/path", s, u.Scheme)
		}
		a.target = u.Path
	case "udp", "tcp", "tcp+tls":
		host, port, err := net.SplitHostPort(u.Host)
		if err != nil || host == "" || port == "" || (u.Path != "" && u.Path != "/") {
			return sinkAddr{}, fmt.Errorf("%q: want %s://host:port", s, u.Scheme)
		}
		a.target, a.host = u.Host, host
	case "":
		return sinkAddr{}, fmt.Errorf("%q has no scheme (unix://, unixgram://, unixstream://, udp://, tcp://, tcp+tls://)", s)
	default:
		return sinkAddr{}, fmt.Errorf("%q: unknown scheme %q (unix, unixgram, unixstream, udp, tcp, tcp+tls)", s, u.Scheme)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return sinkAddr{}, fmt.Errorf("%q: no user, query or fragment allowed", s)
	}
	return a, nil
}

// validate names each problem with prefix + the key.
func (s SinkConfig) validate(prefix string) []error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s%s: %s", prefix, key, fmt.Sprintf(format, a...)))
	}
	s = s.withDefaults()
	switch s.Type {
	case SinkJournald:
		for key, v := range map[string]string{"address": s.Address, "ca_file": s.CAFile, "server_name": s.ServerName,
			"cert_file": s.CertFile, "key_file": s.KeyFile, "hostname": s.Hostname} {
			if v != "" {
				bad(key, "not used by a journald sink (it writes to /run/systemd/journal/socket, which systemd bind-mounts for LogNamespace=)")
			}
		}
	case SinkSyslog:
		if s.Address == "" {
			bad("address", "must be set for a syslog sink")
			break
		}
		a, err := parseSinkAddr(s.Address)
		if err != nil {
			bad("address", "%v", err)
			break
		}
		if a.scheme != "tcp+tls" {
			for key, v := range map[string]string{"ca_file": s.CAFile, "server_name": s.ServerName, "cert_file": s.CertFile, "key_file": s.KeyFile} {
				if v != "" {
					bad(key, "only a tcp+tls:// address uses it")
				}
			}
		}
		if (s.CertFile == "") != (s.KeyFile == "") {
			bad("cert_file", "cert_file and key_file go together")
		}
		if !printUSASCII(s.Hostname, 255) {
			bad("hostname", "%q is not 1-255 printable US-ASCII characters", s.Hostname)
		}
	case "":
		bad("type", "must be set (%q or %q)", SinkJournald, SinkSyslog)
	default:
		bad("type", "%q is not %q or %q", s.Type, SinkJournald, SinkSyslog)
	}
	if _, ok := facilities[s.Facility]; !ok {
		bad("facility", "%q is not a syslog facility (auth, authpriv, daemon, local0…local7, …)", s.Facility)
	}
	if !printUSASCII(s.AppName, 48) {
		bad("app_name", "%q is not 1-48 printable US-ASCII characters", s.AppName)
	}
	if s.QueueSize < 1 || s.QueueSize > 10_000_000 {
		bad("queue_size", "%d is not between 1 and 10000000", s.QueueSize)
	}
	return errs
}

// printUSASCII reports whether s is "" or at most max characters of RFC 5424's PRINTUSASCII
// (%d33-126).
func printUSASCII(s string, max int) bool {
	if len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 33 || s[i] > 126 {
			return false
		}
	}
	return true
}

// name is how logs and Stats call the sink.
func (s SinkConfig) name() string {
	if s.Type == SinkSyslog {
		return "syslog " + s.Address
	}
	return s.Type
}
