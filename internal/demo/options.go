package demo

// Options configure Run.
type Options struct {
	// Firma is the firma binary: the demo runs the sidecar, `firma sidecar status` and `firma audit
	// verify` with it, as a user would.
	Firma string
	// Keep leaves the work dir (config, CA, audit log and key, sidecar log) for inspection.
	Keep bool
}
