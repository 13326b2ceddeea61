package logfields

// Field names used by runner (`firma run`) and daemon/control (the control socket).
const (
	ControlSocket = "control_socket" // path of the sidecar's control socket
	ControlOp     = "control_op"     // info | register | unregister
	RunProfile    = "profile"        // the firma run profile
	RunCommand    = "command"        // the agent's argv[0]
	RunSignal     = "signal"         // a signal firma run forwarded
	RunExitCode   = "exit_code"      // the agent's exit status as firma run reports it
	RunUnit       = "unit"           // the systemd transient scope holding an agent
	RunLandlock   = "landlock_abi"   // the kernel's Landlock ABI version
)
