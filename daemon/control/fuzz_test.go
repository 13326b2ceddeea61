package control

import (
	"bufio"
	"context"
	"encoding/json"
	"path"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/internal/cgroup"
)

// FuzzRequest: whatever line a peer sends, the server answers without panicking, and a
// registration reaches the registry only in canonical form, strictly below the enforced cgroup,
// with an agent id and an absolute capability path.
func FuzzRequest(f *testing.F) {
	for _, s := range []string{
		`{"op":"info"}`,
		`{"op":"register","registration":{"cgroup":"/firma-agents.slice/run-1","agent_id":"a","capability_file":"/etc/cap.toml","pid":1}}`,
		`{"op":"register","registration":{"cgroup":"/firma-agents.slice/../x","agent_id":"a"}}`,
		`{"op":"register","registration":{"cgroup":"/firma-agents.slice","agent_id":"a"}}`,
		`{"op":"unregister","cgroup":"/firma-agents.slice/run-1"}`,
		`{"op":"nosuch"}`,
		`{"op":"register"}`,
		`not json`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		reg := newRegistry()
		reg.regs = map[string]Registration{}
		s := NewServer(reg, zerolog.Nop())
		r, err := readLine(bufio.NewReader(strings.NewReader(line + "\n")))
		if err != nil {
			return
		}
		var req request
		if json.Unmarshal(r, &req) != nil {
			return
		}
		s.handle(context.Background(), zerolog.Nop(), req)
		for cg, got := range reg.regs {
			clean, err := cgroup.Clean(cg)
			if err != nil || clean != cg || !cgroup.Under(cg, reg.info.Cgroup) || got.AgentID == "" ||
				got.CapabilityFile != "" && !path.IsAbs(got.CapabilityFile) {
				t.Fatalf("registered %+v from %q", got, line)
			}
		}
	})
}
