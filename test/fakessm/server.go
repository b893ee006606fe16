// Package fakessm is an in-process stand-in for the AWS Systems Manager API,
// used by tests because AWS cannot be reached from the test machines.
//
// It speaks the wire protocol the real service speaks (AWS JSON 1.1 over
// `POST /` with `X-Amz-Target: AmazonSSM.<Op>`, SigV4-signed requests,
// `{"__type": …}` error bodies; all of it test/fakeaws), so the real
// aws-sdk-go-v2 client reached through AWS_ENDPOINT_URL_SSM cannot tell it
// from the real thing. It also implements the two operations only the SSM
// agent calls (RegisterManagedInstance, UpdateInstanceInformation) so that
// the fake agent in test/fakeagent can register and ping like the real one.
//
// Tests inspect and steer it through Go methods (faults, delays, the request
// log: those of the embedded fakeaws.Endpoint), or over HTTP under /_fake/
// when it runs as a separate process (test/fakessm/cmd/fakessm).
package fakessm

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
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
	DefaultOnlineWindow    = 10 * time.Minute

	// ActivationTierSetting is the service setting the product reads to know
	// whether Session Manager can reach hybrid (mi-) instances.
	ActivationTierSetting = "/ssm/managed-instance/activation-tier"
)

// AnyOp makes a fault or delay apply to every operation.
const AnyOp = fakeaws.AnyOp

// The shared machinery's types, under the names tests have always used.
type (
	// Fault is an injected error response (see fakeaws.Fault).
	Fault = fakeaws.Fault
	// Request records one API call (see fakeaws.Request).
	Request = fakeaws.Request
	// FailRequest, DelayRequest and RateLimitRequest are the bodies of
	// POST /_fake/fail, /_fake/delay and /_fake/ratelimit.
	FailRequest      = fakeaws.FailRequest
	DelayRequest     = fakeaws.DelayRequest
	RateLimitRequest = fakeaws.RateLimitRequest
)

// Options configures a Server. The zero value is usable.
type Options struct {
	// Region the server pretends to be in; SigV4 scopes naming another
	// region are rejected as the real regional endpoint does.
	Region string
	// Credentials maps access key id → secret access key of the callers the
	// server knows. Default: {AKIDFAKE: fakesecret}. Managed-instance keys
	// (mi-…, used by the fake agent) are always known, see AgentSecret.
	Credentials map[string]string
	// Clock drives ping ages, registration and expiration dates. Signature
	// expiry and rate limiting always use the wall clock, as clients sign with it.
	Clock func() time.Time
	// OnlineWindow is how long after its last ping an instance still counts
	// as Online. Default 10 minutes.
	OnlineWindow time.Duration
	// AccountID used in ARNs and error messages. Default 123456789012.
	AccountID string
	// ActivationTier is the initial value of ActivationTierSetting.
	// Default "advanced" (real accounts default to "standard").
	ActivationTier string
}

// Server is a fake SSM endpoint. Create it with New, then Start it (or mount
// Handler yourself). All methods are safe for concurrent use.
type Server struct {
	*fakeaws.Endpoint
	opts Options

	mu          sync.Mutex
	settings    map[string]*setting
	activations map[string]*Activation // by ActivationID, includes deleted ones
	instances   map[string]*Instance   // by InstanceID, only registered ones
	sessions    map[string]*Session    // by SessionId
}

type setting struct {
	value        string
	status       string
	lastModified time.Time
	lastUser     string
}

// New returns a server that is not listening yet.
func New(opts Options) *Server {
	if opts.Region == "" {
		opts.Region = DefaultRegion
	}
	if opts.Credentials == nil {
		opts.Credentials = map[string]string{DefaultAccessKeyID: DefaultSecretAccessKey}
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.OnlineWindow <= 0 {
		opts.OnlineWindow = DefaultOnlineWindow
	}
	if opts.AccountID == "" {
		opts.AccountID = DefaultAccountID
	}
	if opts.ActivationTier == "" {
		opts.ActivationTier = "advanced"
	}
	s := &Server{
		opts:        opts,
		settings:    map[string]*setting{},
		activations: map[string]*Activation{},
		instances:   map[string]*Instance{},
		sessions:    map[string]*Session{},
	}
	s.settings[ActivationTierSetting] = &setting{
		value: opts.ActivationTier, status: statusFor(opts.ActivationTier, "standard"),
		lastModified: opts.Clock(), lastUser: "System",
	}
	s.Endpoint = fakeaws.New(fakeaws.Service{
		Name:           "fakessm",
		TargetPrefix:   "AmazonSSM.",
		SigningName:    "ssm",
		Region:         opts.Region,
		Secret:         s.secret,
		Ops:            s.ops(),
		Unsigned:       map[string]bool{"RegisterManagedInstance": true}, // the agent calls it anonymously (anonauth)
		Modeled:        func(code string) bool { return modeledCodes[code] },
		ErrorNamespace: "http://internal.amazon.com/coral/com.amazonaws.ssm/",
		FaultMessage:   s.faultMessage,
		Control:        s.control,
		Clock:          opts.Clock,
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

var managedIDExpr = regexp.MustCompile(`^mi-[0-9a-f]{17}$`)

// secret knows the configured credentials and every managed instance's key.
func (s *Server) secret(akid string) (string, bool) {
	if secret, ok := s.opts.Credentials[akid]; ok {
		return secret, true
	}
	if managedIDExpr.MatchString(akid) {
		return AgentSecret(akid), true
	}
	return "", false
}

// AgentSecret is the secret access key that goes with the access key id
// instanceID (mi-…). The fake agent signs its calls with it and the server
// verifies them with it. (The real agent gets STS credentials through
// RequestManagedInstanceRoleToken, a private API not worth faking.)
func AgentSecret(instanceID string) string {
	sum := sha256.Sum256([]byte("fakessm-agent-secret/" + instanceID))
	return hex.EncodeToString(sum[:])
}

func statusFor(value, def string) string {
	if value == def {
		return "Default"
	}
	return "Customized"
}
