// Package fakesecrets is an in-process stand-in for AWS Secrets Manager,
// used by tests because AWS cannot be reached from the test machines.
//
// It speaks the wire protocol of the real service (AWS JSON 1.1 over
// `POST /` with `X-Amz-Target: secretsmanager.<Op>`, SigV4-signed requests
// with the service name "secretsmanager", `{"__type": …, "Message": …}`
// error bodies) for the two operations a reader needs, DescribeSecret and
// GetSecretValue, so the real aws-sdk-go-v2 client reached through
// AWS_ENDPOINT_URL_SECRETS_MANAGER cannot tell it from the real thing.
// Secrets have versions and staging labels: a new value becomes AWSCURRENT
// and the version it replaces AWSPREVIOUS, as PutSecretValue does.
//
// Tests create secrets, add versions, inject faults and read call counters
// through Go methods, or over HTTP under /_fake/ when it runs as a separate
// process (test/fakesecrets/cmd/fakesecrets).
package fakesecrets

import (
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

	"github.com/bastion-dev/bastion/test/fakesigv4"
)

// Default values used when Options leaves a field empty.
const (
	DefaultRegion          = "us-east-1"
	DefaultAccessKeyID     = "AKIDFAKE"
	DefaultSecretAccessKey = "fakesecret"
	DefaultAccountID       = "123456789012"
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
	opts Options

	mu       sync.Mutex
	secrets  []*secret // in creation order
	calls    map[string]int
	requests []Request
	faults   map[string][]*fault
	delays   map[string]*delay
	watchers []chan struct{} // closed at the next request, see NextRequest

	httpSrv  *http.Server
	url      string
	serveErr chan error
}

// Request records one API call for assertions.
type Request struct {
	Time        time.Time `json:"time"`
	Op          string    `json:"op"`
	AccessKeyID string    `json:"accessKeyId"`
	SecretID    string    `json:"secretId,omitempty"`
	// VersionID is the version GetSecretValue returned.
	VersionID string `json:"versionId,omitempty"`
	ErrorCode string `json:"errorCode,omitempty"`
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
	return &Server{
		opts:   opts,
		calls:  map[string]int{},
		faults: map[string][]*fault{},
		delays: map[string]*delay{},
	}
}

// NewTest starts a server for a test and closes it when the test ends.
func NewTest(t testing.TB, opts Options) *Server {
	t.Helper()
	s := New(opts)
	if err := s.Start(); err != nil {
		t.Fatalf("fakesecrets: %v", err)
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
		return fmt.Errorf("fakesecrets: listen %s: %w", addr, err)
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	s.mu.Lock()
	s.httpSrv, s.url, s.serveErr = srv, "http://"+ln.Addr().String(), make(chan error, 1)
	serveErr := s.serveErr
	s.mu.Unlock()
	go func() { serveErr <- srv.Serve(ln) }()
	return nil
}

// URL is the endpoint to give clients, e.g. via
// AWS_ENDPOINT_URL_SECRETS_MANAGER.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.url
}

// Region is the region the server accepts in SigV4 scopes.
func (s *Server) Region() string { return s.opts.Region }

// Close stops the listener and aborts in-flight requests (their contexts
// end, which also ends injected hangs).
func (s *Server) Close() {
	s.mu.Lock()
	srv, serveErr := s.httpSrv, s.serveErr
	s.httpSrv = nil
	s.mu.Unlock()
	if srv == nil {
		return
	}
	_ = srv.Close()
	<-serveErr // http.ErrServerClosed: the listener is gone either way
}

// Handler serves the API on "/" and the control API on "/_fake/".
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
}

func (e *apiError) Error() string { return e.Code + ": " + e.Msg }

func errorf(status int, code, format string, args ...any) *apiError {
	return &apiError{Status: status, Code: code, Msg: fmt.Sprintf(format, args...)}
}

// handlers are the operations served, by name.
var handlers = map[string]func(s *Server, in *input) (any, string, *apiError){
	OpDescribeSecret: (*Server).describeSecret,
	OpGetSecretValue: (*Server).getSecretValue,
}

// input is the union of the request members the served operations read.
type input struct {
	SecretID     *string `json:"SecretId"`
	VersionID    *string `json:"VersionId"`
	VersionStage *string `json:"VersionStage"`
}

func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Amzn-Requestid", newUUID())
	op, ok := strings.CutPrefix(r.Header.Get("X-Amz-Target"), "secretsmanager.")
	if r.Method != http.MethodPost || r.URL.Path != "/" || !ok || handlers[op] == nil {
		writeError(w, errorf(http.StatusBadRequest, "UnknownOperationException", ""))
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		writeError(w, errorf(http.StatusBadRequest, "SerializationException", "could not read body: %v", err))
		return
	}
	v := fakesigv4.Verifier{Service: "secretsmanager", Region: s.opts.Region, Secret: func(akid string) (string, bool) {
		secret, ok := s.opts.Credentials[akid]
		return secret, ok
	}}
	akid, authErr := v.Verify(r, body)
	in, parseErr := parseInput(body)

	s.mu.Lock()
	s.calls[op]++
	idx := len(s.requests)
	s.requests = append(s.requests, Request{Time: s.opts.Clock(), Op: op, AccessKeyID: akid, SecretID: deref(in.SecretID)})
	for _, c := range s.watchers {
		close(c)
	}
	s.watchers = nil
	s.mu.Unlock()

	resp, version, aerr := s.process(r.Context(), op, &in, authErr, parseErr)
	s.mu.Lock()
	s.requests[idx].VersionID = version
	if aerr != nil {
		s.requests[idx].ErrorCode = aerr.Code
	}
	s.mu.Unlock()
	if aerr != nil {
		if aerr.Code == "" { // the client gave up during a hang: nothing to answer
			return
		}
		writeError(w, aerr)
		return
	}
	out, err := json.Marshal(resp)
	if err != nil {
		writeError(w, errorf(http.StatusInternalServerError, "InternalServiceError", "marshal: %v", err))
		return
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("Content-Length", fmt.Sprint(len(out)))
	_, _ = w.Write(out)
}

// process meets a request with what a real one meets, in order:
// authentication, latency, injected faults, then the operation.
func (s *Server) process(ctx context.Context, op string, in *input, authErr *fakesigv4.Error, parseErr *apiError) (any, string, *apiError) {
	if authErr != nil {
		return nil, "", errorf(authErr.Status, authErr.Code, "%s", authErr.Message)
	}
	if d := s.nextDelay(op); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return nil, "", &apiError{}
		}
	}
	if f := s.nextFault(op, deref(in.SecretID)); f != nil {
		return nil, "", f
	}
	if parseErr != nil {
		return nil, "", parseErr
	}
	if deref(in.SecretID) == "" {
		return nil, "", errorf(http.StatusBadRequest, "ValidationException",
			"1 validation error detected: Value null at 'secretId' failed to satisfy constraint: Member must not be null")
	}
	return handlers[op](s, in)
}

// parseInput reads the request members; an empty body is an empty input.
func parseInput(body []byte) (input, *apiError) {
	var in input
	if len(strings.TrimSpace(string(body))) == 0 {
		return in, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return input{}, errorf(http.StatusBadRequest, "SerializationException", "Start of structure or map found where not expected.")
	}
	if err := json.Unmarshal(body, &in); err != nil {
		return input{}, errorf(http.StatusBadRequest, "SerializationException", "STRING_VALUE can not be converted to a String")
	}
	return in, nil
}

func writeError(w http.ResponseWriter, e *apiError) {
	body := map[string]string{"__type": e.Code}
	if e.Msg != "" {
		body["Message"] = e.Msg
	}
	out, _ := json.Marshal(body)
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-Errortype", e.Code+":")
	w.Header().Set("Content-Length", fmt.Sprint(len(out)))
	status := e.Status
	if status == 0 {
		status = http.StatusBadRequest
	}
	w.WriteHeader(status)
	_, _ = w.Write(out)
}

// Calls returns how many requests named op (authenticated or not, failed or
// not) have arrived.
func (s *Server) Calls(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[op]
}

// Requests returns a copy of every request recorded so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// NextRequest returns a channel closed when the next API request arrives
// (before it is answered), so a test can wait for a poller's next call
// instead of sleeping.
func (s *Server) NextRequest() <-chan struct{} {
	c := make(chan struct{})
	s.mu.Lock()
	defer s.mu.Unlock()
	s.watchers = append(s.watchers, c)
	return c
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
