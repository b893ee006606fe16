package fakesecrets

import (
	"net/http"

	"github.com/bastion-dev/bastion/test/fakeaws"
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
	return State{Region: s.opts.Region, Secrets: s.Secrets(), Requests: append([]Request{}, s.Requests()...),
		Calls: s.CallsByOp()}
}

// Control request bodies (JSON) for the service's own /_fake/ endpoints;
// faults and delays are fakeaws's (FailRequest, DelayRequest).
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
)

// control adds GET /_fake/state and the seeding endpoints to the control API.
func (s *Server) control(mux *http.ServeMux) {
	mux.HandleFunc("GET /_fake/state", func(w http.ResponseWriter, r *http.Request) {
		fakeaws.WriteJSON(w, http.StatusOK, s.Snapshot())
	})
	mux.HandleFunc("POST /_fake/secret", func(w http.ResponseWriter, r *http.Request) {
		var req SecretRequest
		if !fakeaws.ReadJSON(w, r, &req) {
			return
		}
		sec, err := s.CreateSecret(req.Name, req.Value)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fakeaws.WriteJSON(w, http.StatusOK, sec)
	})
	mux.HandleFunc("POST /_fake/put", func(w http.ResponseWriter, r *http.Request) {
		var req PutRequest
		if !fakeaws.ReadJSON(w, r, &req) {
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
		fakeaws.WriteJSON(w, http.StatusOK, map[string]string{"versionId": id})
	})
}
