package fakesecrets

import (
	"crypto/rand"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/bastion-dev/bastion/test/fakeaws"
)

// Secret is what DescribeSecret shows of a secret, for assertions.
type Secret struct {
	ARN             string    `json:"arn"`
	Name            string    `json:"name"`
	Description     string    `json:"description,omitempty"`
	CreatedDate     time.Time `json:"createdDate"`
	LastChangedDate time.Time `json:"lastChangedDate"`
	// VersionIDsToStages lists the versions that carry a staging label;
	// versions without one are deprecated and not shown, as on AWS.
	VersionIDsToStages map[string][]string `json:"versionIdsToStages"`
	// Current is the version id labelled AWSCURRENT.
	Current string `json:"current"`
}

type secret struct {
	name, arn, description string
	created, lastChanged   time.Time
	lastAccessed           time.Time // day of the last GetSecretValue, zero if never
	versions               map[string]*version
	stages                 map[string]string // staging label → version id
}

type version struct {
	id      string
	str     *string
	bin     []byte
	created time.Time
}

// stagesOf returns the labels on version id, sorted.
func (sec *secret) stagesOf(id string) []string {
	var out []string
	for label, v := range sec.stages {
		if v == id {
			out = append(out, label)
		}
	}
	slices.Sort(out)
	return out
}

func (sec *secret) snapshot() Secret {
	out := Secret{ARN: sec.arn, Name: sec.name, Description: sec.description,
		CreatedDate: sec.created, LastChangedDate: sec.lastChanged,
		VersionIDsToStages: map[string][]string{}, Current: sec.stages[StageCurrent]}
	for id := range sec.versions {
		if st := sec.stagesOf(id); len(st) > 0 {
			out.VersionIDsToStages[id] = st
		}
	}
	return out
}

// CreateSecret creates a secret whose first version (AWSCURRENT) holds
// value as SecretString. Its ARN ends in "-" and six random characters, as
// on AWS. A name already taken is an error.
func (s *Server) CreateSecret(name, value string) (Secret, error) {
	if name == "" || strings.HasPrefix(name, "arn:") {
		return Secret{}, fmt.Errorf("fakesecrets: bad secret name %q", name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sec := range s.secrets {
		if sec.name == name {
			return Secret{}, fmt.Errorf("ResourceExistsException: The operation failed because the secret %s already exists.", name)
		}
	}
	now := s.opts.Clock()
	sec := &secret{
		name:     name,
		arn:      fmt.Sprintf("arn:aws:secretsmanager:%s:%s:secret:%s-%s", s.opts.Region, s.opts.AccountID, name, randomSuffix()),
		created:  now,
		versions: map[string]*version{},
		stages:   map[string]string{},
	}
	s.secrets = append(s.secrets, sec)
	s.putLocked(sec, &version{str: &value})
	return sec.snapshot(), nil
}

// PutSecretString adds a version holding value as SecretString, as
// PutSecretValue does: the new version becomes AWSCURRENT, the one it
// replaces AWSPREVIOUS, and the former AWSPREVIOUS loses its label.
// secretID is a name, an ARN or a partial ARN. It returns the version id.
func (s *Server) PutSecretString(secretID, value string) (string, error) {
	return s.put(secretID, &version{str: &value})
}

// PutSecretBinary adds a version holding value as SecretBinary (and no
// SecretString), like PutSecretString.
func (s *Server) PutSecretBinary(secretID string, value []byte) (string, error) {
	return s.put(secretID, &version{bin: append([]byte(nil), value...)})
}

func (s *Server) put(secretID string, v *version) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec := s.lookup(secretID)
	if sec == nil {
		return "", fmt.Errorf("ResourceNotFoundException: Secrets Manager can't find the specified secret %q", secretID)
	}
	return s.putLocked(sec, v), nil
}

// putLocked labels v AWSCURRENT and moves the labels; s.mu is held.
func (s *Server) putLocked(sec *secret, v *version) string {
	now := s.opts.Clock()
	v.id, v.created = fakeaws.NewUUID(), now
	sec.versions[v.id] = v
	if cur, ok := sec.stages[StageCurrent]; ok {
		sec.stages[StagePrevious] = cur
	}
	sec.stages[StageCurrent] = v.id
	sec.lastChanged = now
	return v.id
}

// SetDescription changes the description, which moves LastChangedDate but
// not the versions (so a reader must not take it for a new value).
func (s *Server) SetDescription(secretID, description string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec := s.lookup(secretID)
	if sec == nil {
		return fmt.Errorf("ResourceNotFoundException: Secrets Manager can't find the specified secret %q", secretID)
	}
	sec.description, sec.lastChanged = description, s.opts.Clock()
	return nil
}

// Secret returns the secret named by secretID (name, ARN or partial ARN).
func (s *Server) Secret(secretID string) (Secret, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec := s.lookup(secretID)
	if sec == nil {
		return Secret{}, false
	}
	return sec.snapshot(), true
}

// Secrets returns every secret in creation order.
func (s *Server) Secrets() []Secret {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []Secret{}
	for _, sec := range s.secrets {
		out = append(out, sec.snapshot())
	}
	return out
}

// lookup finds a secret by name, full ARN, or partial ARN (the ARN without
// the random suffix), as Secrets Manager accepts; s.mu is held.
func (s *Server) lookup(id string) *secret {
	for _, sec := range s.secrets {
		if id == sec.name || id == sec.arn || id == sec.arn[:len(sec.arn)-7] {
			return sec
		}
	}
	return nil
}

// describeOutput is DescribeSecret's response. Dates are epoch seconds, as
// the JSON 1.1 protocol writes timestamps.
type describeOutput struct {
	ARN                string              `json:"ARN"`
	Name               string              `json:"Name"`
	Description        string              `json:"Description,omitempty"`
	CreatedDate        float64             `json:"CreatedDate"`
	LastChangedDate    float64             `json:"LastChangedDate"`
	LastAccessedDate   *float64            `json:"LastAccessedDate,omitempty"`
	VersionIdsToStages map[string][]string `json:"VersionIdsToStages"`
}

func (s *Server) describeSecret(in *input) (any, *fakeaws.Error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec := s.lookup(*in.SecretID)
	if sec == nil {
		return nil, errNotFound()
	}
	snap := sec.snapshot()
	out := describeOutput{ARN: sec.arn, Name: sec.name, Description: sec.description,
		CreatedDate: fakeaws.Epoch(sec.created), LastChangedDate: fakeaws.Epoch(sec.lastChanged),
		VersionIdsToStages: snap.VersionIDsToStages}
	if !sec.lastAccessed.IsZero() {
		d := fakeaws.Epoch(sec.lastAccessed)
		out.LastAccessedDate = &d
	}
	return out, nil
}

type getOutput struct {
	ARN           string   `json:"ARN"`
	Name          string   `json:"Name"`
	VersionID     string   `json:"VersionId"`
	SecretString  *string  `json:"SecretString,omitempty"`
	SecretBinary  []byte   `json:"SecretBinary,omitempty"` // base64, as encoding/json writes []byte
	VersionStages []string `json:"VersionStages"`
	CreatedDate   float64  `json:"CreatedDate"`
}

// getSecretValue returns the version named by VersionId and/or
// VersionStage, AWSCURRENT when neither is given.
func (s *Server) getSecretValue(in *input) (any, *fakeaws.Error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec := s.lookup(*in.SecretID)
	if sec == nil {
		return nil, errNotFound()
	}
	id := deref(in.VersionID)
	if stage := deref(in.VersionStage); stage != "" || id == "" {
		if stage == "" {
			stage = StageCurrent
		}
		staged, ok := sec.stages[stage]
		if !ok {
			return nil, fakeaws.Errorf(http.StatusBadRequest, "ResourceNotFoundException",
				"Secrets Manager can't find the specified secret value for staging label: %s", stage)
		}
		if id != "" && id != staged {
			return nil, fakeaws.Errorf(http.StatusBadRequest, "InvalidRequestException",
				"The parameters VersionId and VersionStage must refer to the same version.")
		}
		id = staged
	}
	v, ok := sec.versions[id]
	if !ok {
		return nil, fakeaws.Errorf(http.StatusBadRequest, "ResourceNotFoundException",
			"Secrets Manager can't find the specified secret value for VersionId: %s", id)
	}
	y, m, d := s.opts.Clock().UTC().Date()
	sec.lastAccessed = time.Date(y, m, d, 0, 0, 0, 0, time.UTC) // AWS keeps the day only
	return getOutput{ARN: sec.arn, Name: sec.name, VersionID: v.id, SecretString: v.str,
		SecretBinary: v.bin, VersionStages: sec.stagesOf(v.id), CreatedDate: fakeaws.Epoch(v.created)}, nil
}

const suffixChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

func randomSuffix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	for i := range b {
		b[i] = suffixChars[int(b[i])%len(suffixChars)]
	}
	return string(b[:])
}
