package bench

import (
	"strings"
	"testing"
)

func TestTinyproxyConfig(t *testing.T) {
	conf := TinyproxyConfig{Port: 3128, MaxClients: 8064, LogFile: "/tmp/x/tinyproxy.log"}.Render()
	for _, want := range []string{"Port 3128\n", "Listen 127.0.0.1\n", "MaxClients 8064\n", "Allow 127.0.0.1\n",
		"ConnectPort 443\n", "Timeout 600\n", "LogLevel Info\n", `LogFile "/tmp/x/tinyproxy.log"`} {
		if !strings.Contains(conf, want) {
			t.Errorf("tinyproxy.conf lacks %q:\n%s", want, conf)
		}
	}
}

func TestSquidConfig(t *testing.T) {
	base := SquidConfig{Dir: "/tmp/sq", Port: 3129, MaxFDs: 20000, HostsFile: "/tmp/sq/hosts"}
	conf, err := base.Render()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"http_port 127.0.0.1:3129\n", "cache deny all\n", "hosts_file /tmp/sq/hosts\n",
		"dns_nameservers 127.0.0.1\n", "max_filedescriptors 20000\n", "http_access deny CONNECT !SSL_ports\n",
		"http_access deny all\n", "client_idle_pconn_timeout 600 seconds\n", "access_log daemon:/tmp/sq/access.log squid\n"} {
		if !strings.Contains(conf, want) {
			t.Errorf("squid.conf lacks %q:\n%s", want, conf)
		}
	}
	if strings.Contains(conf, "ssl_bump") {
		t.Error("a CONNECT-only squid bumps")
	}

	bump := base
	bump.Bump = &SquidBump{CACert: "/tmp/sq/ca.pem", CAKey: "/tmp/sq/ca.key", SSLDB: "/tmp/sq/ssl_db",
		Certgen: "/usr/lib/squid/security_file_certgen", UpstreamCA: "/tmp/sq/up.pem", KeyHeader: "X-Api-Key", Key: "sk-123"}
	conf, err = bump.Render()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"http_port 127.0.0.1:3129 ssl-bump tls-cert=/tmp/sq/ca.pem tls-key=/tmp/sq/ca.key generate-host-certificates=on",
		"sslcrtd_program /usr/lib/squid/security_file_certgen -s /tmp/sq/ssl_db -M 16MB\n",
		"ssl_bump peek step1\n", "ssl_bump bump all\n", "tls_outgoing_options cafile=/tmp/sq/up.pem\n",
		// The client's header is dropped before the credential is added: the upstream must see one value.
		"request_header_access X-Api-Key deny all\nrequest_header_add X-Api-Key \"sk-123\" all\n",
	} {
		if !strings.Contains(conf, want) {
			t.Errorf("bumping squid.conf lacks %q:\n%s", want, conf)
		}
	}

	for _, key := range []string{"", `sk"1`, "sk 1", "sk\n1"} {
		bad := base
		b := *bump.Bump
		b.Key = key
		bad.Bump = &b
		if _, err := bad.Render(); err == nil {
			t.Errorf("key %q accepted", key)
		}
	}
}
