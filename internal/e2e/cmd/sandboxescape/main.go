// Command sandboxescape tries, from wherever it runs, the ways out of `firma run`'s sandbox that the
// kernel offers a process, and prints what happened as one JSON object. The runner's e2e tests run
// it inside `firma run` (as root and as another user) and outside it (the control: proof that each
// attempt is real), and compare. Test code only.
//
//	sandboxescape [-abstract NAME] [-outside-pid PID] [-max-fd N]
//	sandboxescape -sleep                           # a child for the attempts that need one
package main

import (
	"encoding/json"
	"flag"
	"os"
	"time"
)

// Result is one attempt: whether the kernel let it through, and the errno if not.
type Result struct {
	OK     bool   `json:"ok"`
	Err    string `json:"err,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// Report is the program's output.
type Report struct {
	PID          int               `json:"pid"`
	PPID         int               `json:"ppid"`
	InitComm     string            `json:"init_comm"`
	FDs          []string          `json:"fds"`           // descriptors >= 3 open at start: "5 socket inet"
	Procs        []int             `json:"procs"`         // pids in /proc
	BlockDevices []string          `json:"block_devices"` // block device nodes under /dev
	PTYs         []string          `json:"ptys"`          // entries of /dev/pts
	Probes       map[string]Result `json:"probes"`
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == "-sleep" {
		time.Sleep(time.Minute)
		return
	}
	// Descriptors first, before this program opens any of its own.
	maxFD := flag.Int("max-fd", 256, "highest inherited descriptor to try")
	abstract := flag.String("abstract", "", "abstract unix socket (stream) to connect to, without the leading @")
	outside := flag.Int("outside-pid", 0, "a process outside the sandbox to signal, open and trace (one that may be stopped)")
	flag.Parse()
	r := &Report{Probes: map[string]Result{}}
	probeFDs(r, *maxFD)
	probeAll(r, *abstract, *outside)
	json.NewEncoder(os.Stdout).Encode(r)
}
