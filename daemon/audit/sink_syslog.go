package audit

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openfirma/firma/internal/keyfile"
)

// RFC 5424 is written here rather than with a library: Go's log/syslog writes RFC 3164-style
// headers without octet counting or TLS, and the Go RFC 5424 packages are parsers first whose
// builders allocate per field. The message is small and fixed: tests check it against the RFC's
// ABNF and against rsyslog's parser.

const (
	syslogDialTimeout  = 5 * time.Second
	syslogWriteTimeout = 10 * time.Second
)

// syslogHeader is what every message of one sink shares.
type syslogHeader struct {
	facility int
	hostname string // "-" when unknown
	appName  string
	procID   string
}

// appendSyslog appends the RFC 5424 message for f:
//
//	<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG
//
// MSGID is the record's kind (decision, completion, log), there is no structured data, and MSG is
// the line exactly as in the file (MSG-ANY: no BOM, so that receivers pass it on untouched).
func (h *syslogHeader) appendSyslog(dst []byte, f *fwd) []byte {
	dst = append(dst, '<')
	dst = strconv.AppendInt(dst, int64(h.facility*8+f.severity()), 10)
	dst = append(dst, ">1 "...)
	dst = f.time.UTC().AppendFormat(dst, "2006-01-02T15:04:05.000000Z07:00")
	dst = append(dst, ' ')
	dst = append(dst, h.hostname...)
	dst = append(dst, ' ')
	dst = append(dst, h.appName...)
	dst = append(dst, ' ')
	dst = append(dst, h.procID...)
	dst = append(dst, ' ')
	dst = appendToken(dst, string(f.kind), 32)
	dst = append(dst, " - "...)
	return append(dst, f.line...)
}

// appendToken appends s as an RFC 5424 header field: 1..max PRINTUSASCII characters, or "-".
func appendToken(dst []byte, s string, max int) []byte {
	if s == "" {
		return append(dst, '-')
	}
	for i := 0; i < len(s) && i < max; i++ {
		c := s[i]
		if c < 33 || c > 126 {
			c = '_'
		}
		dst = append(dst, c)
	}
	return dst
}

func newSyslogHeader(cfg SinkConfig) syslogHeader {
	host := cfg.Hostname
	if host == "" {
		host, _ = os.Hostname()
	}
	return syslogHeader{
		facility: facilities[cfg.Facility],
		hostname: string(appendToken(nil, host, 255)),
		appName:  string(appendToken(nil, cfg.AppName, 48)),
		procID:   strconv.Itoa(os.Getpid()),
	}
}

// syslogTransport sends to a syslog receiver: one datagram per message on unixgram and udp,
// octet-counted frames (RFC 6587 3.4.1, RFC 5425 4.3) on unix streams, tcp and tcp+tls.
type syslogTransport struct {
	addr   sinkAddr
	tls    *tls.Config // tcp+tls only
	header syslogHeader

	conn   net.Conn
	stream bool
	buf    []byte
	ends   []int
}

func newSyslogTransport(cfg SinkConfig) (*syslogTransport, error) {
	a, err := parseSinkAddr(cfg.Address)
	if err != nil {
		return nil, err
	}
	t := &syslogTransport{addr: a, header: newSyslogHeader(cfg)}
	if a.scheme == "tcp+tls" {
		if t.tls, err = syslogTLSConfig(cfg, a); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func syslogTLSConfig(cfg SinkConfig, a sinkAddr) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cfg.ServerName}
	if c.ServerName == "" {
		c.ServerName = a.host
	}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s: no PEM certificate", cfg.CAFile)
		}
	}
	if cfg.CertFile != "" {
		certPEM, err := os.ReadFile(cfg.CertFile)
		if err != nil {
			return nil, fmt.Errorf("cert_file: %w", err)
		}
		keyPEM, err := keyfile.ReadPrivate(cfg.KeyFile) // refuses a key others can read
		if err != nil {
			return nil, fmt.Errorf("key_file: %w", err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("cert_file/key_file %s, %s: %w", cfg.CertFile, cfg.KeyFile, err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

func (t *syslogTransport) dial() error {
	var (
		c   net.Conn
		err error
	)
	switch t.addr.scheme {
	case "unix":
		// Like log/syslog: a datagram socket (what /dev/log is), else a stream one.
		if c, err = net.DialTimeout("unixgram", t.addr.target, syslogDialTimeout); err != nil && errors.Is(err, syscall.EPROTOTYPE) {
			c, err = net.DialTimeout("unix", t.addr.target, syslogDialTimeout)
		}
	case "unixgram":
		c, err = net.DialTimeout("unixgram", t.addr.target, syslogDialTimeout)
	case "unixstream":
		c, err = net.DialTimeout("unix", t.addr.target, syslogDialTimeout)
	case "udp", "tcp":
		c, err = net.DialTimeout(t.addr.scheme, t.addr.target, syslogDialTimeout)
	case "tcp+tls":
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: syslogDialTimeout}, Config: t.tls}
		c, err = d.Dial("tcp", t.addr.target)
	}
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", t.addr.scheme+"://"+t.addr.target, err)
	}
	switch c.(type) {
	case *net.UDPConn:
		t.stream = false
	case *net.UnixConn:
		t.stream = c.RemoteAddr().Network() == "unix"
	default:
		t.stream = true
	}
	t.conn = c
	return nil
}

func (t *syslogTransport) send(recs []*fwd) (int, error) {
	if t.conn == nil {
		if err := t.dial(); err != nil {
			return 0, err
		}
	}
	if t.stream {
		return t.sendStream(recs)
	}
	for i, f := range recs {
		t.buf = t.header.appendSyslog(t.buf[:0], f)
		t.conn.SetWriteDeadline(time.Now().Add(syslogWriteTimeout))
		if _, err := t.conn.Write(t.buf); err != nil {
			if errors.Is(err, syscall.EMSGSIZE) {
				return i, fmt.Errorf("%w: %d-byte datagram: %w", errTooLarge, len(t.buf), err)
			}
			return i, err
		}
	}
	return len(recs), nil
}

// sendStream writes recs as octet-counted frames with one write. A receiver never sends on a syslog
// stream, so anything readable means it is closing: check that first, rather than write records
// into a connection that has already gone (as rsyslog's own forwarder does).
func (t *syslogTransport) sendStream(recs []*fwd) (int, error) {
	if err := t.peerClosing(); err != nil {
		return 0, err
	}
	t.buf, t.ends = t.buf[:0], t.ends[:0]
	var msg []byte
	for _, f := range recs {
		msg = t.header.appendSyslog(msg[:0], f)
		t.buf = strconv.AppendInt(t.buf, int64(len(msg)), 10)
		t.buf = append(t.buf, ' ')
		t.buf = append(t.buf, msg...)
		t.ends = append(t.ends, len(t.buf))
	}
	t.conn.SetWriteDeadline(time.Now().Add(syslogWriteTimeout))
	n, err := t.conn.Write(t.buf)
	if err == nil {
		return len(recs), nil
	}
	done := 0
	for done < len(t.ends) && t.ends[done] <= n {
		done++
	}
	return done, err
}

// peerClosing reports an error when the receiver has closed (or reset) the connection.
func (t *syslogTransport) peerClosing() error {
	raw := t.conn
	tc, isTLS := t.conn.(*tls.Conn)
	if isTLS {
		raw = tc.NetConn()
	}
	sc, ok := raw.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var (
		n    int
		perr error
		b    [1]byte
	)
	if err := rc.Read(func(fd uintptr) bool {
		n, _, perr = unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return true
	}); err != nil {
		return err
	}
	switch {
	case errors.Is(perr, unix.EAGAIN):
		return nil
	case perr != nil:
		return fmt.Errorf("receiver connection: %w", perr)
	case n == 0:
		return errors.New("receiver closed the connection")
	}
	if !isTLS {
		return errors.New("receiver sent data on a syslog connection: treating it as closing")
	}
	// TLS: post-handshake messages (session tickets) are normal; let the TLS layer read them and
	// tell them from a close_notify.
	tc.SetReadDeadline(time.Now().Add(time.Millisecond))
	_, err = tc.Read(b[:])
	tc.SetReadDeadline(time.Time{})
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	if err == nil {
		return errors.New("receiver sent data on a syslog connection: treating it as closing")
	}
	return fmt.Errorf("receiver connection: %w", err)
}

func (t *syslogTransport) close() error {
	if t.conn == nil {
		return nil
	}
	err := t.conn.Close()
	t.conn = nil
	return err
}
