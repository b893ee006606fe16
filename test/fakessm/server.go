// Package fakessm is an in-process stand-in for the AWS Systems Manager API,
// used by tests because AWS cannot be reached from the test machines.
//
// It speaks the wire protocol the real service speaks (AWS JSON 1.1 over
// `POST /` with `X-Amz-Target: AmazonSSM.<Op>`, SigV4-signed requests,
// `{"__type": …}` error bodies), so the real aws-sdk-go-v2 client reached
// through AWS_ENDPOINT_URL_SSM cannot tell it from the real thing. It also
// implements the two operations only the SSM agent calls
// (RegisterManagedInstance, UpdateInstanceInformation) so that the fake agent
// in test/fakeagent can register and ping like the real one.
//
// Tests inspect and steer it through Go methods, or over HTTP under /_fake/
// when it runs as a separate process (test/fakessm/cmd/fakessm).
package fakessm

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// Default values used when Options leaves a field empty.
const (
	DefaultRegion          = "us-east-1"
	DefaultAccessKeyID     = "AKIDFAKE"
	DefaultSecretAccessKey = "fakesecret"
	DefaultAccountID       = "123456789012"
	DefaultOnlineWindow    = 10 * time.Minute

	// ActivationTierSetting is the service setting the product reads to know
	// whether Session Manager can reach hybrid (mi-) instances.
	ActivationTierSetting = "/ssm/managed-instance/activation-tier"
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
	opts Options

	mu          sync.Mutex
	settings    map[string]*setting
	activations map[string]*Activation // by ActivationID, includes deleted ones
	instances   map[string]*Instance   // by InstanceID, only registered ones
	sessions    map[string]*Session    // by SessionId
	calls       map[string]int
	requests    []Request
	faults      map[string][]*fault
	served      map[string]int // injected faults answered, by op
	delays      map[string]*delay
	bucket      *tokenBucket
	hooks       map[string][]func(Request)

	httpSrv  *http.Server
	listener net.Listener
	url      string
	serveErr chan error
}

// Request records one API call for assertions.
type Request struct {
	Time        time.Time `json:"time"`
	Op          string    `json:"op"`
	AccessKeyID string    `json:"accessKeyId"` // empty for unsigned calls
	ErrorCode   string    `json:"errorCode,omitempty"`
	// Body is the request's JSON input as sent.
	Body string `json:"body,omitempty"`
	// Fault is what was injected and served: the code of the fault that
	// answered it, or "delay".
	Fault string `json:"fault,omitempty"`
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
		calls:       map[string]int{},
		faults:      map[string][]*fault{},
		served:      map[string]int{},
		delays:      map[string]*delay{},
		hooks:       map[string][]func(Request){},
	}
	s.settings[ActivationTierSetting] = &setting{
		value: opts.ActivationTier, status: statusFor(opts.ActivationTier, "standard"),
		lastModified: opts.Clock(), lastUser: "System",
	}
	return s
}

// NewTest starts a server for a test and closes it when the test ends.
func NewTest(t testing.TB, opts Options) *Server {
	t.Helper()
	s := New(opts)
	if err := s.Start(); err != nil {
		t.Fatalf("fakessm: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// Start listens on a random loopback port.
func (s *Server) Start() error { return s.StartAddr("127.0.0.1:0") }

// StartAddr listens on addr (host:port).
func (s *Server) StartAddr(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("fakessm: listen %s: %w", addr, err)
	}
	s.mu.Lock()
	s.listener = ln
	s.url = "http://" + ln.Addr().String()
	s.httpSrv = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	s.serveErr = make(chan error, 1)
	srv := s.httpSrv
	s.mu.Unlock()
	go func() { s.serveErr <- srv.Serve(ln) }()
	return nil
}

// URL is the endpoint to give clients, e.g. via AWS_ENDPOINT_URL_SSM.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.url
}

// Region is the region the server accepts in SigV4 scopes.
func (s *Server) Region() string { return s.opts.Region }

// Close stops the listener and aborts in-flight requests (their contexts end,
// which also ends injected delays).
func (s *Server) Close() {
	s.mu.Lock()
	srv := s.httpSrv
	s.httpSrv = nil
	s.mu.Unlock()
	if srv == nil {
		return
	}
	_ = srv.Close()
	<-s.serveErr // http.ErrServerClosed; the listener is gone either way
}

// Handler serves the SSM API on "/" and the control API on "/_fake/".
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/_fake/", s.controlHandler())
	mux.HandleFunc("/", s.serveAPI)
	return mux
}

// apiError is an AWS JSON 1.1 error response.
type apiError struct {
	Status int
	Code   string
	Msg    string
	// modeled errors (SSM's own exception shapes) carry "Message"; common
	// AWS errors (throttling, auth) carry "message", as the real service does.
	Modeled bool
}

func (e *apiError) Error() string { return e.Code + ": " + e.Msg }

func errModeled(code, format string, args ...any) *apiError {
	return &apiError{Status: http.StatusBadRequest, Code: code, Msg: fmt.Sprintf(format, args...), Modeled: true}
}

func errCommon(status int, code, format string, args ...any) *apiError {
	return &apiError{Status: status, Code: code, Msg: fmt.Sprintf(format, args...)}
}

// validationErr mimics the model-constraint errors AWS front ends emit.
func validationErr(value any, member, constraint string) *apiError {
	return errCommon(http.StatusBadRequest, "ValidationException",
		"1 validation error detected: Value '%v' at '%s' failed to satisfy constraint: %s", value, member, constraint)
}

func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request) {
	reqID := newUUID()
	w.Header().Set("X-Amzn-Requestid", reqID)

	target := r.Header.Get("X-Amz-Target")
	op, ok := strings.CutPrefix(target, "AmazonSSM.")
	if r.Method != http.MethodPost || r.URL.Path != "/" || !ok || handlers[op] == nil {
		writeError(w, errCommon(http.StatusBadRequest, "UnknownOperationException", ""))
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 10<<20))
	if err != nil {
		writeError(w, errCommon(http.StatusBadRequest, "SerializationException", "could not read body: %v", err))
		return
	}

	akid, aerr := s.authenticate(r, op, body)

	s.mu.Lock()
	s.calls[op]++
	rec := Request{Time: s.opts.Clock(), Op: op, AccessKeyID: akid, Body: string(body)}
	idx := len(s.requests)
	s.requests = append(s.requests, rec)
	s.mu.Unlock()

	resp, fault, aerr := s.process(r.Context(), op, akid, body, aerr)
	s.mu.Lock()
	if aerr != nil {
		s.requests[idx].ErrorCode = aerr.Code
	}
	if fault != "" {
		s.requests[idx].Fault = fault
		s.served[op]++
	}
	rec = s.requests[idx]
	hooks := append([]func(Request){}, s.hooks[op]...)
	hooks = append(hooks, s.hooks[AnyOp]...)
	s.mu.Unlock()
	for _, h := range hooks {
		h(rec)
	}
	if aerr != nil {
		if aerr.Code == "" { // request context ended during a delay: nothing to answer
			return
		}
		writeError(w, aerr)
		return
	}
	out, err := json.Marshal(resp)
	if err != nil {
		writeError(w, errCommon(http.StatusInternalServerError, "InternalServerError", "marshal: %v", err))
		return
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("Content-Length", fmt.Sprint(len(out)))
	_, _ = w.Write(out)
}

// process applies the injected behaviour in the order a real request meets
// it: authentication, throttling, latency, then the operation itself. fault
// names what was injected and served, if anything: the code of a fault that
// answered, else "delay". A fault injected with After answers only once the
// operation has taken effect: a response lost on the way back.
func (s *Server) process(ctx context.Context, op, akid string, body []byte, authErr *apiError) (resp any, fault string, _ *apiError) {
	if authErr != nil {
		return nil, "", authErr
	}
	if !s.takeToken() {
		return nil, "", errCommon(http.StatusBadRequest, "ThrottlingException", "Rate exceeded")
	}
	d, mode := s.nextDelay(op)
	wait := func() bool { // false: the client gave up
		fault = "delay"
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-ctx.Done():
			if mode == delayEffect {
				<-t.C // lands all the same, unanswered
			}
			return false
		}
	}
	gone := false // the client gave up during a delayEffect wait
	if d > 0 && mode != delayResponse && !wait() {
		if mode == delayCall {
			return nil, fault, &apiError{} // client gave up; answer nothing
		}
		gone = true
	}
	f, after := s.nextFault(op)
	if f != nil && !after {
		return nil, f.Code, f
	}
	var in map[string]json.RawMessage
	if len(bytes.TrimSpace(body)) == 0 {
		body = []byte("{}")
	}
	if err := json.Unmarshal(body, &in); err != nil {
		return nil, fault, errCommon(http.StatusBadRequest, "SerializationException", "Start of structure or map found where not expected.")
	}
	resp, aerr := handlers[op](s, &call{akid: akid, body: body})
	if gone || d > 0 && mode == delayResponse && !wait() {
		return nil, fault, &apiError{} // done, but the answer never arrives
	}
	if f != nil && aerr == nil {
		return nil, f.Code, f
	}
	return resp, fault, aerr
}

// After calls fn with each request to op (or AnyOp) once it has been
// answered, outside the server's lock: a test can change the state between
// calls (e.g. mark an instance Online after the third poll). Hooks stay
// until the server is closed.
func (s *Server) After(op string, fn func(Request)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hooks[op] = append(s.hooks[op], fn)
}

func writeError(w http.ResponseWriter, e *apiError) {
	body := map[string]string{"__type": e.Code}
	if e.Msg != "" {
		if e.Modeled {
			body["Message"] = e.Msg
		} else {
			body["message"] = e.Msg
		}
	}
	out, _ := json.Marshal(body)
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-Errortype", e.Code+":http://internal.amazon.com/coral/com.amazonaws.ssm/")
	w.Header().Set("Content-Length", fmt.Sprint(len(out)))
	status := e.Status
	if status == 0 {
		status = http.StatusBadRequest
	}
	w.WriteHeader(status)
	_, _ = w.Write(out)
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func statusFor(value, def string) string {
	if value == def {
		return "Default"
	}
	return "Customized"
}
