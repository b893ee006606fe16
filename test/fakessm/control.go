package fakessm

import (
	"fmt"
	"net/http"
	"time"

	"github.com/bastion-dev/bastion/test/fakeaws"
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
		Instances: s.Instances(), Requests: s.Requests(), Sessions: s.Sessions(),
		Calls: s.CallsByOp(), FaultsServed: s.FaultsServedByOp()}
	s.mu.Lock()
	defer s.mu.Unlock()
	st.Settings = make(map[string]string, len(s.settings))
	for k, v := range s.settings {
		st.Settings[k] = v.value
	}
	return st
}

// Control request bodies (JSON) for SSM's own /_fake/ endpoints; the
// faults, delays and rate limit are fakeaws's (FailRequest, DelayRequest,
// RateLimitRequest).
type (
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

// control adds GET /_fake/state and the seeding endpoints to the control API.
func (s *Server) control(mux *http.ServeMux) {
	mux.HandleFunc("GET /_fake/state", func(w http.ResponseWriter, r *http.Request) {
		fakeaws.WriteJSON(w, http.StatusOK, s.Snapshot())
	})
	mux.HandleFunc("POST /_fake/setting", func(w http.ResponseWriter, r *http.Request) {
		var req SettingRequest
		if !fakeaws.ReadJSON(w, r, &req) {
			return
		}
		if req.SettingID == "" {
			req.SettingID = ActivationTierSetting
		}
		s.SetServiceSetting(req.SettingID, req.Value)
		fakeaws.WriteOK(w)
	})
	mux.HandleFunc("POST /_fake/ping", func(w http.ResponseWriter, r *http.Request) {
		var req PingRequest
		if !fakeaws.ReadJSON(w, r, &req) {
			return
		}
		if err := s.applyPing(req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fakeaws.WriteOK(w)
	})
	mux.HandleFunc("POST /_fake/session", func(w http.ResponseWriter, r *http.Request) {
		var req Session
		if !fakeaws.ReadJSON(w, r, &req) {
			return
		}
		se, err := s.StartSession(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fakeaws.WriteJSON(w, http.StatusOK, se)
	})
	mux.HandleFunc("POST /_fake/session/end", func(w http.ResponseWriter, r *http.Request) {
		var req EndSessionRequest
		if !fakeaws.ReadJSON(w, r, &req) {
			return
		}
		if err := s.EndSession(req.SessionID); err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		fakeaws.WriteOK(w)
	})
	mux.HandleFunc("POST /_fake/instance", func(w http.ResponseWriter, r *http.Request) {
		var req Instance
		if !fakeaws.ReadJSON(w, r, &req) {
			return
		}
		fakeaws.WriteJSON(w, http.StatusOK, s.AddInstance(req))
	})
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
