//go:build linux

// Package demo is `firma demo`: a self-contained run of the real enforcement path. It starts fake
// upstreams on loopback addresses (api.anthropic.com, paste.rs, example.com, api.openai.com), runs
// the real sidecar as a child process (`firma sidecar -c firma.toml`, the embedded default policy,
// HTTPS MITM for api.openai.com with an API key only the sidecar holds), attaches the kernel
// programs to a fresh cgroup, and runs unmodified curl inside it as an unprivileged user with no
// proxy variables. It shows what each request became, `firma sidecar status`, the sidecar killed
// (connections refused, never let through) and restarted, the audit log, and `firma audit verify`
// passing on it.
//
// It needs root and nothing from the network: every address it uses, original destinations
// included, is on 127.0.0.0/8. Everything it creates — cgroup, pinned programs, processes, files —
// is removed when it ends, however it ends (an error, SIGINT, a reader that went away).
package demo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/daemon/metrics"
	"github.com/openfirma/firma/internal/cgroup"
	"github.com/openfirma/firma/internal/fake"
)

// agentID is the identity the demo gives its cgroup: the shipped claude-code policy applies.
const agentID = "claude-code"

// keyEnv is the sidecar's environment variable holding the demo's OpenAI key: the sidecar has it,
// the agent never does.
const keyEnv = "FIRMA_DEMO_OPENAI_KEY"

// agentNameserver is the agent's resolver: on loopback, like every address the demo uses; the
// kernel sends its port 53 to the sidecar.
const agentNameserver = "127.0.77.53"

// nobody is the user the agent's commands run as.
const nobody = 65534

// upstream names, in the order they are reported.
var upstreamNames = []string{"api.anthropic.com", "paste.rs", "example.com", "api.openai.com"}

// demo is one run's state.
type demo struct {
	out     *stopWriter
	opt     Options
	dir     string
	cfgPath string
	logPath string
	mount   string
	agentCg string
	caFile  string
	// resolvConf is the agent's /etc/resolv.conf: a nameserver on loopback, which the kernel
	// redirects to the sidecar's resolver like any other.
	resolvConf string
	metrics    string // the sidecar's [sidecar.metrics] listen_addr
	key        string
	ups        map[string]*fake.Upstream
	sidecar    *sidecarProc
	spawn      *spawner
}

// Run runs the demo, writing the story to out.
func Run(ctx context.Context, out io.Writer, opt Options) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("the demo attaches eBPF programs to a cgroup: run it as root (sudo)")
	}
	curl, err := exec.LookPath("curl")
	if err != nil {
		return errors.New("the demo runs curl inside the enforced cgroup: install curl")
	}
	if opt.Firma == "" {
		return errors.New("demo: no firma binary to run the sidecar with")
	}
	d := &demo{out: &stopWriter{w: out}, opt: opt, ups: map[string]*fake.Upstream{}, spawn: newSpawner()}
	undo := []func(){d.spawn.close}
	defer func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}()
	if d.dir, err = os.MkdirTemp("", "firma-demo-"); err != nil {
		return err
	}
	if !opt.Keep {
		undo = append(undo, func() { os.RemoveAll(d.dir) })
	}
	// The agent runs as nobody: it must reach the certificates it trusts (and nothing else of the
	// sidecar's: the audit dir is 0700, the keys 0600, the CA key 0600).
	if err := os.Chmod(d.dir, 0o755); err != nil {
		return err
	}
	if err := d.startUpstreams(&undo); err != nil {
		return err
	}
	if err := d.makeCgroup(&undo); err != nil {
		return err
	}
	pinDir, err := d.writeConfig()
	if err != nil {
		return err
	}
	undo = append(undo, func() { bpf.Cleanup(pinDir) })
	undo = append(undo, func() { d.stopSidecar() })

	if err := d.startSidecar(ctx); err != nil {
		return err
	}
	caCert := filepath.Join(d.dir, "ca", "firma-ca.crt")
	d.printf("firma demo: sidecar running (pid %d); eBPF programs attached to %s\n", d.sidecar.pid(), filepath.Join(d.mount, filepath.Dir(d.agentCg)))
	d.printf("Running curl as agent %q (uid %d) inside %s, with no proxy variables;\n", agentID, nobody, d.agentCg)
	d.printf("its resolver is %s, and every address here is on 127.0.0.0/8: nothing leaves the machine.\n\n", agentNameserver)

	steps := []struct {
		say  string
		args []string
	}{
		{"an LLM API the default policy permits: tunnelled, judged by its TLS server name",
			[]string{"--cacert", d.caFile, "https://api.anthropic.com/v1/messages"}},
		{"a paste site every agent is forbidden: the lookup itself is judged",
			[]string{"--cacert", d.caFile, "https://paste.rs/"}},
		{"the same site dialed by address: judged by its TLS server name",
			[]string{"--cacert", d.caFile, "--resolve", "paste.rs:443:127.0.77.99", "https://paste.rs/"}},
		{"a host no mapping rule classifies, by address: plain HTTP gets a 403",
			[]string{"--resolve", "example.com:80:127.0.77.98", "http://example.com/"}},
		{"HTTPS MITM: api.openai.com is intercepted, every request judged, and the sidecar's API key\n" +
			"   replaces the agent's own (the agent trusts firma's CA, readable by any user: " + caCert + ")",
			[]string{"--cacert", caCert, "-H", "Authorization: Bearer sk-agent-own-key", "https://api.openai.com/v1/models"}},
	}
	for i, st := range steps {
		if err := d.step(ctx, i+1, st.say, curl, st.args); err != nil {
			return err
		}
	}
	d.printf("   The key is in the sidecar's environment ($%s) only; the agent ran with PATH and HOME.\n\n", keyEnv)

	d.printf("6. the operator's view: firma sidecar status (reads /healthz and /metrics on %s)\n", d.metrics)
	d.printf("   $ firma sidecar status -c %s\n", d.cfgPath)
	status, _ := d.firma(ctx, "sidecar", "status", "-c", d.cfgPath)
	d.printf("   %s\n\n", indent(status))

	before := d.ups["api.anthropic.com"].Conns()
	pid := d.sidecar.pid()
	d.printf("7. the sidecar crashes: enforcement stays, the programs are pinned\n   $ kill -9 %d\n", pid)
	if err := d.sidecar.kill(); err != nil {
		return err
	}
	if err := d.step(ctx, 0, "", curl, []string{"--cacert", d.caFile, "--resolve", "api.anthropic.com:443:127.0.77.10",
		"https://api.anthropic.com/v1/messages"}); err != nil {
		return err
	}
	d.printf("   refused: the kernel still sends the agent to the sidecar's port, where nothing listens\n")
	d.printf("   connections that reached api.anthropic.com meanwhile: %d\n\n", d.ups["api.anthropic.com"].Conns()-before)

	d.printf("8. the sidecar restarts on the same pins, and the agent is served again\n   $ firma sidecar -c %s\n", d.cfgPath)
	if err := d.startSidecar(ctx); err != nil {
		return err
	}
	if err := d.step(ctx, 0, "", curl, []string{"--cacert", d.caFile, "https://api.anthropic.com/v1/messages"}); err != nil {
		return err
	}
	d.printf("\n")
	if err := d.stopSidecar(); err != nil {
		return err
	}

	d.printf("What the upstreams saw:\n")
	for _, name := range upstreamNames {
		d.printf("   %-18s %d connection(s)\n", name, d.ups[name].Conns())
	}
	for _, r := range d.ups["api.openai.com"].Requests() {
		d.printf("   api.openai.com got %s %s with Authorization: %s\n", r.Method, r.Path, mask(r.Header.Get("Authorization"), d.key))
	}
	auditPath := filepath.Join(d.dir, "audit", "audit.jsonl")
	d.printf("\nThe audit log (%s) has one record per decision, each naming the process:\n", auditPath)
	if err := printAudit(d.out, auditPath); err != nil {
		return err
	}
	files, err := audit.Files(auditPath)
	if err != nil {
		return err
	}
	pub := audit.PublicKeyPath(filepath.Join(d.dir, "audit", "audit.key"))
	d.printf("\nEvery line is chained to the one before and signed, across the crash:\n   $ firma audit verify --pubkey %s %s\n", pub, strings.Join(files, " "))
	verify, verr := d.firma(ctx, append([]string{"audit", "verify", "--pubkey", pub}, files...)...)
	d.printf("   %s\n", indent(verify))
	if verr != nil {
		return fmt.Errorf("firma audit verify: %w", verr)
	}
	if opt.Keep {
		d.printf("\nKept %s (firma.toml, CA, audit log and key, sidecar.log).\n", d.dir)
	}
	return d.out.err
}

func (d *demo) printf(format string, a ...any) { fmt.Fprintf(d.out, format, a...) }

// step runs curl in the agent cgroup and prints what it said; n > 0 numbers the step. It stops the
// demo once ctx ends or nobody reads its output any more.
func (d *demo) step(ctx context.Context, n int, say, curl string, args []string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d.out.err != nil {
		return fmt.Errorf("writing the demo's output: %w", d.out.err)
	}
	if n > 0 {
		d.printf("%d. %s\n", n, say)
	}
	d.printf("   $ curl %s\n", shellJoin(args))
	res := runIn(ctx, filepath.Join(d.mount, d.agentCg), d.resolvConf, curl, append([]string{"-sS", "--max-time", "10"}, args...)...)
	d.printf("   %s\n", indent(res))
	if n > 0 {
		d.printf("\n")
	}
	return ctx.Err()
}

// startUpstreams starts the fake upstreams, api.openai.com answering whether it saw the sidecar's
// key.
func (d *demo) startUpstreams(undo *[]func()) error {
	ca, err := fake.NewCA("firma demo upstream CA")
	if err != nil {
		return err
	}
	d.resolvConf = filepath.Join(d.dir, "resolv.conf")
	if err := os.WriteFile(d.resolvConf, []byte("nameserver "+agentNameserver+"\n"), 0o644); err != nil {
		return err
	}
	d.caFile = filepath.Join(d.dir, "upstream-ca.pem")
	if err := os.WriteFile(d.caFile, ca.CertPEM, 0o644); err != nil {
		return err
	}
	b := make([]byte, 12)
	rand.Read(b)
	d.key = "sk-firma-demo-" + hex.EncodeToString(b)
	for i, name := range upstreamNames {
		addr := netip.AddrFrom4([4]byte{127, 0, 77, byte(10 + i)})
		var u *fake.Upstream
		if name == "example.com" {
			u, err = fake.NewHTTP(name, netip.AddrPortFrom(addr, 80))
		} else {
			u, err = fake.NewHTTPS(name, netip.AddrPortFrom(addr, 443), ca, name)
		}
		if err != nil {
			return err
		}
		*undo = append(*undo, func() { u.Close() })
		d.ups[name] = u
	}
	d.ups["api.openai.com"].SetHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		switch got := r.Header.Get("Authorization"); got {
		case "Bearer " + d.key:
			fmt.Fprintf(w, "api.openai.com: saw the sidecar's key (%s); the agent's own header never arrived\n", mask(got, d.key))
		default:
			fmt.Fprintf(w, "api.openai.com: did NOT see the sidecar's key (Authorization: %q)\n", got)
		}
	}), false)
	return nil
}

// makeCgroup creates the enforced parent and the agent's cgroup below it.
func (d *demo) makeCgroup(undo *[]func()) error {
	mount, err := cgroup.FindV2Mount()
	if err != nil {
		return err
	}
	d.mount = mount
	// Not a .slice: systemd would read the dashes as nesting.
	parent := fmt.Sprintf("firma-demo-%d", os.Getpid())
	d.agentCg = parent + "/agent.scope"
	if err := os.MkdirAll(filepath.Join(mount, d.agentCg), 0o755); err != nil {
		return fmt.Errorf("creating the demo cgroup: %w", err)
	}
	*undo = append(*undo, func() {
		os.WriteFile(filepath.Join(mount, parent, "cgroup.kill"), []byte("1"), 0)
		// cgroup.kill is asynchronous: the cgroup empties, then can go.
		for range 100 {
			if err := os.Remove(filepath.Join(mount, d.agentCg)); err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		os.Remove(filepath.Join(mount, parent))
	})
	return nil
}

// writeConfig writes firma.toml (every path in it relative to it) and the audit signing key, and
// returns the pin dir.
func (d *demo) writeConfig() (string, error) {
	parent := filepath.Dir(d.agentCg)
	ports, err := freePorts(3)
	if err != nil {
		return "", err
	}
	d.metrics = fmt.Sprintf("127.0.0.1:%d", ports[2])
	if err := os.Mkdir(filepath.Join(d.dir, "audit"), 0o700); err != nil {
		return "", err
	}
	if _, err := audit.GenerateSigningKey(filepath.Join(d.dir, "audit", "audit.key")); err != nil {
		return "", err
	}
	var resolve []string
	for _, name := range upstreamNames {
		resolve = append(resolve, fmt.Sprintf("%q = %q", name, d.ups[name].Addr.Addr().String()))
	}
	pinDir := "/sys/fs/bpf/" + parent
	cfg := fmt.Sprintf(`# firma demo: the sidecar of one run of firma demo. Paths are relative to this file.
[sidecar]
log_level = "info"

[sidecar.transparent]
cgroup = %q
port = %d
dns_port = %d
pin_dir = %q

[[sidecar.agents]]
cgroup = %q
agent_id = %q
session_id = "demo"

[sidecar.interceptor]
listen_addr = ""   # no explicit proxy: the agent is enforced by the kernel

[sidecar.interceptor.https_mitm]
enabled = true
intercept_hosts = ["api.openai.com"]

[sidecar.ca]
dir = "ca"

[[sidecar.credentials]]
host = "api.openai.com"
mode = "bearer"
value_from_env = %q

[sidecar.control]
socket = "control.sock"

[sidecar.upstream]
ca_file = "upstream-ca.pem"
allow_cidrs = ["127.0.77.0/24"]
resolve = { %s }

[sidecar.audit]
file_path = "audit/audit.jsonl"
signing_key_path = "audit/audit.key"

[sidecar.metrics]
listen_addr = %q
`, parent, ports[0], ports[1], pinDir, d.agentCg, agentID, keyEnv, strings.Join(resolve, ", "), d.metrics)
	d.cfgPath = filepath.Join(d.dir, "firma.toml")
	d.logPath = filepath.Join(d.dir, "sidecar.log")
	return pinDir, os.WriteFile(d.cfgPath, []byte(cfg), 0o644)
}

// sidecarProc is the sidecar child process.
type sidecarProc struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

func (p *sidecarProc) pid() int { return p.cmd.Process.Pid }

func (p *sidecarProc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// kill stops the sidecar as a crash would.
func (p *sidecarProc) kill() error {
	if !p.running() {
		return errors.New("the sidecar had already exited")
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
	return nil
}

// startSidecar runs `firma sidecar -c firma.toml` with the API key in its environment only, and
// waits until its /healthz says ready.
func (d *demo) startSidecar(ctx context.Context) error {
	logf, err := os.OpenFile(d.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(d.opt.Firma, "sidecar", "-c", d.cfgPath)
	cmd.Dir = d.dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), keyEnv + "=" + d.key}
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group (a terminal's ^C reaches the demo, which stops it), and killed with the
	// demo should the demo die first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := d.spawn.do(cmd.Start); err != nil {
		return fmt.Errorf("starting the sidecar: %w", err)
	}
	p := &sidecarProc{cmd: cmd, exited: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.exited)
	}()
	d.sidecar = p
	deadline := time.After(30 * time.Second)
	for {
		if h, err := metrics.FetchHealth(ctx, d.metrics, time.Second); err == nil && h.Ready {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("the sidecar exited (%v):\n%s", cmd.ProcessState, tail(d.logPath))
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline:
			return fmt.Errorf("the sidecar was not ready after 30s:\n%s", tail(d.logPath))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// spawner starts processes from an OS thread of its own that lives as long as the demo. The
// kernel sends a child its Pdeathsig when the thread that forked it ends, and Go ends a thread
// whenever a goroutine exits locked to it (as runIn's do): a sidecar forked from any other thread
// could be killed in the middle of the demo.
type spawner struct {
	reqs chan func()
	done chan struct{}
}

func newSpawner() *spawner {
	s := &spawner{reqs: make(chan func()), done: make(chan struct{})}
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		for f := range s.reqs {
			f()
		}
		close(s.done)
	}()
	return s
}

// do runs start on the spawner's thread.
func (s *spawner) do(start func() error) error {
	errc := make(chan error, 1)
	s.reqs <- func() { errc <- start() }
	return <-errc
}

func (s *spawner) close() {
	close(s.reqs)
	<-s.done
}

// stopSidecar stops a running sidecar with SIGTERM (SIGKILL after 15s).
func (d *demo) stopSidecar() error {
	p := d.sidecar
	if p == nil || !p.running() {
		return nil
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		p.kill()
		return errors.New("the sidecar did not stop on SIGTERM")
	}
	if !p.cmd.ProcessState.Success() {
		return fmt.Errorf("the sidecar exited with %v:\n%s", p.cmd.ProcessState, tail(d.logPath))
	}
	return nil
}

// firma runs the firma binary with args as the operator would, and returns its output.
func (d *demo) firma(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, d.opt.Firma, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	b, err := cmd.CombinedOutput()
	return strings.TrimRight(string(b), "\n"), err
}

// runIn runs a command cloned straight into the cgroup as nobody, with a clean environment and
// resolvConf as its /etc/resolv.conf, and returns its output or its failure.
func runIn(ctx context.Context, cg, resolvConf, name string, args ...string) string {
	fd, err := syscall.Open(cg, syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return "error: " + err.Error()
	}
	defer syscall.Close(fd)
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		// The command's resolver is a loopback address (so that no original destination of the
		// demo leaves the machine, even one firma failed to redirect): a mount namespace of this
		// thread's own, inherited by the command. The thread is never unlocked, so it ends with this
		// goroutine and its namespace with it.
		runtime.LockOSThread()
		if err := privateResolvConf(resolvConf); err != nil {
			done <- result{err: err}
			return
		}
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd,
			Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=/nonexistent"}
		b, err := cmd.CombinedOutput()
		done <- result{b, err}
	}()
	r := <-done
	res := strings.TrimSpace(string(r.out))
	if r.err != nil {
		return strings.TrimSpace(res + "   [" + r.err.Error() + "]")
	}
	return res
}

// privateResolvConf gives the calling thread a mount namespace of its own in which path is
// /etc/resolv.conf. The caller must have locked the thread.
func privateResolvConf(path string) error {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare mount namespace: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	if err := unix.Mount(path, "/etc/resolv.conf", "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("binding %s on /etc/resolv.conf: %w", path, err)
	}
	return nil
}

func printAudit(out io.Writer, path string) error {
	files, err := audit.Files(path)
	if err != nil {
		return err
	}
	var data []byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		data = append(data, b...)
	}
	// Completions name the credential headers the sidecar injected.
	injected := map[string][]string{}
	var events []audit.Event
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var ev audit.Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			return err
		}
		events = append(events, ev)
		if ev.Kind == audit.KindCompletion && ev.Result != nil && len(ev.Result.Injected) > 0 {
			injected[ev.DecisionID] = ev.Result.Injected
		}
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
	for _, ev := range events {
		if ev.Kind == audit.KindLog && ev.Log != nil && ev.Log.Event == audit.LogResume {
			flush()
			prev, repeats = fmt.Sprintf("   ----- %s: the chain continues after a %s", ev.Log.Event, ev.Log.Reason), 1
			continue
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
		line := fmt.Sprintf("   %-5s %-7s %-34s agent=%s uid=%d exe=%s action=%s policies=%v reason=%q",
			ev.Decision.Outcome, ev.Envelope.Transport.Mode, what, a.AgentID, a.UID, a.Exe, action,
			ev.Decision.MatchedPolicies, ev.Decision.Reason)
		if h := injected[ev.ID]; len(h) > 0 {
			sort.Strings(h)
			line += fmt.Sprintf(" injected=%v", h)
		}
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

// mask shows a credential as its first and last characters.
func mask(v, key string) string {
	if key != "" && strings.Contains(v, key) {
		return strings.Replace(v, key, key[:len("sk-firma-demo-")]+"…"+key[len(key)-4:], 1)
	}
	return v
}

// shellJoin writes args as a shell would need them.
func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		if strings.ContainsAny(a, " \t'\"$\\;&|<>*?()") {
			out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(out, " ")
}

func indent(s string) string { return strings.ReplaceAll(s, "\n", "\n   ") }

// tail is the end of the sidecar's log, for errors.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// freePorts returns n distinct ports free on 127.0.0.1 and [::1].
func freePorts(n int) ([]uint16, error) {
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	var ports []uint16
	for tries := 0; len(ports) < n && tries < 20*n; tries++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		held = append(held, l)
		p := uint16(l.Addr().(*net.TCPAddr).Port)
		if l6, err := net.Listen("tcp", fmt.Sprintf("[::1]:%d", p)); err == nil {
			held = append(held, l6)
			ports = append(ports, p)
		}
	}
	if len(ports) < n {
		return nil, errors.New("no free ports")
	}
	return ports, nil
}

// stopWriter remembers the first error writing the demo's output and writes nothing after it: a
// reader that went away (firma demo | head) ends the demo at its next step, cleanly.
type stopWriter struct {
	w   io.Writer
	err error
}

func (s *stopWriter) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.w.Write(p)
	s.err = err
	return n, err
}
