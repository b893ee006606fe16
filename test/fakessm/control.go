package fakessm

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// State is what GET /_fake/state returns.
type State struct {
	Region      string         `json:"region"`
	Activations []Activation   `json:"activations"`
	Instances   []Instance     `json:"instances"`
	Calls       map[string]int `json:"calls"`
	// FaultsServed counts calls that met an injected fault or delay, by op.
	FaultsServed map[string]int    `json:"faultsServed"`
	Requests     []Request         `json:"requests"`
	Settings     map[string]string `json:"settings"`
	Sessions     []Session         `json:"sessions"`
}

// Snapshot returns the whole inspectable state at once.
func (s *Server) Snapshot() State {
	// Empty lists, not null, for consumers in other languages.
	st := State{Region: s.opts.Region, Activations: append([]Activation{}, s.Activations()...),
		Instances: s.Instances(), Requests: append([]Request{}, s.Requests()...), Sessions: s.Sessions()}
	s.mu.Lock()
	defer s.mu.Unlock()
	st.Calls = make(map[string]int, len(s.calls))
	for k, v := range s.calls {
		st.Calls[k] = v
	}
	st.FaultsServed = make(map[string]int, len(s.served))
	for k, v := range s.served {
		st.FaultsServed[k] = v
	}
	st.Settings = make(map[string]string, len(s.settings))
	for k, v := range s.settings {
		st.Settings[k] = v.value
	}
	return st
}

// Control request bodies (JSON) for the /_fake/ endpoints.
type (
	// FailRequest: POST /_fake/fail.
	FailRequest struct {
		Op string `json:"op"`
		Fault
	}
	// DelayRequest: POST /_fake/delay; Duration is a Go duration ("5s"), "0" clears.
	DelayRequest struct {
		Op       string `json:"op"`
		Duration string `json:"duration"`
		Count    int    `json:"count"` // 0 = every call
		// After: the call takes effect at once, only its answer waits
		// (DelayResponse). Lands: it takes effect after the wait even if
		// its client gave up (DelayEffect).
		After bool `json:"after,omitempty"`
		Lands bool `json:"lands,omitempty"`
	}
	// RateLimitRequest: POST /_fake/ratelimit.
	RateLimitRequest struct {
		PerSecond float64 `json:"perSecond"`
	}
	// SettingRequest: POST /_fake/setting.
	SettingRequest struct {
		SettingID string `json:"settingId"`
		Value     string `json:"value"`
	}
	// EndSessionRequest: POST /_fake/session/end. (POST /_fake/session
	// takes a Session and starts it, answering the stored one.)
	EndSessionRequest struct {
		SessionID string `json:"sessionId"`
	}
	// PingRequest: POST /_fake/ping. Sets LastPing to Time (RFC 3339) or to
	// now minus Ago (Go duration); Status, if set, forces the PingStatus.
	PingRequest struct {
		InstanceID string `json:"instanceId"`
		Time       string `json:"time,omitempty"`
		Ago        string `json:"ago,omitempty"`
		Status     string `json:"status,omitempty"`
	}
)

func (s *Server) controlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_fake/state", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Snapshot())
	})
	mux.HandleFunc("POST /_fake/fail", func(w http.ResponseWriter, r *http.Request) {
		var req FailRequest
		if !readJSON(w, r, &req) {
			return
		}
		if req.Op == "" || req.Code == "" {
			http.Error(w, "op and code are required", http.StatusBadRequest)
			return
		}
		s.Inject(req.Op, req.Fault)
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("POST /_fake/delay", func(w http.ResponseWriter, r *http.Request) {
		var req DelayRequest
		if !readJSON(w, r, &req) {
			return
		}
		d, err := time.ParseDuration(req.Duration)
		if err != nil || req.Op == "" {
			http.Error(w, fmt.Sprintf("op and a Go duration are required: %v", err), http.StatusBadRequest)
			return
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
		s.setDelay(req.Op, n, d, mode)
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("POST /_fake/ratelimit", func(w http.ResponseWriter, r *http.Request) {
		var req RateLimitRequest
		if !readJSON(w, r, &req) {
			return
		}
		s.RateLimit(req.PerSecond)
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("POST /_fake/clear", func(w http.ResponseWriter, r *http.Request) {
		s.ClearFaults()
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("POST /_fake/setting", func(w http.ResponseWriter, r *http.Request) {
		var req SettingRequest
		if !readJSON(w, r, &req) {
			return
		}
		if req.SettingID == "" {
			req.SettingID = ActivationTierSetting
		}
		s.SetServiceSetting(req.SettingID, req.Value)
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("POST /_fake/ping", func(w http.ResponseWriter, r *http.Request) {
		var req PingRequest
		if !readJSON(w, r, &req) {
			return
		}
		if err := s.applyPing(req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("POST /_fake/session", func(w http.ResponseWriter, r *http.Request) {
		var req Session
		if !readJSON(w, r, &req) {
			return
		}
		se, err := s.StartSession(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, http.StatusOK, se)
	})
	mux.HandleFunc("POST /_fake/session/end", func(w http.ResponseWriter, r *http.Request) {
		var req EndSessionRequest
		if !readJSON(w, r, &req) {
			return
		}
		if err := s.EndSession(req.SessionID); err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("POST /_fake/instance", func(w http.ResponseWriter, r *http.Request) {
		var req Instance
		if !readJSON(w, r, &req) {
			return
		}
		writeJSON(w, http.StatusOK, s.AddInstance(req))
	})
	return mux
}

func (s *Server) applyPing(req PingRequest) error {
	switch {
	case req.Time != "":
		t, err := time.Parse(time.RFC3339Nano, req.Time)
		if err != nil {
			return fmt.Errorf("time: %w", err)
		}
		if err := s.SetPing(req.InstanceID, t); err != nil {
			return err
		}
	case req.Ago != "":
		d, err := time.ParseDuration(req.Ago)
		if err != nil {
			return fmt.Errorf("ago: %w", err)
		}
		if err := s.SetPing(req.InstanceID, s.opts.Clock().Add(-d)); err != nil {
			return err
		}
	}
	if req.Status != "" || (req.Time == "" && req.Ago == "") {
		return s.SetPingStatus(req.InstanceID, req.Status)
	}
	return nil
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		http.Error(w, "bad JSON: "+err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
