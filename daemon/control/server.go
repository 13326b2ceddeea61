package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/internal/cgroup"
	"github.com/openfirma/firma/internal/logfields"
)

// ErrSocketInUse means another process already serves the control socket.
var ErrSocketInUse = errors.New("control socket is in use")

const (
	idleTimeout    = 2 * time.Minute  // a connection with no request for this long is closed
	requestTimeout = 30 * time.Second // bound on one Registry call
	maxRequest     = 64 << 10         // bytes in one request line
)

// Server answers control requests with a Registry.
type Server struct {
	reg Registry
	log zerolog.Logger

	// uid is the only peer uid accepted (0 in production; tests change it).
	uid uint32
	// peerCgroup returns a pid's cgroup v2 path (tests replace it).
	peerCgroup func(pid int32) (string, error)
}

// NewServer returns a server that hands requests to reg.
func NewServer(reg Registry, log zerolog.Logger) *Server {
	return &Server{reg: reg, log: log.With().Str(logfields.Component, "control").Logger(), peerCgroup: cgroup.OfProcess}
}

// Listen creates the control socket at path: a missing directory is created 0700, an existing one
// is used as it is if CheckSocketDir finds it safe (its mode is never changed: the directory may be
// /tmp), a stale socket left by a dead sidecar is removed, a live one is ErrSocketInUse, and the
// socket is made 0600. Closing the listener removes the socket file.
func Listen(path string) (*net.UnixListener, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("control socket %q is not an absolute path", path)
	}
	dir := filepath.Dir(path)
	if err := makeSocketDir(dir); err != nil {
		return nil, err
	}
	if err := CheckSocketDir(dir); err != nil {
		return nil, err
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on control socket %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	return ln, nil
}

// ErrUnsafeSocketDir means another user could replace the control socket, or the directory above
// it, and so pose as the sidecar to `firma run`.
var ErrUnsafeSocketDir = errors.New("unsafe control socket directory")

// makeSocketDir creates dir 0700 (its missing parents 0755) when it does not exist. It changes the
// mode of nothing it did not create.
func makeSocketDir(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("control socket dir %s: %w", dir, err)
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("creating control socket dir %s: %w", dir, err)
	}
	if err := os.Mkdir(dir, 0o700); errors.Is(err, fs.ErrExist) {
		return nil // created meanwhile by someone else: CheckSocketDir judges it
	} else if err != nil {
		return fmt.Errorf("creating control socket dir %s: %w", dir, err)
	}
	// Ours: undo whatever the umask took away.
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("control socket dir %s: %w", dir, err)
	}
	return nil
}

// CheckSocketDir reports (ErrUnsafeSocketDir) whether a user other than root and this process's
// could replace a socket in dir: dir and every directory above it (symbolic links resolved) must
// be owned by root or by this process's user, and writable by nobody else unless the sticky bit
// is set — /tmp (1777, root) is safe for a root-owned socket, a 0777 or 0775 directory is not,
// nor is one that another user owns or could rename.
func CheckSocketDir(dir string) error {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("control socket dir %s: %w", dir, err)
	}
	name := dir
	if real != filepath.Clean(dir) {
		name = fmt.Sprintf("%s (%s)", dir, real)
	}
	uid := uint32(os.Geteuid())
	for p := real; ; p = filepath.Dir(p) {
		fi, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("control socket dir %s: %w", name, err)
		}
		if !fi.IsDir() {
			return fmt.Errorf("control socket dir %s: %s is not a directory", name, p)
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && st.Uid != uid {
			return fmt.Errorf("control socket dir %s: %w: %s is owned by uid %d, who could replace the socket (use a root-owned directory such as %s)",
				name, ErrUnsafeSocketDir, p, st.Uid, filepath.Dir(DefaultSocket))
		}
		if perm := fi.Mode(); perm&0o022 != 0 && perm&fs.ModeSticky == 0 {
			return fmt.Errorf("control socket dir %s: %w: %s is writable by group or others without the sticky bit (mode %04o), so they could replace the socket (use a root-owned directory such as %s)",
				name, ErrUnsafeSocketDir, p, perm.Perm(), filepath.Dir(DefaultSocket))
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// removeStale deletes a socket file nobody answers on; it refuses to touch anything else.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("control socket %s: exists and is not a socket", path)
	}
	if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
		conn.Close()
		return fmt.Errorf("%s: %w by another process", path, ErrSocketInUse)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing stale control socket %s: %w", path, err)
	}
	return nil
}

// Serve accepts connections on ln until ctx ends, then closes ln (removing the socket file) and
// waits for open connections to finish their current request.
func (s *Server) Serve(ctx context.Context, ln *net.UnixListener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	s.log.Info().Str(logfields.ControlSocket, ln.Addr().String()).Msg("control socket listening")
	for {
		conn, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accepting on control socket: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveConn(ctx, conn)
		}()
	}
}

func (s *Server) serveConn(ctx context.Context, conn *net.UnixConn) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()

	p, refused := peerOf(conn)
	if refused == nil {
		refused = s.allowed(p)
	}
	log := s.log.With().Int32(logfields.PID, p.PID).Uint32(logfields.UID, p.UID).Logger()
	if refused != nil {
		log.Warn().Err(refused).Msg("control connection refused")
	}
	r := bufio.NewReaderSize(conn, 4096)
	for {
		conn.SetReadDeadline(time.Now().Add(idleTimeout))
		if ctx.Err() != nil { // the AfterFunc may have run before the deadline above replaced its own
			return
		}
		line, err := readLine(r)
		if err != nil {
			if !errors.Is(err, io.EOF) && ctx.Err() == nil {
				log.Debug().Err(err).Msg("control connection closed")
			}
			return
		}
		if refused != nil {
			// Answer the first request (so the client reads why) and hang up without running it.
			s.reply(conn, response{Error: refused.Error(), Code: codePermission})
			return
		}
		var req request
		if err := json.Unmarshal(line, &req); err != nil {
			s.reply(conn, response{Error: fmt.Sprintf("bad request: %v", err)})
			return
		}
		if !s.reply(conn, s.handle(ctx, log, req)) {
			return
		}
	}
}

func readLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxRequest {
			return nil, errors.New("request too long")
		}
		if err == nil {
			return line, nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			if len(line) > 0 && errors.Is(err, io.EOF) {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

func (s *Server) handle(ctx context.Context, log zerolog.Logger, req request) response {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	switch req.Op {
	case opInfo:
		info := s.reg.Info()
		return response{OK: true, Info: &info}
	case opRegister:
		if req.Registration == nil {
			return response{Error: "register: no registration"}
		}
		r := *req.Registration
		log := log.With().Str(logfields.Cgroup, r.Cgroup).Str(logfields.Agent, r.AgentID).
			Str(logfields.Session, r.SessionID).Str(logfields.File, r.CapabilityFile).Logger()
		if err := r.validate(s.reg.Info().Cgroup); err != nil {
			log.Warn().Err(err).Msg("registration refused")
			return response{Error: "register: " + err.Error()}
		}
		if err := s.reg.Register(ctx, r); err != nil {
			log.Warn().Err(err).Msg("registration refused")
			return response{Error: err.Error()}
		}
		log.Info().Int("runner_pid", r.PID).Msg("agent cgroup registered")
		return response{OK: true}
	case opUnregister:
		cg, err := cgroup.Clean(req.Cgroup)
		if err != nil {
			return response{Error: "unregister: " + err.Error()}
		}
		if err := s.reg.Unregister(ctx, cg); err != nil {
			log.Warn().Err(err).Str(logfields.Cgroup, cg).Msg("unregister failed")
			return response{Error: err.Error()}
		}
		log.Info().Str(logfields.Cgroup, cg).Msg("agent cgroup unregistered")
		return response{OK: true}
	case opRefused:
		if req.Refusal == nil {
			return response{Error: "refused: no refusal"}
		}
		if err := req.Refusal.validate(); err != nil {
			return response{Error: "refused: " + err.Error()}
		}
		if err := s.reg.Refused(ctx, *req.Refusal); err != nil {
			log.Warn().Err(err).Int(logfields.PID, req.Refusal.PID).Str("syscall", req.Refusal.Syscall).Msg("sandbox refusal not recorded")
			return response{Error: err.Error()}
		}
		return response{OK: true}
	}
	return response{Error: fmt.Sprintf("unknown op %q", req.Op)}
}

func (s *Server) reply(conn net.Conn, resp response) bool {
	line, err := json.Marshal(resp)
	if err != nil {
		return false
	}
	conn.SetWriteDeadline(time.Now().Add(requestTimeout))
	_, err = conn.Write(append(line, '\n'))
	return err == nil
}

// peer is what the kernel says about the process at the other end of a connection.
type peer struct {
	PID int32
	UID uint32
}

// allowed refuses peers that are not root, and peers inside the enforced cgroup tree: an agent
// must never reach the control socket, even one running as root that found a way to the path.
func (s *Server) allowed(p peer) error {
	if p.UID != s.uid {
		return fmt.Errorf("%w: peer uid %d is not %d", ErrPermission, p.UID, s.uid)
	}
	enforced := s.reg.Info().Cgroup
	if enforced == "" {
		return nil
	}
	enforced, err := cgroup.Clean(enforced)
	if err != nil {
		return fmt.Errorf("%w: the sidecar's enforced cgroup: %v", ErrPermission, err)
	}
	cg, err := s.peerCgroup(p.PID)
	if err != nil {
		return fmt.Errorf("%w: cgroup of peer pid %d: %v", ErrPermission, p.PID, err)
	}
	if cg == enforced || cgroup.Under(cg, enforced) {
		return fmt.Errorf("%w: peer pid %d is inside the enforced cgroup %s", ErrPermission, p.PID, enforced)
	}
	return nil
}
