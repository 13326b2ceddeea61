package runner

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/pelletier/go-toml/v2"
)

// capabilityIdentity is what the runner reads from a capability file: who the token is for. The
// runner does not verify the token — the sidecar does, before it accepts the registration — so
// only the readable mirrors are looked at, and unknown keys are ignored.
type capabilityIdentity struct {
	RawToken  string `toml:"raw_token"`
	AgentID   string `toml:"agent_id"`
	SessionID string `toml:"session_id"`
}

func readCapabilityIdentity(file string) (capabilityIdentity, error) {
	var id capabilityIdentity
	data, err := os.ReadFile(file)
	if err != nil {
		return id, fmt.Errorf("reading capability file: %w", err)
	}
	if err := toml.NewDecoder(bytes.NewReader(data)).Decode(&id); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, col := de.Position()
			return id, fmt.Errorf("capability file %s:%d:%d: %s", file, row, col, de.Error())
		}
		return id, fmt.Errorf("capability file %s: %w", file, err)
	}
	if id.RawToken == "" {
		return id, fmt.Errorf("capability file %s: no raw_token (write it with `firma authority issue --output`)", file)
	}
	return id, nil
}

// identity is who the agent is to the sidecar.
type identity struct {
	AgentID        string
	SessionID      string
	CapabilityFile string // absolute, or ""
}

// resolveIdentity picks the agent id (--agent-id, else the capability's agent_id, else the
// profile's agent_id, else the profile's name) and the session id (the capability's, else a fresh
// UUID). An --agent-id that contradicts the capability is an error: the sidecar would refuse it.
func resolveIdentity(flagAgent, capFile, profileName string, p Profile) (identity, error) {
	id := identity{AgentID: flagAgent}
	if capFile != "" {
		abs, err := filepath.Abs(capFile)
		if err != nil {
			return id, err
		}
		c, err := readCapabilityIdentity(abs)
		if err != nil {
			return id, err
		}
		if id.AgentID != "" && c.AgentID != "" && id.AgentID != c.AgentID {
			return id, fmt.Errorf("--agent-id %q contradicts the capability %s, which is for %q", id.AgentID, abs, c.AgentID)
		}
		if id.AgentID == "" {
			id.AgentID = c.AgentID
		}
		id.SessionID = c.SessionID
		id.CapabilityFile = abs
	}
	if id.AgentID == "" {
		id.AgentID = p.AgentID
	}
	if id.AgentID == "" {
		id.AgentID = profileName
	}
	if id.SessionID == "" {
		id.SessionID = newUUID()
	}
	return id, nil
}

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
