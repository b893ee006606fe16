// Package fakeaws is what the in-repo fakes of AWS services share
// (test/fakessm, test/fakesecrets, the API side of test/fakeecs): an
// Endpoint that speaks AWS JSON 1.1 the way the real front ends do, so that
// the real aws-sdk-go-v2 client, aimed at it through AWS_ENDPOINT_URL_<SERVICE>,
// cannot tell it from AWS.
//
// An Endpoint owns the HTTP server, the wire (`POST /` with `X-Amz-Target:
// <prefix><Op>`, SigV4 checked (sigv4.go), `{"__type", "Message"}`
// errors with the statuses AWS uses), the log of requests, fault, delay and
// rate-limit injection with a count of what fired, and the control API
// under /_fake/ for tests that run a fake as its own process. A fake
// describes its service (Service) and keeps only the service's model: its
// operations, their state and their realistic messages.
package fakeaws

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The credentials, region and account the fakes accept and write by
// default: one bastion signs for all of them with the same keys.
const (
	DefaultRegion          = "us-east-1"
	DefaultAccessKeyID     = "AKIDFAKE"
	DefaultSecretAccessKey = "fakesecret"
	DefaultAccountID       = "123456789012"
)

// Service describes the AWS JSON 1.1 service an Endpoint serves.
type Service struct {
	// Name prefixes the Endpoint's own errors, e.g. "fakessm".
	Name string
	// TargetPrefix comes before the operation in X-Amz-Target, e.g.
	// "AmazonSSM." or "secretsmanager.".
	TargetPrefix string
	// SigningName is the SigV4 service name of the credential scope, e.g.
	// "ssm" or "secretsmanager"; Region the region it must name.
	SigningName string
	Region      string
	// Secret returns the secret access key of an access key id; false
	// means an unknown caller (UnrecognizedClientException).
	Secret func(accessKeyID string) (string, bool)
	// Ops are the operations served, by name. Any other target is an
	// UnknownOperationException.
	Ops map[string]Handler
	// Unsigned names the operations AWS serves anonymously (the SSM
	// agent's RegisterManagedInstance): no signature is checked, the
	// caller's key id is still recorded when the request names one.
	Unsigned map[string]bool
	// Modeled reports whether code is one of the service's own exception
	// shapes, whose body carries "Message"; AWS's common errors
	// (throttling, authentication, validation) carry "message". Nil: none
	// is (ECS writes "message" throughout).
	Modeled func(code string) bool
	// ErrorNamespace follows the code and a colon in X-Amzn-Errortype,
	// e.g. "http://internal.amazon.com/coral/com.amazonaws.ssm/"; the SDK
	// reads the code before the colon.
	ErrorNamespace string
	// FaultMessage is the text the real service sends with code for the
	// call c, used by injected faults without a Message of their own. Nil,
	// or "": DefaultMessage.
	FaultMessage func(c *Call, code string) string
	// Control adds the service's own endpoints (its state, seeding) to the
	// control API; every path must start with /_fake/. Nil: only the shared
	// ones (see Endpoint.Handler).
	Control func(mux *http.ServeMux)
	// Clock stamps the request log. Nil: time.Now. Signature expiry and
	// the rate limit always use the wall clock, as clients sign with it.
	Clock func() time.Time
}

// Endpoint serves one Service. Create it with New, then Start it (or mount
// Handler, or ServeAPI, yourself). All methods are safe for concurrent use.
type Endpoint struct {
	svc Service

	mu       sync.Mutex
	calls    map[string]int // requests by op, all outcomes
	served   map[string]int // requests by op that met an injected fault or delay
	requests []Request
	hooks    map[string][]func(Request)
	watchers []chan struct{} // closed at the next request, see NextRequest
	faults   map[string][]*fault
	delays   map[string]*delay
	bucket   *tokenBucket

	httpSrv  *http.Server
	url      string
	serveErr chan error
	closing  chan struct{} // closed by Close: delays that land anyway end too
}

// New returns an endpoint for svc that is not listening yet.
func New(svc Service) *Endpoint {
	if svc.Clock == nil {
		svc.Clock = time.Now
	}
	return &Endpoint{
		svc:    svc,
		calls:  map[string]int{},
		served: map[string]int{},
		hooks:  map[string][]func(Request){},
		faults: map[string][]*fault{},
		delays: map[string]*delay{},
	}
}

// Start listens on a random loopback port.
func (e *Endpoint) Start() error { return e.StartAddr("127.0.0.1:0") }

// StartAddr listens on addr (host:port).
func (e *Endpoint) StartAddr(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s: listen %s: %w", e.svc.Name, addr, err)
	}
	srv := &http.Server{Handler: e.Handler(), ReadHeaderTimeout: 10 * time.Second}
	serveErr := make(chan error, 1)
	e.mu.Lock()
	e.httpSrv, e.url, e.serveErr, e.closing = srv, "http://"+ln.Addr().String(), serveErr, make(chan struct{})
	e.mu.Unlock()
	go func() { serveErr <- srv.Serve(ln) }()
	return nil
}

// StartTest starts the endpoint for a test and closes it when the test ends.
func (e *Endpoint) StartTest(t testing.TB) {
	t.Helper()
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
}

// URL is the endpoint to give clients, e.g. through AWS_ENDPOINT_URL_SSM.
func (e *Endpoint) URL() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.url
}

// Region is the region the endpoint accepts in SigV4 scopes.
func (e *Endpoint) Region() string { return e.svc.Region }

// Close stops the listener and aborts in-flight requests: their contexts
// end, which also ends injected delays and hangs (a call whose effect was
// to land after its delay then never lands).
func (e *Endpoint) Close() {
	e.mu.Lock()
	srv, serveErr, closing := e.httpSrv, e.serveErr, e.closing
	e.httpSrv = nil
	e.mu.Unlock()
	if srv == nil {
		return
	}
	close(closing)
	_ = srv.Close()
	<-serveErr // http.ErrServerClosed: the listener is gone either way
}

// closeTimeout bounds Close when a process stops on a signal.
const closeTimeout = 5 * time.Second

// ServeUntilSignal is the body of a fake's own command (test/fakessm/cmd,
// test/fakesecrets/cmd): it listens on addr, prints "listening on <URL>"
// for the test that started the process, serves until SIGTERM or SIGINT,
// then closes, waiting at most 5 s.
func (e *Endpoint) ServeUntilSignal(addr string) error {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sig)
	if err := e.StartAddr(addr); err != nil {
		return err
	}
	fmt.Printf("listening on %s\n", e.URL())
	<-sig
	done := make(chan struct{})
	go func() { e.Close(); close(done) }()
	select {
	case <-done:
		return nil
	case <-time.After(closeTimeout):
		return errors.New(e.svc.Name + ": in-flight requests still open after " + closeTimeout.String())
	}
}

// Handler serves the API on "/" and the control API on "/_fake/".
func (e *Endpoint) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/_fake/", e.controlHandler())
	mux.HandleFunc("/", e.ServeAPI)
	return mux
}
