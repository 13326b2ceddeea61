package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// DefaultTimeout bounds one request when the caller's context has no deadline.
const DefaultTimeout = 30 * time.Second

// Client is one connection to the control socket. It is not safe for concurrent use.
type Client struct {
	path string
	conn net.Conn
	r    *bufio.Reader
}

// Dial connects to the control socket at path. When nothing listens there the error wraps
// ErrSidecarNotRunning and names the socket; when the socket is root-only it wraps ErrPermission.
//
// Before anything is sent, Dial checks who serves the socket (SO_PEERCRED: the process that
// listened on it): root, or the caller's own user, else the error wraps ErrUntrustedSocket. While
// the sidecar is down, another user could bind a socket at its path (in a sticky directory such as
// /tmp, say) and answer Info with a cgroup it chose: `firma run` would then place agents outside
// enforcement.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, dialError(path, err)
	}
	if err := checkServer(conn, uint32(os.Geteuid())); err != nil {
		conn.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	return &Client{path: path, conn: conn, r: bufio.NewReader(conn)}, nil
}

// ErrUntrustedSocket means the control socket is served by a user other than root and the caller:
// not firma's sidecar.
var ErrUntrustedSocket = errors.New("served by another user")

// checkServer refuses a control socket served by anyone but root or the caller (uid self).
func checkServer(conn net.Conn, self uint32) error {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("%w: not a unix socket", ErrUntrustedSocket)
	}
	p, err := peerOf(uc)
	if err != nil {
		return fmt.Errorf("who serves it: %w", err)
	}
	if p.UID != 0 && p.UID != self {
		return fmt.Errorf("%w: uid %d (pid %d) listens on it, not root — it is not firma's sidecar (was the path free while the sidecar was down?)",
			ErrUntrustedSocket, p.UID, p.PID)
	}
	return nil
}

func dialError(path string, err error) error {
	switch {
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOTSOCK):
		return fmt.Errorf("%w: nothing listens on the control socket %s (start it with `firma sidecar`): %w",
			ErrSidecarNotRunning, path, err)
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return fmt.Errorf("control socket %s: %w (it is root-only)", path, ErrPermission)
	}
	return fmt.Errorf("control socket %s: %w", path, err)
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Info asks the sidecar how it enforces.
func (c *Client) Info(ctx context.Context) (Info, error) {
	resp, err := c.do(ctx, request{Op: opInfo})
	if err != nil {
		return Info{}, err
	}
	if resp.Info == nil {
		return Info{}, fmt.Errorf("control socket %s: info response carries no info", c.path)
	}
	return *resp.Info, nil
}

// Register asks the sidecar to treat r.Cgroup as agent r.AgentID. A refusal (for instance an invalid
// capability) comes back as a *RemoteError carrying the sidecar's message.
func (c *Client) Register(ctx context.Context, r Registration) error {
	_, err := c.do(ctx, request{Op: opRegister, Registration: &r})
	return err
}

// Unregister asks the sidecar to forget cgroup.
func (c *Client) Unregister(ctx context.Context, cgroup string) error {
	_, err := c.do(ctx, request{Op: opUnregister, Cgroup: cgroup})
	return err
}

// Refused reports what firma run's sandbox refused a process of an agent, for the audit log.
func (c *Client) Refused(ctx context.Context, r Refusal) error {
	_, err := c.do(ctx, request{Op: opRefused, Refusal: &r})
	return err
}

func (c *Client) do(ctx context.Context, req request) (*response, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(DefaultTimeout)
	}
	if err := c.conn.SetDeadline(deadline); err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	line, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if _, err := c.conn.Write(append(line, '\n')); err != nil {
		return nil, c.ioError(ctx, req.Op, err)
	}
	reply, err := c.r.ReadBytes('\n')
	if err != nil {
		if errors.Is(err, io.EOF) && len(reply) == 0 {
			return nil, fmt.Errorf("control socket %s: %s: the sidecar closed the connection", c.path, req.Op)
		}
		return nil, c.ioError(ctx, req.Op, err)
	}
	var resp response
	if err := json.Unmarshal(reply, &resp); err != nil {
		return nil, fmt.Errorf("control socket %s: %s: bad response: %w", c.path, req.Op, err)
	}
	if !resp.OK {
		if resp.Code == codePermission {
			return nil, fmt.Errorf("control socket %s: %w: %s", c.path, ErrPermission, resp.Error)
		}
		return nil, &RemoteError{Message: resp.Error}
	}
	return &resp, nil
}

func (c *Client) ioError(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		err = ctx.Err()
	}
	return fmt.Errorf("control socket %s: %s: %w", c.path, op, err)
}
