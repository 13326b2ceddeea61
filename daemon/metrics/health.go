package metrics

import (
	"encoding/json"
	"net/http"
)

// Health is the /healthz report: ready when every check passes. It is served with status 200 when
// ready and 503 when not, the same JSON either way:
//
//	{"ready":false,"checks":{"audit":{"ok":false,"detail":"…"},"programs":{"ok":true,"detail":"…"}}}
type Health struct {
	Ready  bool                   `json:"ready"`
	Checks map[string]CheckResult `json:"checks"`
}

// CheckResult is one named check of Health.
type CheckResult struct {
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// Check is one readiness check: Run returns what it found, and an error when that is not ready.
type Check struct {
	Name string
	Run  func() (detail string, err error)
}

// Evaluate runs every check. A failing check's detail is its error, after what it found if
// anything.
func Evaluate(checks []Check) Health {
	h := Health{Ready: true, Checks: make(map[string]CheckResult, len(checks))}
	for _, c := range checks {
		detail, err := c.Run()
		r := CheckResult{OK: err == nil, Detail: detail}
		if err != nil {
			h.Ready = false
			r.Detail = err.Error()
			if detail != "" {
				r.Detail = detail + ": " + r.Detail
			}
		}
		h.Checks[c.Name] = r
	}
	return h
}

func (h Health) serve(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if !h.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(h)
}
