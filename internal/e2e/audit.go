//go:build linux

package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/internal/testutil"
)

// AuditKey makes an audit signing key the way the guides do (`openssl genpkey -algorithm EC -pkeyopt
// ec_paramgen_curve:P-256`, then `openssl pkey -pubout`) and returns the private key's path (0600
// in a 0700 dir) and the PEM public key's path.
func AuditKey(tb testing.TB) (key, pub string) {
	tb.Helper()
	dir := tb.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		tb.Fatal(err)
	}
	openssl := testutil.RequireTool(tb, "openssl")
	key, pub = filepath.Join(dir, "audit.key"), filepath.Join(dir, "audit.pub")
	gen := exec.Command(openssl, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
	if out, err := gen.CombinedOutput(); err != nil {
		tb.Fatalf("openssl genpkey: %v\n%s", err, out)
	}
	if err := os.Chmod(key, 0o600); err != nil {
		tb.Fatal(err)
	}
	if out, err := exec.Command(openssl, "pkey", "-in", key, "-pubout", "-out", pub).CombinedOutput(); err != nil {
		tb.Fatalf("openssl pkey -pubout: %v\n%s", err, out)
	}
	return key, pub
}

// VerifyAudit runs `firma audit verify --pubkey pub files…` and returns its combined output and
// exit status.
func VerifyAudit(tb testing.TB, pub string, files ...string) (string, int) {
	tb.Helper()
	return VerifyAuditExport(tb, pub, nil, files...)
}

// AuditFiles lists the sidecar's audit files, rotated ones first, in chain order.
func (s *Sidecar) AuditFiles(tb testing.TB) []string {
	tb.Helper()
	files, err := audit.Files(s.AuditPath)
	if err != nil {
		tb.Fatal(err)
	}
	return files
}

// Signal sends sig to the running sidecar (SIGHUP rotates the audit log).
func (s *Sidecar) Signal(tb testing.TB, sig syscall.Signal) {
	tb.Helper()
	p := s.process()
	if p == nil {
		tb.Fatal("sidecar not started")
	}
	p.Signal(sig)
}

// MountTmpfs mounts a tmpfs of size bytes on a fresh directory and unmounts it when the test ends.
func MountTmpfs(tb testing.TB, size int64) string {
	tb.Helper()
	testutil.RequireRoot(tb)
	dir := tb.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size="+strconv.FormatInt(size, 10)+",mode=0700"); err != nil {
		tb.Fatalf("mounting a tmpfs on %s: %v", dir, err)
	}
	tb.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			tb.Errorf("unmounting %s: %v", dir, err)
		}
	})
	return dir
}

// Rsyslog is an rsyslogd the test runs on loopback with a config it writes: it receives RFC 5424
// over UDP, TCP, TLS (client certificate required), a unix stream socket and a unix datagram
// socket, and writes what it receives to files the test reads.
type Rsyslog struct {
	Dir     string
	UDPPort uint16
	TCPPort uint16
	TLSPort uint16
	// UnixStream and UnixGram are the paths of its unix sockets.
	UnixStream, UnixGram string
	// CA signed the server's certificate and the client certificate a sink presents.
	CA                          *testutil.CA
	ClientCert, ClientKey       string
	conf, pidFile               string
	fieldsOut, protoOut, oldOut string
	cmd                         *exec.Cmd
	exited                      chan struct{}
}

// StartRsyslog writes a config into a temp dir and starts rsyslogd on it, waiting until it takes
// messages. It is stopped when the test ends.
func StartRsyslog(tb testing.TB) *Rsyslog {
	tb.Helper()
	bin := testutil.RequireTool(tb, "rsyslogd")
	dir := tb.TempDir()
	ports := testutil.FreePorts(tb, 3)
	r := &Rsyslog{Dir: dir, TCPPort: ports[0], TLSPort: ports[1], UDPPort: ports[2],
		UnixStream: filepath.Join(dir, "stream.sock"), UnixGram: filepath.Join(dir, "dgram.sock"),
		conf: filepath.Join(dir, "rsyslog.conf"), pidFile: filepath.Join(dir, "rsyslogd.pid"),
		fieldsOut: filepath.Join(dir, "fields.log"), protoOut: filepath.Join(dir, "rfc5424.log"),
		oldOut: filepath.Join(dir, "traditional.log")}
	r.CA = testutil.NewCA(tb, "rsyslog test CA")
	srvCert, srvKey := writeLeaf(tb, dir, "server", r.CA.Leaf(tb, "127.0.0.1", "localhost"))
	r.ClientCert, r.ClientKey = writeLeaf(tb, dir, "client", clientLeaf(tb, r.CA))
	if m, _ := filepath.Glob("/usr/lib/*/rsyslog/lmnsd_ossl.so"); len(m) == 0 {
		if os.Getenv("FIRMA_REQUIRE_ROOT") != "" {
			tb.Fatal("test needs rsyslog's TLS driver (Debian package rsyslog-openssl; FIRMA_REQUIRE_ROOT is set)")
		}
		tb.Skip("rsyslog's TLS driver (rsyslog-openssl) is not installed")
	}
	conf := fmt.Sprintf(`global(workDirectory=%[1]q maxMessageSize="64k"
  defaultNetstreamDriverCAFile=%[2]q defaultNetstreamDriverCertFile=%[3]q defaultNetstreamDriverKeyFile=%[4]q)
module(load="imudp")
module(load="imptcp")
module(load="imtcp" maxSessions="100")
module(load="imuxsock" SysSock.Use="off")
input(type="imudp" address="127.0.0.1" port="%[5]d")
input(type="imptcp" address="127.0.0.1" port="%[6]d")
input(type="imptcp" path=%[7]q unlink="on")
input(type="imuxsock" socket=%[8]q useSpecialParser="off" parseHostname="on" ignoreTimestamp="off")
input(type="imtcp" address="127.0.0.1" port="%[9]d" streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="x509/certvalid")
template(name="fields" type="string" string="%%pri%%|%%timereported:::date-rfc3339%%|%%hostname%%|%%app-name%%|%%procid%%|%%msgid%%|%%structured-data%%|%%msg%%\n")
if $app-name == "rsyslog-probe" then {
  action(type="omfile" file=%[10]q)
  stop
}
action(type="omfile" file=%[11]q template="fields")
action(type="omfile" file=%[12]q template="RSYSLOG_SyslogProtocol23Format")
action(type="omfile" file=%[13]q template="RSYSLOG_TraditionalFileFormat")
`, dir, r.CA.CertFile, srvCert, srvKey, r.UDPPort, r.TCPPort, r.UnixStream, r.UnixGram, r.TLSPort,
		filepath.Join(dir, "probe.log"), r.fieldsOut, r.protoOut, r.oldOut)
	if err := os.WriteFile(r.conf, []byte(conf), 0o600); err != nil {
		tb.Fatal(err)
	}
	if out, err := exec.Command(bin, "-N1", "-f", r.conf).CombinedOutput(); err != nil {
		tb.Fatalf("rsyslogd -N1 (config check): %v\n%s", err, out)
	}
	r.Start(tb)
	tb.Cleanup(func() { r.Stop(tb) })
	return r
}

func writeLeaf(tb testing.TB, dir, name string, c tls.Certificate) (cert, key string) {
	tb.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		tb.Fatal(err)
	}
	cert, key = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o644); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
	return cert, key
}

// clientLeaf is a client-auth certificate signed by ca.
func clientLeaf(tb testing.TB, ca *testutil.CA) tls.Certificate {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "firma sidecar"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		tb.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// Start runs rsyslogd (again, on the same ports and files) and waits until a probe message sent
// over TCP has been written, which means every input is up.
func (r *Rsyslog) Start(tb testing.TB) {
	tb.Helper()
	os.Remove(r.pidFile)
	out := &testutil.SyncBuffer{}
	r.cmd = exec.Command("rsyslogd", "-n", "-f", r.conf, "-i", r.pidFile)
	r.cmd.Stdout, r.cmd.Stderr = out, out
	r.exited = make(chan struct{})
	if err := r.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	exited := r.exited
	go func() { r.cmd.Wait(); close(exited) }()
	probe := filepath.Join(r.Dir, "probe.log")
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; ; i++ {
		select {
		case <-exited:
			tb.Fatalf("rsyslogd exited at start:\n%s", out.String())
		default:
		}
		if c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(r.TCPPort)))); err == nil {
			fmt.Fprintf(c, "<14>1 - - rsyslog-probe - - - probe %d\n", i)
			c.Close()
		}
		if b, _ := os.ReadFile(probe); len(b) > 0 {
			if _, err := os.Stat(r.UnixGram); err == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("rsyslogd did not take messages within 20s:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop sends SIGTERM and waits for rsyslogd to flush its files and exit.
func (r *Rsyslog) Stop(tb testing.TB) {
	tb.Helper()
	if r.cmd == nil {
		return
	}
	select {
	case <-r.exited:
		return
	default:
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
	case <-time.After(15 * time.Second):
		r.cmd.Process.Kill()
		<-r.exited
		tb.Errorf("rsyslogd did not exit on SIGTERM")
	}
}

// FieldsFile has one line per message: PRI|TIMESTAMP|HOSTNAME|APP-NAME|PROCID|MSGID|SD|MSG, as
// rsyslog parsed them.
func (r *Rsyslog) FieldsFile() string { return r.fieldsOut }

// RFC5424File is what rsyslog writes with its RFC 5424 file template; TraditionalFile with its
// default (RFC 3164-style) one. `firma audit verify --format syslog` reads both.
func (r *Rsyslog) RFC5424File() string     { return r.protoOut }
func (r *Rsyslog) TraditionalFile() string { return r.oldOut }

// Journald is a real systemd-journald that the test runs in a private mount namespace, on tmpfs:
// its socket is /run/systemd/journal/socket inside that namespace only. Processes started with
// Command share the namespace and so log to it.
type Journald struct {
	cmd    *exec.Cmd
	exited chan struct{}
	out    *testutil.SyncBuffer
}

// StartJournald starts systemd-journald (volatile storage, no rate limit, no kernel log) in a new
// mount namespace and waits for its socket. It is stopped when the test ends.
func StartJournald(tb testing.TB) *Journald {
	tb.Helper()
	testutil.RequireRoot(tb)
	testutil.RequireTool(tb, "unshare")
	testutil.RequireTool(tb, "nsenter")
	testutil.RequireTool(tb, "journalctl")
	bin := "/lib/systemd/systemd-journald"
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("FIRMA_REQUIRE_ROOT") != "" {
			tb.Fatalf("test needs %s: %v", bin, err)
		}
		tb.Skipf("%s not installed", bin)
	}
	dir := tb.TempDir()
	conf := filepath.Join(dir, "journald.conf")
	if err := os.WriteFile(conf, []byte("[Journal]\nStorage=volatile\nRateLimitIntervalSec=0\nRateLimitBurst=0\n"+
		"ForwardToSyslog=no\nForwardToKMsg=no\nForwardToConsole=no\nForwardToWall=no\nReadKMsg=no\n"), 0o644); err != nil {
		tb.Fatal(err)
	}
	// Everything journald touches is a tmpfs of this namespace; the host's /run and /var/log stay
	// as they are.
	script := `set -e
mount --make-rprivate /
for d in /run/systemd /run/log /var/log/journal; do [ -d "$d" ] && mount -t tmpfs tmpfs "$d"; done
mkdir -p /run/systemd/journal /etc/systemd
mount --bind "$1" /etc/systemd/journald.conf
exec ` + bin
	j := &Journald{out: &testutil.SyncBuffer{}, exited: make(chan struct{})}
	j.cmd = exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", conf)
	j.cmd.Stdout, j.cmd.Stderr = j.out, j.out
	if err := j.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	go func() { j.cmd.Wait(); close(j.exited) }()
	tb.Cleanup(func() {
		j.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-j.exited:
		case <-time.After(10 * time.Second):
			j.cmd.Process.Kill()
			<-j.exited
		}
	})
	sock := fmt.Sprintf("/proc/%d/root/run/systemd/journal/socket", j.cmd.Process.Pid)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			return j
		}
		select {
		case <-j.exited:
			tb.Fatalf("systemd-journald exited at start:\n%s", j.out.String())
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("systemd-journald: no socket within 20s:\n%s", j.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Wrap returns the command line that runs name with args inside journald's mount namespace.
func (j *Journald) Wrap(name string, args ...string) []string {
	return append(append(j.Prefix(), name), args...)
}

// Prefix is the command line that runs what follows it inside journald's mount namespace
// (SidecarOptions.Wrap).
func (j *Journald) Prefix() []string {
	return []string{"nsenter", "--target", strconv.Itoa(j.cmd.Process.Pid), "--mount", "--"}
}

// Export runs journalctl inside journald's namespace on its journal with args (e.g. "-o", "cat",
// "MESSAGE_ID=…") and returns what it prints.
func (j *Journald) Export(tb testing.TB, args ...string) []byte {
	tb.Helper()
	cmdline := j.Wrap("journalctl", append([]string{"--directory=/run/log/journal", "--no-pager"}, args...)...)
	out, err := exec.Command(cmdline[0], cmdline[1:]...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			tb.Fatalf("journalctl %v: %v\n%s", args, err, ee.Stderr)
		}
		tb.Fatalf("journalctl %v: %v", args, err)
	}
	return out
}

// VerifyAuditExport runs `firma audit verify --pubkey pub args…` with stdin as its input (for
// "-") and returns its combined output and exit status.
func VerifyAuditExport(tb testing.TB, pub string, stdin []byte, args ...string) (string, int) {
	tb.Helper()
	cmd := exec.Command(Binary(tb, "firma"), append([]string{"audit", "verify", "--pubkey", pub}, args...)...)
	cmd.Env = testutil.CleanEnv()
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err == nil {
		return string(out), 0
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		tb.Fatalf("firma audit verify: %v\n%s", err, out)
	}
	return string(out), ee.ExitCode()
}

// Messages returns the MSG of each message rsyslog received from app, in order.
func (r *Rsyslog) Messages(tb testing.TB, app string) []string {
	tb.Helper()
	data, err := os.ReadFile(r.fieldsOut)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		tb.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.SplitN(l, "|", 8); len(f) == 8 && f[3] == app {
			out = append(out, f[7])
		}
	}
	return out
}
