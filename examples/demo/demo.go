//go:build linux

// Package demo is `firma demo`: a self-contained run of the real enforcement path. It starts fake
// upstreams on loopback addresses (api.anthropic.com, paste.rs, example.com), a sidecar with the
// embedded default policy and mapping rules, attaches the kernel programs to a fresh cgroup, runs
// unmodified curl inside it with no proxy variables, and prints what happened and what the audit
// log recorded. It needs root and nothing from the network.
package demo

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/daemon"
	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/internal/cgroup"
)

// agentID is the identity the demo gives its cgroup: the shipped claude-code policy applies.
const agentID = "claude-code"

// Run runs the demo, writing the story to out. keep leaves the work dir for inspection.
func Run(ctx context.Context, out io.Writer, keep bool) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("the demo attaches eBPF programs to a cgroup: run it as root (sudo)")
	}
	curl, err := exec.LookPath("curl")
	if err != nil {
		return errors.New("the demo runs curl inside the enforced cgroup: install curl")
	}
	dir, err := os.MkdirTemp("", "firma-demo-")
	if err != nil {
		return err
	}
	if !keep {
		defer os.RemoveAll(dir)
	}
	var undo []func()
	defer func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}()

	ca, err := newCA()
	if err != nil {
		return err
	}
	caFile := filepath.Join(dir, "upstream-ca.pem")
	if err := os.WriteFile(caFile, ca.pem, 0o644); err != nil {
		return err
	}
	ups := map[string]*upstream{}
	for i, name := range []string{"api.anthropic.com", "paste.rs", "example.com"} {
		addr := netip.AddrFrom4([4]byte{127, 0, 77, byte(10 + i)})
		tlsOn := name != "example.com"
		u, err := startUpstream(name, addr, tlsOn, ca)
		if err != nil {
			return err
		}
		undo = append(undo, u.close)
		ups[name] = u
	}

	mount, err := cgroup.FindV2Mount()
	if err != nil {
		return err
	}
	// Not a .slice: systemd would read the dashes as nesting.
	name := fmt.Sprintf("firma-demo-%d", os.Getpid())
	parent := name
	agentCg := parent + "/agent.scope"
	if err := os.MkdirAll(filepath.Join(mount, agentCg), 0o755); err != nil {
		return fmt.Errorf("creating the demo cgroup: %w", err)
	}
	undo = append(undo, func() {
		os.WriteFile(filepath.Join(mount, parent, "cgroup.kill"), []byte("1"), 0)
		time.Sleep(50 * time.Millisecond)
		os.Remove(filepath.Join(mount, agentCg))
		os.Remove(filepath.Join(mount, parent))
	})

	port, err := freePort()
	if err != nil {
		return err
	}
	dnsPort := port
	for dnsPort == port {
		if dnsPort, err = freePort(); err != nil {
			return err
		}
	}
	cfg := daemon.DefaultConfig()
	cfg.Transparent.Cgroup = parent
	cfg.Transparent.Port = port
	cfg.Transparent.DNSPort = dnsPort
	cfg.Transparent.PinDir = "/sys/fs/bpf/" + name
	cfg.Interceptor.ListenAddr = ""
	cfg.Control.Socket = filepath.Join(dir, "control.sock")
	cfg.Agents = []daemon.AgentConfig{{Cgroup: agentCg, AgentID: agentID, SessionID: "demo"}}
	cfg.Upstream.CAFile = caFile
	cfg.Upstream.AllowCIDRs = []string{"127.0.77.0/24"}
	cfg.Upstream.Resolve = map[string]string{}
	for name, u := range ups {
		cfg.Upstream.Resolve[name] = u.addr.String()
	}
	cfg.Audit.FilePath = filepath.Join(dir, "audit.jsonl")
	if err := cfg.Validate(); err != nil {
		return err
	}
	undo = append(undo, func() { bpf.Cleanup(cfg.Transparent.PinDir) })

	logf, err := os.Create(filepath.Join(dir, "sidecar.log"))
	if err != nil {
		return err
	}
	undo = append(undo, func() { logf.Close() })
	log := zerolog.New(logf).With().Timestamp().Logger()
	s, err := daemon.New(cfg, log)
	if err != nil {
		return err
	}
	undo = append(undo, func() { s.Close() })
	sctx, cancel := context.WithCancel(ctx)
	undo = append(undo, cancel)
	if err := s.Start(sctx); err != nil {
		return err
	}

	fmt.Fprintf(out, "firma demo: sidecar running; eBPF programs attached to %s\n", filepath.Join(mount, parent))
	fmt.Fprintf(out, "Running curl as agent %q inside %s, with no proxy variables.\n\n", agentID, agentCg)
	steps := []struct {
		say  string
		args []string
	}{
		{"an LLM API the default policy permits", []string{"https://api.anthropic.com/v1/messages"}},
		{"a paste site every agent is forbidden: the lookup itself is judged", []string{"https://paste.rs/"}},
		{"the same site dialed by address: judged by its TLS server name", []string{"--resolve", "paste.rs:443:203.0.113.9", "https://paste.rs/"}},
		{"a host no mapping rule classifies, by address: plain HTTP gets a 403", []string{"--resolve", "example.com:80:203.0.113.10", "http://example.com/"}},
	}
	for i, st := range steps {
		fmt.Fprintf(out, "%d. %s\n   $ curl %s\n", i+1, st.say, strings.Join(st.args, " "))
		args := append([]string{"-sS", "--max-time", "10", "--cacert", caFile}, st.args...)
		res := runIn(ctx, filepath.Join(mount, agentCg), curl, args...)
		fmt.Fprintf(out, "   %s\n\n", indent(res))
	}
	fmt.Fprintln(out, "What the upstreams saw:")
	for _, name := range []string{"api.anthropic.com", "paste.rs", "example.com"} {
		fmt.Fprintf(out, "   %-18s %d connection(s)\n", name, ups[name].conns.Load())
	}
	if err := s.Close(); err != nil {
		return err
	}
	fmt.Fprintf(out, "\nThe audit log (%s) has one record per decision, each naming the process:\n", cfg.Audit.FilePath)
	if err := printAudit(out, cfg.Audit.FilePath); err != nil {
		return err
	}
	if keep {
		fmt.Fprintf(out, "\nKept %s (config, audit log, sidecar log).\n", dir)
	}
	return nil
}

// runIn runs a command cloned straight into the cgroup with a clean environment and returns its
// output or its failure.
func runIn(ctx context.Context, cgroup, name string, args ...string) string {
	fd, err := syscall.Open(cgroup, syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return "error: " + err.Error()
	}
	defer syscall.Close(fd)
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=/nonexistent"}
	b, err := cmd.CombinedOutput()
	res := strings.TrimSpace(string(b))
	if err != nil {
		return res + "   [" + err.Error() + "]"
	}
	return res
}

func printAudit(out io.Writer, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var prev string
	repeats := 0
	flush := func() {
		if prev == "" {
			return
		}
		if repeats > 1 {
			prev += fmt.Sprintf(" (x%d)", repeats)
		}
		fmt.Fprintln(out, prev)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var ev audit.Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			return err
		}
		if ev.Kind != audit.KindDecision || ev.Envelope == nil {
			continue
		}
		a, in := ev.Envelope.Agent, ev.Envelope.Intent
		action := "-"
		if in.ActionClass != nil {
			action = *in.ActionClass
		}
		what := strings.TrimSpace(in.Resource.Method + " " + in.Resource.Host + in.Resource.Path)
		line := fmt.Sprintf("   %-5s %-7s %-34s agent=%s exe=%s action=%s policies=%v reason=%q",
			ev.Decision.Outcome, ev.Envelope.Transport.Mode, what, a.AgentID, a.Exe, action,
			ev.Decision.MatchedPolicies, ev.Decision.Reason)
		if line == prev {
			repeats++
			continue
		}
		flush()
		prev, repeats = line, 1
	}
	flush()
	return nil
}

func indent(s string) string { return strings.ReplaceAll(s, "\n", "\n   ") }

type upstream struct {
	addr  netip.Addr
	srv   *http.Server
	conns atomic.Int64
}

func (u *upstream) close() { u.srv.Close() }

func startUpstream(name string, addr netip.Addr, useTLS bool, ca *demoCA) (*upstream, error) {
	port := 80
	if useTLS {
		port = 443
	}
	ln, err := net.Listen("tcp", netip.AddrPortFrom(addr, uint16(port)).String())
	if err != nil {
		return nil, fmt.Errorf("fake %s: %w", name, err)
	}
	u := &upstream{addr: addr}
	u.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "200 from the fake %s: %s %s\n", name, r.Method, r.URL.Path)
		}),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				u.conns.Add(1)
			}
		},
		ReadHeaderTimeout: 10 * time.Second,
	}
	if useTLS {
		leaf, err := ca.leaf(name)
		if err != nil {
			return nil, err
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{leaf}})
	}
	go u.srv.Serve(ln)
	return u, nil
}

type demoCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newCA() (*demoCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "firma demo upstream CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &demoCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

func (ca *demoCA) leaf(name string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func freePort() (uint16, error) {
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		p := uint16(l.Addr().(*net.TCPAddr).Port)
		l.Close()
		if l6, err := net.Listen("tcp", fmt.Sprintf("[::1]:%d", p)); err == nil {
			l6.Close()
			return p, nil
		}
	}
	return 0, errors.New("no free port")
}
