package daemon

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/openfirma/firma/authority"
	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/daemon/agents"
	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/daemon/connector"
	"github.com/openfirma/firma/daemon/credentials"
	"github.com/openfirma/firma/daemon/judge"
	"github.com/openfirma/firma/daemon/l7"
	"github.com/openfirma/firma/daemon/metrics"
	"github.com/openfirma/firma/internal/cgroup"
	"github.com/openfirma/firma/internal/duration"
	"github.com/openfirma/firma/policies"
)

// Config is the [sidecar] section of firma.toml.
type Config struct {
	LogLevel    string                 `toml:"log_level"`
	Transparent TransparentConfig      `toml:"transparent"`
	Agents      []agents.Config        `toml:"agents"`
	Interceptor InterceptorConfig      `toml:"interceptor"`
	Control     ControlConfig          `toml:"control"`
	Debug       DebugConfig            `toml:"debug"`
	Policy      policies.Config        `toml:"policy"`
	Mapping     policies.MappingConfig `toml:"mapping"`
	Upstream    connector.Config       `toml:"upstream"`
	Audit       audit.Config           `toml:"audit"`
	Authority   authority.ClientConfig `toml:"authority"`
	CA          l7.CAConfig            `toml:"ca"`
	Credentials []credentials.Config   `toml:"credentials"`
	Metrics     metrics.Config         `toml:"metrics"`
	Limits      judge.LimitsConfig     `toml:"limits"`

	// AgentHidden and AgentProtected are paths from other sections of firma.toml (the [authority]
	// key, its policy and issuance dirs) that `firma run` hides from agents or keeps read-only, on
	// top of the sidecar's own files. Set by the command that loads the file, not from TOML.
	AgentHidden    []string `toml:"-"`
	AgentProtected []string `toml:"-"`
}

// TransparentConfig is [sidecar.transparent]: the eBPF redirect.
type TransparentConfig struct {
	Enabled bool   `toml:"enabled"` // false: explicit proxy only (hosts without eBPF)
	Cgroup  string `toml:"cgroup"`  // parent cgroup relative to the cgroup2 mount; programs attach here
	Port    uint16 `toml:"port"`    // transparent listener on 127.0.0.1 and [::1]
	DNSPort uint16 `toml:"dns_port"`
	IPv6    bool   `toml:"ipv6"`
	PinDir  string `toml:"pin_dir"`
	// SniffTimeout bounds how long the sidecar waits for a client's first bytes (a complete TLS
	// ClientHello or HTTP request line).
	SniffTimeout duration.Duration `toml:"sniff_timeout"`
	// ServerFirstPorts are ports of server-speaks-first protocols: a client silent there for
	// server_first_wait gets its upstream dialed so that the server can greet it. On other ports
	// nothing is dialed until the client speaks.
	ServerFirstPorts []uint16          `toml:"server_first_ports"`
	ServerFirstWait  duration.Duration `toml:"server_first_wait"`
	// FirstSpeakerTimeout is how long a client may stay silent on a port where clients speak first
	// before its connection is closed (nothing judged, nothing dialed), and how long an allowed
	// tunnel on a server-speaks-first port waits for either side to say something.
	FirstSpeakerTimeout duration.Duration `toml:"first_speaker_timeout"`
	// InboundPorts are ports on which enforced processes may accept connections from anywhere (a
	// dev server an agent runs); every other packet arriving for an enforced socket that does not
	// come from the sidecar is dropped. Default: none.
	InboundPorts []uint16 `toml:"inbound_ports"`
	// RefusalRate and RefusalBurst bound the kernel's refusal reports of one cgroup (per second,
	// and at once); what they suppress is counted in a record of its own.
	RefusalRate  uint32 `toml:"refusal_rate"`
	RefusalBurst uint32 `toml:"refusal_burst"`
	// IdleTimeout ends a tunnel once one side has closed (or half-closed) and the other has sent
	// nothing for this long, with its completion record. Tunnels whose both sides are open are never
	// timed out.
	IdleTimeout duration.Duration `toml:"idle_timeout"`
	// Offload lets the kernel carry allowed TLS tunnels' bytes from the sidecar straight into the
	// agent's socket (see bpf/offload.c); false keeps every tunnel on plain TCP.
	Offload bool `toml:"offload"`
}

// InterceptorConfig is [sidecar.interceptor]: the explicit HTTP/CONNECT proxy.
type InterceptorConfig struct {
	ListenAddr string `toml:"listen_addr"` // "" disables the explicit proxy
	// AgentID is the identity given to explicit-proxy clients, which have no kernel-attested cgroup.
	AgentID string `toml:"agent_id"`
	// HTTPSMITM is [sidecar.interceptor.https_mitm]: which hosts are TLS-terminated and judged per
	// request, for the transparent path and the explicit proxy alike.
	HTTPSMITM l7.Config `toml:"https_mitm"`
}

// ControlConfig is [sidecar.control]: the root-only socket `firma run` registers agents through.
type ControlConfig struct {
	Socket string `toml:"socket"`
}

// DefaultConfig returns the defaults that apply to keys a file leaves out.
func DefaultConfig() Config {
	return Config{
		LogLevel: "info",
		Transparent: TransparentConfig{
			Enabled:      true,
			Cgroup:       "firma-agents.slice",
			Port:         15001,
			DNSPort:      15053,
			IPv6:         true,
			PinDir:       "/sys/fs/bpf/firma",
			SniffTimeout: duration.Of(5 * time.Second),
			// FTP, SMTP, POP3, NNTP, IMAP, submission, alternate SMTP, MySQL, ManageSieve
			ServerFirstPorts:    []uint16{21, 25, 110, 119, 143, 587, 2525, 3306, 4190},
			ServerFirstWait:     duration.Of(300 * time.Millisecond),
			FirstSpeakerTimeout: duration.Of(2 * time.Minute),
			RefusalRate:         bpf.DefaultRefusalRate,
			RefusalBurst:        bpf.DefaultRefusalBurst,
			IdleTimeout:         duration.Of(5 * time.Minute),
			Offload:             true,
		},
		Interceptor: InterceptorConfig{ListenAddr: "127.0.0.1:8080", HTTPSMITM: l7.DefaultConfig()},
		Control:     ControlConfig{Socket: "/run/firma/control.sock"},
		Mapping:     policies.DefaultMappingConfig(),
		Upstream:    connector.DefaultConfig(),
		Audit:       audit.DefaultConfig(),
		Authority:   authority.DefaultClientConfig(),
		Limits:      judge.DefaultLimitsConfig(),
	}
}

// Validate checks everything that can be checked without touching the kernel or the network.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("sidecar.%s: %s", key, fmt.Sprintf(format, a...)))
	}
	if c.Transparent.Enabled {
		if c.Transparent.Port == 0 {
			bad("transparent.port", "must be set")
		}
		if c.Transparent.Cgroup == "" || !cgroup.ValidRelative(c.Transparent.Cgroup) {
			bad("transparent.cgroup", "%q is not a relative cgroup path", c.Transparent.Cgroup)
		}
		if c.Transparent.PinDir == "" || !filepath.IsAbs(c.Transparent.PinDir) {
			bad("transparent.pin_dir", "%q is not an absolute path", c.Transparent.PinDir)
		} else if strings.Contains(filepath.Base(c.Transparent.PinDir), ".") {
			bad("transparent.pin_dir", "%q: bpffs refuses names that contain a '.'", c.Transparent.PinDir)
		}
		if c.Transparent.DNSPort != 0 && c.Transparent.DNSPort == c.Transparent.Port {
			bad("transparent.dns_port", "must differ from transparent.port")
		}
		if len(c.Transparent.InboundPorts) > bpf.MaxInboundPorts {
			bad("transparent.inbound_ports", "at most %d ports", bpf.MaxInboundPorts)
		}
		for _, p := range c.Transparent.InboundPorts {
			if p == 0 || p == c.Transparent.Port || p == c.Transparent.DNSPort {
				bad("transparent.inbound_ports", "%d is not a port an agent may accept on", p)
			}
		}
		if c.Transparent.RefusalRate == 0 || c.Transparent.RefusalBurst == 0 {
			bad("transparent.refusal_rate", "refusal_rate and refusal_burst must be positive")
		}
	}
	if c.Transparent.SniffTimeout.Duration <= 0 {
		bad("transparent.sniff_timeout", "must be positive")
	}
	if d := c.Transparent.ServerFirstWait.Duration; d <= 0 || d > c.Transparent.SniffTimeout.Duration {
		bad("transparent.server_first_wait", "must be positive and at most sniff_timeout (%s)", c.Transparent.SniffTimeout)
	}
	if c.Transparent.FirstSpeakerTimeout.Duration <= 0 {
		bad("transparent.first_speaker_timeout", "must be positive")
	}
	if c.Transparent.IdleTimeout.Duration < 0 {
		bad("transparent.idle_timeout", "must not be negative (0 never ends an idle tunnel)")
	}
	if err := c.Limits.Validate(); err != nil {
		errs = append(errs, prefixed("sidecar.", err)...)
	}
	errs = append(errs, prefixed("sidecar.", agents.Validate(c.Agents))...)
	if c.Interceptor.ListenAddr != "" {
		if _, _, err := net.SplitHostPort(c.Interceptor.ListenAddr); err != nil {
			bad("interceptor.listen_addr", "%v", err)
		}
	}
	errs = append(errs, prefixed("sidecar.upstream.", c.Upstream.Validate())...)
	errs = append(errs, prefixed("sidecar.debug.", c.Debug.Validate())...)
	if err := c.Authority.Validate(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, prefixed("sidecar.ca.", c.CA.Validate())...)
	if err := c.Interceptor.HTTPSMITM.Validate(); err != nil {
		errs = append(errs, prefixed("sidecar.interceptor.https_mitm.", err)...)
	} else {
		errs = append(errs, prefixed("sidecar.", c.Interceptor.HTTPSMITM.ValidateCA(c.CA))...)
	}
	errs = append(errs, prefixed("sidecar.", credentials.ValidateAll(c.Credentials))...)
	maxBody := c.Policy.MaxBodyBytes
	if maxBody == 0 {
		maxBody = policies.DefaultMaxBodyBytes
	}
	if b := c.Interceptor.HTTPSMITM.BodyBufferBytes; b > 0 && b <= maxBody {
		bad("interceptor.https_mitm.body_buffer_bytes", "%d must be more than sidecar.policy.max_body_bytes (%d): a body a policy reads could never be buffered", b, maxBody)
	}
	if err := c.Audit.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("sidecar.%w", err))
	}
	errs = append(errs, prefixed("sidecar.metrics.", c.Metrics.Validate())...)
	return errors.Join(errs...)
}

// PolicyConfig is [sidecar.policy] as the sidecar's policy engine uses it: hidden_headers holds the
// headers of [[sidecar.credentials]] too, so that no policy reads a header the sidecar puts a
// credential in (an agent could otherwise probe a key through a policy's answers).
func (c *Config) PolicyConfig() policies.Config {
	p := c.Policy
	p.HiddenHeaders = append(slices.Clone(p.HiddenHeaders), credentials.HeaderNames(c.Credentials)...)
	return p
}

// prefixed names the section of a package's validation errors (which name keys relative to it),
// one error per problem.
func prefixed(prefix string, err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, prefixed(prefix, e)...)
		}
		return out
	}
	return []error{fmt.Errorf("%s%w", prefix, err)}
}
