package fakesecrets

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// State is what GET /_fake/state returns.
type State struct {
	Region   string         `json:"region"`
	Secrets  []Secret       `json:"secrets"`
	Calls    map[string]int `json:"calls"`
	Requests []Request      `json:"requests"`
}

// Snapshot returns the whole inspectable state at once.
func (s *Server) Snapshot() State {
	st := State{Region: s.opts.Region, Secrets: s.Secrets(), Requests: append([]Request{}, s.Requests()...)}
	s.mu.Lock()
	defer s.mu.Unlock()
	st.Calls = make(map[string]int, len(s.calls))
	for k, v := range s.calls {
		st.Calls[k] = v
	}
	return st
}

// Control request bodies (JSON) for the /_fake/ endpoints.
type (
	// SecretRequest: POST /_fake/secret creates a secret.
	SecretRequest struct {
		Name  string `json:"name"`
		Value string `json:"value"`
	}
	// PutRequest: POST /_fake/put adds a version (SecretString Value, or
	// SecretBinary when Binary is set) and answers {"versionId": …}.
	PutRequest struct {
		SecretID string `json:"secretId"`
		Value    string `json:"value"`
		Binary   []byte `json:"binary,omitempty"` // base64 in JSON
	}
	// FailRequest: POST /_fake/fail.
	FailRequest struct {
		Op string `json:"op"`
		Fault
	}
	// DelayRequest: POST /_fake/delay; Duration is a Go duration ("5s"),
	// "0" clears; POST /_fake/hang takes the same body without Duration.
	DelayRequest struct {
		Op       string `json:"op"`
		Duration string `json:"duration,omitempty"`
		Count    int    `json:"count"` // 0 = every call
	}
)

func (s *Server) controlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_fake/state", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Snapshot())
	})
	mux.HandleFunc("POST /_fake/secret", func(w http.ResponseWriter, r *http.Request) {
		var req SecretRequest
		if !readJSON(w, r, &req) {
			return
		}
		sec, err := s.CreateSecret(req.Name, req.Value)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, http.StatusOK, sec)
	})
	mux.HandleFunc("POST /_fake/put", func(w http.ResponseWriter, r *http.Request) {
		var req PutRequest
		if !readJSON(w, r, &req) {
			return
		}
		var id string
		var err error
		if req.Binary != nil {
			id, err = s.PutSecretBinary(req.SecretID, req.Binary)
		} else {
			id, err = s.PutSecretString(req.SecretID, req.Value)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"versionId": id})
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
	delayHandler := func(hang bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			var req DelayRequest
			if !readJSON(w, r, &req) {
				return
			}
			d := 24 * time.Hour
			if !hang {
				var err error
				if d, err = time.ParseDuration(req.Duration); err != nil {
					http.Error(w, fmt.Sprintf("a Go duration is required: %v", err), http.StatusBadRequest)
					return
				}
			}
			if req.Op == "" {
				http.Error(w, "op is required", http.StatusBadRequest)
				return
			}
			n := req.Count
			if n <= 0 {
				n = -1
			}
			s.DelayNext(req.Op, n, d)
			writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
		}
	}
	mux.HandleFunc("POST /_fake/delay", delayHandler(false))
	mux.HandleFunc("POST /_fake/hang", delayHandler(true))
	mux.HandleFunc("POST /_fake/clear", func(w http.ResponseWriter, r *http.Request) {
		s.ClearFaults()
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	return mux
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
