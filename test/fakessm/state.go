package fakessm

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/bastion-dev/bastion/test/fakeaws"
)

// Tag is an SSM resource tag.
type Tag struct {
	Key   string `json:"Key"`
	Value string `json:"Value"`
}

// Activation is a hybrid activation as the server stores it.
type Activation struct {
	ActivationID        string    `json:"ActivationId"`
	ActivationCode      string    `json:"ActivationCode"`
	IamRole             string    `json:"IamRole"`
	DefaultInstanceName string    `json:"DefaultInstanceName,omitempty"`
	Description         string    `json:"Description,omitempty"`
	RegistrationLimit   int       `json:"RegistrationLimit"`
	RegistrationsCount  int       `json:"RegistrationsCount"`
	ExpirationDate      time.Time `json:"ExpirationDate"`
	CreatedDate         time.Time `json:"CreatedDate"`
	Tags                []Tag     `json:"Tags,omitempty"`
	Deleted             bool      `json:"Deleted,omitempty"`
}

// Ping statuses as SSM reports them.
const (
	PingOnline         = "Online"
	PingConnectionLost = "ConnectionLost"
	PingInactive       = "Inactive"
)

// Instance is a registered managed instance.
type Instance struct {
	InstanceID       string    `json:"InstanceId"`
	ActivationID     string    `json:"ActivationId,omitempty"`
	IamRole          string    `json:"IamRole,omitempty"`
	Name             string    `json:"Name,omitempty"` // the activation's DefaultInstanceName
	ResourceType     string    `json:"ResourceType"`   // ManagedInstance
	RegistrationDate time.Time `json:"RegistrationDate"`
	Tags             []Tag     `json:"Tags,omitempty"`

	// Registration material sent by the agent.
	PublicKey     string `json:"PublicKey,omitempty"`
	PublicKeyType string `json:"PublicKeyType,omitempty"`
	Fingerprint   string `json:"Fingerprint,omitempty"`

	// From the agent's pings (UpdateInstanceInformation).
	LastPing        time.Time `json:"LastPingDateTime,omitzero"`
	AgentName       string    `json:"AgentName,omitempty"`
	AgentVersion    string    `json:"AgentVersion,omitempty"`
	AgentStatus     string    `json:"AgentStatus,omitempty"`
	PlatformType    string    `json:"PlatformType,omitempty"`
	PlatformName    string    `json:"PlatformName,omitempty"`
	PlatformVersion string    `json:"PlatformVersion,omitempty"`
	IPAddress       string    `json:"IPAddress,omitempty"`
	ComputerName    string    `json:"ComputerName,omitempty"`
	Pings           int       `json:"Pings"`

	// PingStatus is computed from LastPing and the server's OnlineWindow
	// unless forced with SetPingStatus.
	PingStatus     string `json:"PingStatus"`
	pingStatusLock string
}

// Activations returns the live (not deleted) activations, oldest first.
func (s *Server) Activations() []Activation {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Activation
	for _, a := range s.activations {
		if !a.Deleted {
			c := *a
			c.Tags = append([]Tag(nil), a.Tags...)
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return activationBefore(&out[i], &out[j]) })
	return out
}

// Activation returns one activation, deleted ones included (Deleted set).
func (s *Server) Activation(id string) (Activation, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.activations[id]
	if !ok {
		return Activation{}, false
	}
	c := *a
	c.Tags = append([]Tag(nil), a.Tags...)
	return c, true
}

// RegisterInstance does what the agent's RegisterManagedInstance call does,
// with the same checks and errors (as "Code: message"), for tests that play
// the agent in process; test/fakeagent makes the real call over HTTP.
func (s *Server) RegisterInstance(activationID, activationCode string) (Instance, error) {
	body, err := json.Marshal(map[string]string{"ActivationId": activationID, "ActivationCode": activationCode,
		"PublicKey": "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA", "PublicKeyType": "Rsa", "Fingerprint": newInstanceID()})
	if err != nil {
		return Instance{}, err
	}
	out, aerr := s.registerManagedInstance(&fakeaws.Call{Op: "RegisterManagedInstance", Body: body})
	if aerr != nil {
		return Instance{}, aerr
	}
	in, _ := s.Instance(out.(map[string]string)["InstanceId"])
	return in, nil
}

// Instances returns the registered (not deregistered) instances sorted by id,
// with PingStatus evaluated now.
func (s *Server) Instances() []Instance {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Instance, 0, len(s.instances))
	for _, id := range s.sortedInstanceIDs() {
		out = append(out, s.snapshot(s.instances[id]))
	}
	return out
}

// Instance returns one registered instance.
func (s *Server) Instance(id string) (Instance, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.instances[id]
	if !ok {
		return Instance{}, false
	}
	return s.snapshot(in), true
}

// AddInstance seeds a registered instance, e.g. an orphan left by an earlier
// task. Empty InstanceID gets a fresh mi- id, zero RegistrationDate gets now,
// empty ResourceType gets ManagedInstance. Returns the stored instance.
func (s *Server) AddInstance(in Instance) Instance {
	s.mu.Lock()
	defer s.mu.Unlock()
	if in.InstanceID == "" {
		in.InstanceID = newInstanceID()
	}
	if in.RegistrationDate.IsZero() {
		in.RegistrationDate = s.opts.Clock()
	}
	if in.ResourceType == "" {
		in.ResourceType = "ManagedInstance"
	}
	in.Tags = append([]Tag(nil), in.Tags...)
	in.pingStatusLock = ""
	if in.PingStatus != "" && in.LastPing.IsZero() {
		in.pingStatusLock = in.PingStatus
	}
	c := in
	s.instances[in.InstanceID] = &c
	return s.snapshot(&c)
}

// RemoveInstance deregisters an instance as someone else would (another
// task's orphan sweep, an operator); its agent's pings then fail with
// InvalidInstanceId. It reports whether the instance existed.
func (s *Server) RemoveInstance(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.instances[id]
	delete(s.instances, id)
	return ok
}

// SetPing sets an instance's last ping time (e.g. 20 minutes ago to make it
// ConnectionLost) and drops any forced status.
func (s *Server) SetPing(instanceID string, t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.instances[instanceID]
	if !ok {
		return fmt.Errorf("fakessm: no instance %s", instanceID)
	}
	in.LastPing = t
	in.pingStatusLock = ""
	return nil
}

// SetPingStatus forces the reported PingStatus until the next real ping or
// SetPing; an empty status returns to the computed one.
func (s *Server) SetPingStatus(instanceID, status string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.instances[instanceID]
	if !ok {
		return fmt.Errorf("fakessm: no instance %s", instanceID)
	}
	in.pingStatusLock = status
	return nil
}

// SetServiceSetting sets a service setting, e.g. ActivationTierSetting to
// "standard" to test the advanced-tier check.
func (s *Server) SetServiceSetting(id, value string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	def := ""
	if id == ActivationTierSetting {
		def = "standard"
	}
	s.settings[id] = &setting{value: value, status: statusFor(value, def),
		lastModified: s.opts.Clock(), lastUser: fmt.Sprintf("arn:aws:iam::%s:user/test", s.opts.AccountID)}
}

// snapshot copies an instance with its status evaluated; s.mu is held.
func (s *Server) snapshot(in *Instance) Instance {
	c := *in
	c.Tags = append([]Tag(nil), in.Tags...)
	c.PingStatus = s.pingStatus(in)
	return c
}

func (s *Server) pingStatus(in *Instance) string {
	if in.pingStatusLock != "" {
		return in.pingStatusLock
	}
	if !in.LastPing.IsZero() && s.opts.Clock().Sub(in.LastPing) <= s.opts.OnlineWindow {
		return PingOnline
	}
	return PingConnectionLost
}

func (s *Server) sortedInstanceIDs() []string {
	ids := make([]string, 0, len(s.instances))
	for id := range s.instances {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

func newInstanceID() string { return "mi-" + randomHex17() }

// randomHex17 is the random part of managed-instance and session ids.
func randomHex17() string {
	var b [9]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])[:17]
}

// AddActivation seeds an activation without going through CreateActivation.
// Empty ActivationID/ActivationCode are generated, zero RegistrationLimit is
// 1, zero CreatedDate is now and zero ExpirationDate is CreatedDate + 24 h.
func (s *Server) AddActivation(a Activation) Activation {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a.ActivationID == "" {
		a.ActivationID = fakeaws.NewUUID()
	}
	if a.ActivationCode == "" {
		a.ActivationCode = newActivationCode()
	}
	if a.RegistrationLimit == 0 {
		a.RegistrationLimit = 1
	}
	if a.CreatedDate.IsZero() {
		a.CreatedDate = s.opts.Clock()
	}
	if a.ExpirationDate.IsZero() {
		a.ExpirationDate = a.CreatedDate.Add(24 * time.Hour)
	}
	a.Tags = append([]Tag(nil), a.Tags...)
	c := a
	s.activations[a.ActivationID] = &c
	return a
}
