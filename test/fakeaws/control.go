package fakeaws

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// Control request bodies (JSON) for the shared /_fake/ endpoints.
type (
	// FailRequest: POST /_fake/fail installs a fault (Inject).
	FailRequest struct {
		Op string `json:"op"`
		Fault
	}
	// DelayRequest: POST /_fake/delay; Duration is a Go duration ("5s"),
	// "0" clears. POST /_fake/hang takes the same body without Duration
	// (HangNext).
	DelayRequest struct {
		Op       string `json:"op"`
		Duration string `json:"duration,omitempty"`
		Count    int    `json:"count"` // 0 = every call
		// After: the call takes effect at once, only its answer waits
		// (DelayResponse). Lands: it takes effect after the wait even if
		// its client gave up (DelayEffect).
		After bool `json:"after,omitempty"`
		Lands bool `json:"lands,omitempty"`
	}
	// RateLimitRequest: POST /_fake/ratelimit (RateLimit).
	RateLimitRequest struct {
		PerSecond float64 `json:"perSecond"`
	}
)

// controlHandler serves the shared endpoints: POST /_fake/fail, /_fake/delay,
// /_fake/hang, /_fake/ratelimit and /_fake/clear (ClearFaults), then the
// service's own (Service.Control).
func (e *Endpoint) controlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /_fake/fail", func(w http.ResponseWriter, r *http.Request) {
		var req FailRequest
		if !ReadJSON(w, r, &req) {
			return
		}
		if req.Op == "" || req.Code == "" {
			http.Error(w, "op and code are required", http.StatusBadRequest)
			return
		}
		e.Inject(req.Op, req.Fault)
		WriteOK(w)
	})
	delayHandler := func(hang bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			var req DelayRequest
			if !ReadJSON(w, r, &req) {
				return
			}
			if req.Op == "" {
				http.Error(w, "op is required", http.StatusBadRequest)
				return
			}
			d := hangDuration
			if !hang {
				var err error
				if d, err = time.ParseDuration(req.Duration); err != nil {
					http.Error(w, fmt.Sprintf("a Go duration is required: %v", err), http.StatusBadRequest)
					return
				}
			}
			n := req.Count
			if n <= 0 {
				n = -1
			}
			mode := delayCall
			switch {
			case req.After:
				mode = delayResponse
			case req.Lands:
				mode = delayEffect
			}
			e.setDelay(req.Op, n, d, mode)
			WriteOK(w)
		}
	}
	mux.HandleFunc("POST /_fake/delay", delayHandler(false))
	mux.HandleFunc("POST /_fake/hang", delayHandler(true))
	mux.HandleFunc("POST /_fake/ratelimit", func(w http.ResponseWriter, r *http.Request) {
		var req RateLimitRequest
		if !ReadJSON(w, r, &req) {
			return
		}
		e.RateLimit(req.PerSecond)
		WriteOK(w)
	})
	mux.HandleFunc("POST /_fake/clear", func(w http.ResponseWriter, r *http.Request) {
		e.ClearFaults()
		WriteOK(w)
	})
	if e.svc.Control != nil {
		e.svc.Control(mux)
	}
	return mux
}

// ReadJSON decodes the request body into v; on failure it answers 400 and
// returns false.
func ReadJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		http.Error(w, "bad JSON: "+err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}

// WriteJSON answers status with v as JSON.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// WriteOK answers a control request that has nothing to return:
// 200 {"status":"ok"}.
func WriteOK(w http.ResponseWriter) {
	WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}
