//go:build linux

package bench

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/openfirma/firma/bench/load"
	"github.com/openfirma/firma/internal/e2e"
	"github.com/openfirma/firma/internal/testutil"
)

// benchHost is the upstream's name: every system is asked for it, and resolves it to the
// upstream's 127.x address itself (firma through [sidecar.upstream] resolve, squid through its
// hosts_file, tinyproxy through an /etc/hosts of its own mount namespace).
const (
	benchHost = "bench.test"
	benchAddr = benchHost + ":443"
)

// benchPolicy lets every agent reach the bench host and nothing else.
const benchPolicy = `@id("bench-permit")
permit (principal, action == Firma::Action::"communication.external.send", resource)
when { resource has "host" && resource.host == "bench.test" };
`

// proxyAgentID is the identity of explicit-proxy clients, which run outside every cgroup.
const proxyAgentID = "bench-proxy-agent"

// running is a system started for the run.
type running struct {
	System
	caFile string           // the only CA the client trusts
	proxy  string           // explicit proxy URL; "" for none
	cgroup *testutil.Cgroup // where the client runs (firma transparent); nil: outside every cgroup
	// pid is the system's main process, restart replaces its processes with fresh ones; both are
	// nil for direct.
	pid     func() int
	restart func()
	// debugAddr is the sidecar's pprof listener when profiles are captured.
	debugAddr string
	// sidecar and auditPub are set for firma: the harness checks its audit log at the end.
	sidecar  *e2e.Sidecar
	auditPub string
	// logs is what the system has logged so far ("" for direct), quoted when a sample fails.
	logs func() string
}

// upstream is the bench upstream: a Go HTTPS server (h2 and HTTP/1.1) on a 127.x address, port
// 443, that counts the connections open on it.
type upstream struct {
	*load.Upstream
	addr netip.AddrPort
	live atomic.Int64
}

func startUpstream(tb testing.TB, ca *testutil.CA, key string) *upstream {
	tb.Helper()
	u := &upstream{Upstream: load.NewUpstream(key)}
	ln, err := net.Listen("tcp", netip.AddrPortFrom(testutil.LoopbackAddr(tb), 443).String())
	if err != nil {
		tb.Fatalf("upstream: %v", err)
	}
	u.addr = netip.MustParseAddrPort(ln.Addr().String())
	srv := &http.Server{
		Handler:           u.Upstream,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{ca.Leaf(tb, benchHost)}, NextProtos: []string{"h2", "http/1.1"}},
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       10 * time.Minute,
		ErrorLog:          log.New(io.Discard, "", 0), // clients that hang up mid-handshake are not news
		ConnState: func(_ net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				u.live.Add(1)
			case http.StateClosed, http.StateHijacked:
				u.live.Add(-1)
			}
		},
	}
	go srv.ServeTLS(ln, "", "")
	tb.Cleanup(func() { srv.Close() })
	return u
}

// startFirma runs a sidecar for sys: transparent systems get their client placed in its agent
// cgroup; explicit ones use its [sidecar.interceptor] listener from outside every cgroup. MITM
// systems intercept the bench host and inject the key from the sidecar's environment.
func (h *harness) startFirma(sys System) *running {
	tb := h.tb
	auditKey, auditPub := e2e.AuditKey(tb)
	opts := e2e.SidecarOptions{
		Policies:     map[string]string{"bench.cedar": benchPolicy},
		Resolve:      map[string]string{benchHost: h.up.addr.Addr().String()},
		UpstreamCA:   h.upCA.CertFile,
		LogLevel:     "info",
		AuditTOML:    fmt.Sprintf("signing_key_path = %q", auditKey),
		ProxyAgentID: proxyAgentID,
	}
	r := &running{System: sys, caFile: h.upCA.CertFile, auditPub: auditPub}
	if sys.MITM {
		caDir := filepath.Join(tb.TempDir(), "firma-ca")
		r.caFile = filepath.Join(caDir, "firma-ca.crt")
		opts.Env = []string{"FIRMA_BENCH_KEY=" + h.key}
		opts.ExtraTOML = fmt.Sprintf(`
[sidecar.ca]
dir = %q

[sidecar.interceptor.https_mitm]
enabled = true
intercept_hosts = [%q]
idle_timeout = %q

[[sidecar.credentials]]
host = %q
mode = "basic"
header = %q
value_from_env = "FIRMA_BENCH_KEY"
`, caDir, benchHost, IdleTimeout, benchHost, load.KeyHeader)
	}
	// The bench opens connections far faster, and holds far more at once, than [sidecar.limits]'
	// defaults let one agent: they would refuse the new-connection and idle workloads.
	opts.ExtraTOML += `
[sidecar.limits]
max_flows = 20000
new_flows_per_second = 100000
new_flows_burst = 100000
`
	if h.profileDir != "" {
		r.debugAddr = fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(tb))
		opts.ExtraTOML += "\n" + DebugTOML(r.debugAddr)
	}
	s := e2e.NewSidecar(tb, opts)
	r.sidecar = s
	if sys.Proxy {
		r.proxy = fmt.Sprintf("http://127.0.0.1:%d", s.ProxyPort)
	} else {
		r.cgroup = s.Agent
	}
	r.pid = s.PID
	r.logs = s.Logs
	r.restart = func() {
		s.Stop(tb)
		s.Start(tb)
	}
	return r
}

// peer is a proxy process the harness runs (tinyproxy, squid), restartable, stopped at the end.
type peer struct {
	tb       testing.TB
	name     string
	dir      string
	port     uint16
	argv     []string
	logFiles []string // the logs it writes itself, besides its output

	mu   sync.Mutex
	proc *e2e.Process
}

func newPeer(tb testing.TB, name, dir string, port uint16, logFiles []string, argv ...string) *peer {
	p := &peer{tb: tb, name: name, dir: dir, port: port, logFiles: logFiles, argv: argv}
	tb.Cleanup(p.stop)
	p.start()
	return p
}

// start runs the process and waits until its port accepts connections.
func (p *peer) start() {
	p.tb.Helper()
	proc := e2e.StartProcess(p.tb, p.dir, testutil.CleanEnv(), "", time.Second, p.argv[0], p.argv[1:]...)
	p.mu.Lock()
	p.proc = proc
	p.mu.Unlock()
	addr := fmt.Sprintf("127.0.0.1:%d", p.port)
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			p.tb.Fatalf("%s: not listening on %s after 20s: %v\n%s", p.name, addr, err, proc.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *peer) stop() {
	p.mu.Lock()
	proc := p.proc
	p.mu.Unlock()
	if proc != nil {
		proc.Stop(p.tb, 20*time.Second)
	}
}

func (p *peer) restart() {
	p.stop()
	p.start()
}

func (p *peer) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.proc.PID()
}

// logs is the process's output followed by its log files.
func (p *peer) logs() string {
	p.mu.Lock()
	var b strings.Builder
	b.WriteString(p.proc.Logs())
	p.mu.Unlock()
	for _, f := range p.logFiles {
		text, _ := os.ReadFile(f)
		fmt.Fprintf(&b, "==> %s <==\n%s", f, text)
	}
	return b.String()
}

func (p *peer) running(sys System, caFile string) *running {
	return &running{System: sys, caFile: caFile, proxy: fmt.Sprintf("http://127.0.0.1:%d", p.port), pid: p.pid, restart: p.restart, logs: p.logs}
}

// peerDir is a working directory that a peer dropping privileges can use once it is chowned:
// under /tmp directly, since a test's temp dirs are 0700 root.
func peerDir(tb testing.TB, name string) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "firma-bench-"+name+"-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if os.Getenv("KEEP") == "" {
			os.RemoveAll(dir)
		}
	})
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	return dir
}

func chownTree(tb testing.TB, dir string, owner *user.User) {
	tb.Helper()
	uid, _ := strconv.Atoi(owner.Uid)
	gid, _ := strconv.Atoi(owner.Gid)
	err := filepath.Walk(dir, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, uid, gid)
	})
	if err != nil {
		tb.Fatal(err)
	}
}

// startTinyproxy runs tinyproxy in a mount namespace whose /etc/hosts names the upstream.
func (h *harness) startTinyproxy() *running {
	tb := h.tb
	dir := peerDir(tb, "tinyproxy")
	port := testutil.FreePort(tb)
	hosts := filepath.Join(dir, "hosts")
	writeFile(tb, hosts, fmt.Sprintf("127.0.0.1 localhost\n%s %s\n", h.up.addr.Addr(), benchHost), 0o644)
	logFile := filepath.Join(dir, "tinyproxy.log")
	conf := filepath.Join(dir, "tinyproxy.conf")
	writeFile(tb, conf, TinyproxyConfig{Port: port, MaxClients: h.plan.IdleConns + load.FileMargin, LogFile: logFile}.Render(), 0o644)
	p := newPeer(tb, "tinyproxy", dir, port, []string{logFile}, "unshare", "-m", "sh", "-c", `mount --bind "$0" /etc/hosts && exec "$@"`,
		hosts, h.tools.tinyproxy, "-d", "-c", conf)
	return p.running(Tinyproxy, h.upCA.CertFile)
}

// startSquid runs squid as a CONNECT proxy, or with bump as an ssl-bump MITM with a CA and a
// certificate database made for this run.
func (h *harness) startSquid(bump bool) *running {
	tb := h.tb
	proxyUser, err := user.Lookup("proxy")
	if err != nil {
		tb.Fatalf("squid drops privileges to the user proxy: %v", err)
	}
	name := "squid"
	if bump {
		name = "squid-bump"
	}
	dir := peerDir(tb, name)
	port := testutil.FreePort(tb)
	cfg := SquidConfig{Dir: dir, Port: port, MaxFDs: openFilesLimit(tb), HostsFile: filepath.Join(dir, "hosts")}
	writeFile(tb, cfg.HostsFile, fmt.Sprintf("%s %s\n", h.up.addr.Addr(), benchHost), 0o644)
	caFile := h.upCA.CertFile
	if bump {
		ca := testutil.NewCA(tb, "squid bench CA")
		keyDER, err := x509.MarshalPKCS8PrivateKey(ca.Key)
		if err != nil {
			tb.Fatal(err)
		}
		cfg.Bump = &SquidBump{
			CACert:     filepath.Join(dir, "ca.pem"),
			CAKey:      filepath.Join(dir, "ca.key"),
			SSLDB:      filepath.Join(dir, "ssl_db"),
			Certgen:    h.tools.certgen,
			UpstreamCA: filepath.Join(dir, "upstream-ca.pem"),
			KeyHeader:  load.KeyHeader,
			Key:        h.key,
		}
		writeFile(tb, cfg.Bump.CACert, string(ca.CertPEM), 0o644)
		writeFile(tb, cfg.Bump.CAKey, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})), 0o600)
		writeFile(tb, cfg.Bump.UpstreamCA, string(h.upCA.CertPEM), 0o644)
		if out, err := exec.Command(h.tools.certgen, "-c", "-s", cfg.Bump.SSLDB, "-M", "16MB").CombinedOutput(); err != nil {
			tb.Fatalf("initialising squid's certificate database: %v\n%s", err, out)
		}
		caFile = cfg.Bump.CACert
	}
	text, err := cfg.Render()
	if err != nil {
		tb.Fatal(err)
	}
	writeFile(tb, filepath.Join(dir, "squid.conf"), text, 0o600)
	chownTree(tb, dir, proxyUser)
	p := newPeer(tb, name, dir, port, []string{filepath.Join(dir, "cache.log"), filepath.Join(dir, "access.log")}, h.tools.squid, "-N", "-f", filepath.Join(dir, "squid.conf"))
	sys := Squid
	if bump {
		sys = SquidSSLBump
	}
	return p.running(sys, caFile)
}

// openFilesLimit is this process's RLIMIT_NOFILE, which the peers inherit.
func openFilesLimit(tb testing.TB) int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		tb.Fatal(err)
	}
	return int(lim.Cur)
}

// tools are the peers' programs, installed with apt-get when missing.
type tools struct {
	tinyproxy, squid, certgen string
	versions                  []string
}

// squidCertgen is where Debian's squid-openssl puts the helper that mints ssl-bump leaves.
const squidCertgen = "/usr/lib/squid/security_file_certgen"

func findTools(tb testing.TB, plan Plan) tools {
	tb.Helper()
	var t tools
	var needTiny, needSquid bool
	for _, s := range plan.Systems {
		needTiny = needTiny || s == Tinyproxy
		needSquid = needSquid || s == Squid || s == SquidSSLBump
	}
	var missing []string
	if needTiny {
		if _, err := exec.LookPath("tinyproxy"); err != nil {
			missing = append(missing, "tinyproxy")
		}
	}
	if needSquid {
		// ssl-bump needs the OpenSSL build; Debian's plain squid package lacks the certgen helper.
		if _, err := os.Stat(squidCertgen); err != nil {
			missing = append(missing, "squid-openssl")
		}
	}
	if len(missing) > 0 {
		aptInstall(tb, missing)
	}
	if needTiny {
		t.tinyproxy = lookTool(tb, "tinyproxy")
		t.versions = append(t.versions, firstLine(tb, t.tinyproxy, "-v"))
	}
	if needSquid {
		t.squid = lookTool(tb, "squid")
		t.certgen = squidCertgen
		v := firstLine(tb, t.squid, "-v") // "Squid Cache: Version 5.7"
		t.versions = append(t.versions, "squid "+v[strings.LastIndex(v, " ")+1:])
	}
	return t
}

func aptInstall(tb testing.TB, pkgs []string) {
	tb.Helper()
	fmt.Fprintf(os.Stderr, "bench: installing %s with apt-get\n", strings.Join(pkgs, " "))
	install := func() ([]byte, error) {
		cmd := exec.Command("apt-get", append([]string{"install", "-y", "--no-install-recommends"}, pkgs...)...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		return cmd.CombinedOutput()
	}
	if _, err := install(); err == nil {
		return
	}
	if out, err := exec.Command("apt-get", "update").CombinedOutput(); err != nil {
		tb.Fatalf("apt-get update: %v\n%s", err, out)
	}
	if out, err := install(); err != nil {
		tb.Fatalf("apt-get install %s: %v\n%s", strings.Join(pkgs, " "), err, out)
	}
}

func lookTool(tb testing.TB, name string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		tb.Fatalf("%s: %v", name, err)
	}
	return p
}

func firstLine(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}
