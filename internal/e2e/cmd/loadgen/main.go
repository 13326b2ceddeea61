// Command loadgen plays the agent in firma's comparison harness (bench/): it runs one workload of
// package bench/load against the bench upstream — directly, through an explicit proxy, or, started
// inside an enforced cgroup, through firma's transparent redirect — verifies every response, and
// prints its load.Result as one JSON line on stdout.
//
//	loadgen -workload new -addr bench.test:443 -dial 127.1.2.3:443 -cacert ca.pem -want-key agent -c 4 -duration 5s
//	loadgen -workload download -bytes 1073741824 -proxy http://127.0.0.1:3128 …
//	loadgen -workload idle -conns 8000 …
//
// The idle workload prints a load.HeldLine ({"held":N}) once its connections are open and
// verified, and holds them until a line (or EOF) arrives on stdin. Any error — a wrong status,
// byte or key — is printed on stderr and the exit status is 1.
package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/openfirma/firma/bench/load"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func run() error {
	var s load.Spec
	workload := flag.String("workload", "", "one of new, keepalive-h1, keepalive-h2, download, upload, idle")
	flag.StringVar(&s.Addr, "addr", "", "name:port the client asks for (TLS server name, Host, CONNECT target)")
	flag.StringVar(&s.Dial, "dial", "", "address to dial for -addr instead of resolving it (not with -proxy)")
	flag.StringVar(&s.Proxy, "proxy", "", "explicit HTTP proxy URL to CONNECT through")
	cacert := flag.String("cacert", "", "PEM file of the only CAs to trust")
	wantKey := flag.String("want-key", "", "what the upstream must see in the key header: injected or agent")
	flag.IntVar(&s.Concurrency, "c", 1, "requests in flight (new, keepalive-*)")
	flag.DurationVar(&s.Duration, "duration", 0, "measured time (new, keepalive-*)")
	flag.Int64Var(&s.Bytes, "bytes", 0, "payload size (download, upload)")
	flag.IntVar(&s.Conns, "conns", 0, "connections to hold (idle)")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", flag.Arg(0))
	}
	s.Workload = load.Workload(*workload)
	s.WantKey = load.KeySeen(*wantKey)
	pem, err := os.ReadFile(*cacert)
	if err != nil {
		return err
	}
	s.RootCAs = x509.NewCertPool()
	if !s.RootCAs.AppendCertsFromPEM(pem) {
		return fmt.Errorf("no certificate in %s", *cacert)
	}
	if s.Workload == load.Idle {
		if err := load.CheckOpenFiles("loadgen", s.Conns+load.FileMargin); err != nil {
			return err
		}
		s.Hold = hold
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	res, err := load.Run(ctx, s)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// hold announces the held connections and waits for the harness to have measured them: a line
// or EOF on stdin both say so.
func hold(held int) {
	json.NewEncoder(os.Stdout).Encode(load.HeldLine{Held: held})
	bufio.NewReader(os.Stdin).ReadString('\n')
}
