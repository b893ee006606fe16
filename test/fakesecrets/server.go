// Package fakesecrets is an in-process stand-in for AWS Secrets Manager,
// used by tests because AWS cannot be reached from the test machines.
//
// It speaks the wire protocol of the real service (AWS JSON 1.1 over
// `POST /` with `X-Amz-Target: secretsmanager.<Op>`, SigV4-signed requests
// with the service name "secretsmanager", `{"__type": …, "Message": …}`
// error bodies; all of it test/fakeaws) for the two operations a reader
// needs, DescribeSecret and GetSecretValue, so the real aws-sdk-go-v2
// client reached through AWS_ENDPOINT_URL_SECRETS_MANAGER cannot tell it
// from the real thing. Secrets have versions and staging labels: a new value
// becomes AWSCURRENT and the version it replaces AWSPREVIOUS, as
// PutSecretValue does.
//
// Tests create secrets, add versions, inject faults and read call counters
// through Go methods (faults, delays and the request log are those of the
// embedded fakeaws.Endpoint), or over HTTP under /_fake/ when it runs as a
// separate process (test/fakesecrets/cmd/fakesecrets).
package fakesecrets

import (
	"encoding/json"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/test/fakeaws"
)

// Default values used when Options leaves a field empty.
const (
	DefaultRegion          = fakeaws.DefaultRegion
	DefaultAccessKeyID     = fakeaws.DefaultAccessKeyID
	DefaultSecretAccessKey = fakeaws.DefaultSecretAccessKey
	DefaultAccountID       = fakeaws.DefaultAccountID
)

// Operations the fake serves, as named in X-Amz-Target after "secretsmanager.".
const (
	OpDescribeSecret = "DescribeSecret"
	OpGetSecretValue = "GetSecretValue"
)

// Staging labels Secrets Manager moves on every new value.
const (
	StageCurrent  = "AWSCURRENT"
	StagePrevious = "AWSPREVIOUS"
)

// AnyOp makes a fault or delay apply to every operation.
const AnyOp = fakeaws.AnyOp

// The shared machinery's types, under the names tests have always used.
type (
	// Fault is an injected error response (see fakeaws.Fault).
	Fault = fakeaws.Fault
	// FailRequest and DelayRequest are the bodies of POST /_fake/fail and
	// /_fake/delay (/_fake/hang).
	FailRequest  = fakeaws.FailRequest
	DelayRequest = fakeaws.DelayRequest
)

// Options configures a Server. The zero value is usable.
type Options struct {
	// Region the server pretends to be in: ARNs name it, and SigV4 scopes
	// naming another region are refused as the real regional endpoint does.
	Region string
	// Credentials maps access key id → secret access key of the callers the
	// server knows. Default: {AKIDFAKE: fakesecret}.
	Credentials map[string]string
	// AccountID used in ARNs and error messages. Default 123456789012.
	AccountID string
	// Clock stamps creation and change dates. Signature expiry always uses
	// the wall clock, as clients sign with it.
	Clock func() time.Time
}

// Server is a fake Secrets Manager endpoint. Create it with New, then Start
// it (or mount Handler yourself). All methods are safe for concurrent use.
type Server struct {
	*fakeaws.Endpoint
	opts Options

	mu      sync.Mutex
	secrets []*secret // in creation order
}

// Request records one API call for assertions: the shared record with the
// secret asked for and the version returned.
type Request struct {
	fakeaws.Request
	SecretID string `json:"secretId,omitempty"`
	// VersionID is the version GetSecretValue returned.
	VersionID string `json:"versionId,omitempty"`
}

// New returns a server that is not listening yet.
func New(opts Options) *Server {
	if opts.Region == "" {
		opts.Region = DefaultRegion
	}
	if opts.Credentials == nil {
		opts.Credentials = map[string]string{DefaultAccessKeyID: DefaultSecretAccessKey}
	}
	if opts.AccountID == "" {
		opts.AccountID = DefaultAccountID
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	s := &Server{opts: opts}
	s.Endpoint = fakeaws.New(fakeaws.Service{
		Name:         "fakesecrets",
		TargetPrefix: "secretsmanager.",
		SigningName:  "secretsmanager",
		Region:       opts.Region,
		Secret: func(akid string) (string, bool) {
			secret, ok := s.opts.Credentials[akid]
			return secret, ok
		},
		Ops: map[string]fakeaws.Handler{
			OpDescribeSecret: s.withInput(s.describeSecret),
			OpGetSecretValue: s.withInput(s.getSecretValue),
		},
		Modeled:      func(string) bool { return true }, // every error body says "Message"
		FaultMessage: s.faultMessage,
		Control:      s.control,
		Clock:        opts.Clock,
	})
	return s
}

// NewTest starts a server for a test and closes it when the test ends.
func NewTest(t testing.TB, opts Options) *Server {
	t.Helper()
	s := New(opts)
	s.StartTest(t)
	return s
}

// input is the union of the request members the served operations read.
type input struct {
	SecretID     *string `json:"SecretId"`
	VersionID    *string `json:"VersionId"`
	VersionStage *string `json:"VersionStage"`
}

// withInput parses the members both operations read and checks the one
// both require.
func (s *Server) withInput(op func(in *input) (any, *fakeaws.Error)) fakeaws.Handler {
	return func(c *fakeaws.Call) (any, *fakeaws.Error) {
		var in input
		if err := json.Unmarshal(c.Body, &in); err != nil {
			return nil, fakeaws.Errorf(http.StatusBadRequest, "SerializationException", "STRING_VALUE can not be converted to a String")
		}
		if deref(in.SecretID) == "" {
			return nil, fakeaws.ValidationError(nil, "secretId", "Member must not be null")
		}
		return op(&in)
	}
}

// secretID is the SecretId a request body names, "" if none.
func secretID(body []byte) string {
	var in input
	_ = json.Unmarshal(body, &in)
	return deref(in.SecretID)
}

// Requests returns a copy of every request recorded so far.
func (s *Server) Requests() []Request {
	var out []Request
	for _, r := range s.Endpoint.Requests() {
		var resp struct{ VersionId string }
		if r.Response != "" {
			_ = json.Unmarshal([]byte(r.Response), &resp)
		}
		out = append(out, Request{Request: r, SecretID: secretID([]byte(r.Body)), VersionID: resp.VersionId})
	}
	return out
}

// faultMessage is the text Secrets Manager sends with code, for injected
// faults; "" leaves AWS's common messages to fakeaws.
func (s *Server) faultMessage(c *fakeaws.Call, code string) string {
	switch code {
	case "AccessDeniedException":
		resource := secretID(c.Body)
		if sec, ok := s.Secret(resource); ok {
			resource = sec.ARN
		}
		return fakeaws.AccessDenied(s.opts.AccountID, "secretsmanager:"+c.Op, resource)
	case "ResourceNotFoundException":
		return errNotFound().Message
	case "DecryptionFailure":
		return "Secrets Manager can't decrypt the protected secret text using the provided KMS key."
	case "InternalServiceError":
		return "An error occurred on the server side."
	}
	return ""
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// errNotFound is the answer for a secret that does not exist.
func errNotFound() *fakeaws.Error {
	return fakeaws.Errorf(http.StatusBadRequest, "ResourceNotFoundException", "Secrets Manager can't find the specified secret.")
}
