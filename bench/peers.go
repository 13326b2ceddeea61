package bench

import (
	"fmt"
	"strings"
	"time"
)

// IdleTimeout is how long every system keeps an idle client connection: long enough for the
// slowest system to open all of the idle workload's connections before the first one times out.
// (Defaults differ — squid and firma MITM close after 2 minutes, tinyproxy after 10 — and are not
// what the workload measures.)
const IdleTimeout = 10 * time.Minute

// squidDuration writes d in squid.conf's units.
func squidDuration(d time.Duration) string {
	return fmt.Sprintf("%d seconds", int(d.Seconds()))
}

// TinyproxyConfig is what the harness runs tinyproxy with: CONNECT to port 443 only, from
// loopback only, logging at Info to a file as Debian's package ships it.
type TinyproxyConfig struct {
	Port       uint16
	MaxClients int // at least the idle workload's connections: tinyproxy refuses beyond it
	LogFile    string
}

// Render writes tinyproxy.conf.
func (c TinyproxyConfig) Render() string {
	return fmt.Sprintf(`# written by firma's comparison harness
Port %d
Listen 127.0.0.1
Timeout %d
MaxClients %d
Allow 127.0.0.1
ConnectPort 443
LogLevel Info
LogFile "%s"
`, c.Port, int(IdleTimeout.Seconds()), c.MaxClients, c.LogFile)
}

// SquidConfig is what the harness runs squid with: a forward proxy on loopback that allows CONNECT
// to port 443 from loopback, caches nothing, resolves names from HostsFile only (its DNS points at
// loopback, so nothing leaves), and logs access through the log daemon as Debian's package ships
// it. With Bump set it also terminates TLS (ssl-bump) and injects the credential.
type SquidConfig struct {
	Dir       string // working dir: logs, core dumps (owned by the proxy user)
	Port      uint16
	MaxFDs    int
	HostsFile string
	Bump      *SquidBump
}

// SquidBump is ssl-bump with a CA of the harness's own and credential injection.
type SquidBump struct {
	CACert, CAKey string // PEM files of the CA that signs the leaves squid mints
	SSLDB         string // initialised with security_file_certgen -c
	Certgen       string // path of security_file_certgen
	UpstreamCA    string // the CA squid verifies the upstream with
	KeyHeader     string // the credential header, replaced on every request
	Key           string
}

// Render writes squid.conf.
func (c SquidConfig) Render() (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "# written by firma's comparison harness\n")
	if c.Bump == nil {
		fmt.Fprintf(&b, "http_port 127.0.0.1:%d\n", c.Port)
	} else {
		k := c.Bump
		for name, v := range map[string]string{"key header": k.KeyHeader, "key": k.Key} {
			if v == "" || strings.ContainsAny(v, "\"\\\r\n \t") {
				return "", fmt.Errorf("squid ssl-bump: %s is empty or holds characters squid.conf cannot quote", name)
			}
		}
		fmt.Fprintf(&b, `http_port 127.0.0.1:%d ssl-bump tls-cert=%s tls-key=%s generate-host-certificates=on dynamic_cert_mem_cache_size=16MB
sslcrtd_program %s -s %s -M 16MB
sslcrtd_children 8 startup=2 idle=1
acl step1 at_step SslBump1
ssl_bump peek step1
ssl_bump bump all
tls_outgoing_options cafile=%s
request_header_access %s deny all
request_header_add %s "%s" all
`, c.Port, k.CACert, k.CAKey, k.Certgen, k.SSLDB, k.UpstreamCA, k.KeyHeader, k.KeyHeader, k.Key)
	}
	fmt.Fprintf(&b, `pid_filename none
cache_effective_user proxy
coredump_dir %[1]s
cache_log %[1]s/cache.log
access_log daemon:%[1]s/access.log squid
cache_store_log none
cache deny all
cache_mem 0 MB
pinger_enable off
icp_port 0
htcp_port 0
max_filedescriptors %[2]d
hosts_file %[3]s
dns_nameservers 127.0.0.1
acl SSL_ports port 443
acl CONNECT method CONNECT
http_access deny CONNECT !SSL_ports
http_access allow localhost
http_access deny all
shutdown_lifetime 0 seconds
client_idle_pconn_timeout %[4]s
`, c.Dir, c.MaxFDs, c.HostsFile, squidDuration(IdleTimeout))
	return b.String(), nil
}
