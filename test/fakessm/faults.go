package fakessm

import (
	"fmt"
	"math"
	"net/http"
	"time"
)

// AnyOp makes a fault or delay apply to every operation.
const AnyOp = "*"

// Fault is an injected error response.
type Fault struct {
	// Count is how many calls fail; <= 0 means every call until ClearFaults.
	Count int `json:"count"`
	// Code is the __type returned, e.g. ThrottlingException.
	Code string `json:"code"`
	// Message overrides the realistic default message for Code.
	Message string `json:"message,omitempty"`
	// Status overrides the HTTP status (default 500 for InternalServerError,
	// ServiceUnavailable 503, else 400).
	Status int `json:"status,omitempty"`
	// After makes the operation take effect first and the fault answer
	// instead of its response: a response lost on the way back, so a
	// retried CreateActivation creates a second activation.
	After bool `json:"after,omitempty"`
}

type fault struct {
	Fault
	remaining int // -1 = forever
}

type delay struct {
	d         time.Duration
	remaining int // -1 = forever
	mode      delayMode
}

// delayMode says what a delayed call does when its client gives up.
type delayMode int

const (
	delayCall     delayMode = iota // nothing: the call never happened
	delayResponse                  // the call took effect at once; only its answer waits
	delayEffect                    // the call takes effect after the wait all the same
)

// modeledCodes are SSM's own exception shapes (their body carries "Message").
var modeledCodes = map[string]bool{
	"InternalServerError": true, "InvalidActivation": true, "InvalidActivationId": true,
	"ActivationExpired": true, "RegistrationLimitExceeded": true, "InvalidInstanceId": true,
	"InvalidNextToken": true, "InvalidFilterKey": true, "InvalidFilter": true, "InvalidInstanceInformationFilterValue": true,
	"InvalidResourceId": true, "InvalidResourceType": true, "TooManyTagsError": true,
	"TooManyUpdates": true, "ServiceSettingNotFound": true, "InvalidParameters": true,
}

// FailNext makes the next n calls to op (or AnyOp) fail with code. Messages
// are realistic for well-known codes, e.g. AccessDeniedException names the
// action the way IAM does.
func (s *Server) FailNext(op string, n int, code string) {
	if n <= 0 {
		return
	}
	s.Inject(op, Fault{Count: n, Code: code})
}

// Inject installs a fault for op (or AnyOp). Faults queue up in order.
func (s *Server) Inject(op string, f Fault) {
	rem := f.Count
	if rem <= 0 {
		rem = -1
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults[op] = append(s.faults[op], &fault{Fault: f, remaining: rem})
}

// ClearFaults removes every pending fault, delay and the rate limit.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = map[string][]*fault{}
	s.delays = map[string]*delay{}
	s.bucket = nil
}

// Delay makes every call to op (or AnyOp) wait d before being processed,
// until Delay(op, 0). The wait ends early when the client gives up (request
// context ends), in which case nothing is answered.
func (s *Server) Delay(op string, d time.Duration) { s.DelayNext(op, -1, d) }

// DelayNext delays only the next n calls to op; n < 0 means all.
func (s *Server) DelayNext(op string, n int, d time.Duration) { s.setDelay(op, n, d, delayCall) }

// DelayResponse makes the next n calls to op (n < 0: all) take effect at
// once and answer only after d. A client that gives up first gets no answer,
// but what the call did stays done: a CreateActivation cut short by the
// caller has still created its activation.
func (s *Server) DelayResponse(op string, n int, d time.Duration) {
	s.setDelay(op, n, d, delayResponse)
}

// DelayEffect makes the next n calls to op (n < 0: all) take effect only
// after d, even when their client has given up by then: a request still in
// flight in the service that lands later, e.g. an activation that appears
// after the caller stopped looking for it.
func (s *Server) DelayEffect(op string, n int, d time.Duration) { s.setDelay(op, n, d, delayEffect) }

func (s *Server) setDelay(op string, n int, d time.Duration, mode delayMode) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d <= 0 || n == 0 {
		delete(s.delays, op)
		return
	}
	s.delays[op] = &delay{d: d, remaining: n, mode: mode}
}

// RateLimit throttles all API calls beyond perSecond (token bucket with a
// burst of max(1, perSecond)) with ThrottlingException "Rate exceeded".
// perSecond <= 0 removes the limit.
func (s *Server) RateLimit(perSecond float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if perSecond <= 0 {
		s.bucket = nil
		return
	}
	burst := math.Max(1, perSecond)
	s.bucket = &tokenBucket{rate: perSecond, burst: burst, tokens: burst, last: time.Now()}
}

type tokenBucket struct {
	rate, burst, tokens float64
	last                time.Time
}

func (s *Server) takeToken() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.bucket
	if b == nil {
		return true
	}
	now := time.Now()
	b.tokens = math.Min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func (s *Server) nextDelay(op string) (time.Duration, delayMode) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, key := range []string{op, AnyOp} {
		d := s.delays[key]
		if d == nil {
			continue
		}
		if d.remaining > 0 {
			d.remaining--
			if d.remaining == 0 {
				delete(s.delays, key)
			}
		}
		return d.d, d.mode
	}
	return 0, delayCall
}

func (s *Server) nextFault(op string) (_ *apiError, after bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, key := range []string{op, AnyOp} {
		q := s.faults[key]
		if len(q) == 0 {
			continue
		}
		f := q[0]
		if f.remaining > 0 {
			f.remaining--
			if f.remaining == 0 {
				s.faults[key] = q[1:]
			}
		}
		return s.faultError(op, f.Fault), f.After
	}
	return nil, false
}

// FaultsServed counts the calls to op that met an injected fault or delay
// (AnyOp: all ops), so a test can check that what it injected really fired.
func (s *Server) FaultsServed(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if op == AnyOp {
		n := 0
		for _, c := range s.served {
			n += c
		}
		return n
	}
	return s.served[op]
}

// faultError builds the response for an injected fault; s.mu is held.
func (s *Server) faultError(op string, f Fault) *apiError {
	status := f.Status
	if status == 0 {
		switch f.Code {
		case "InternalServerError", "InternalFailure":
			status = http.StatusInternalServerError
		case "ServiceUnavailable":
			status = http.StatusServiceUnavailable
		default:
			status = http.StatusBadRequest
		}
	}
	msg := f.Message
	if msg == "" {
		msg = s.defaultMessage(op, f.Code)
	}
	return &apiError{Status: status, Code: f.Code, Msg: msg, Modeled: modeledCodes[f.Code]}
}

func (s *Server) defaultMessage(op, code string) string {
	switch code {
	case "ThrottlingException":
		return "Rate exceeded"
	case "AccessDeniedException":
		resource := fmt.Sprintf("arn:aws:ssm:%s:%s:*", s.opts.Region, s.opts.AccountID)
		if op == "CreateActivation" {
			resource = fmt.Sprintf("arn:aws:ssm:%s:%s:activation/*", s.opts.Region, s.opts.AccountID)
		}
		return fmt.Sprintf("User: arn:aws:sts::%s:assumed-role/bastion-task/0f1e2d3c4b5a69788796a5b4c3d2e1f0 "+
			"is not authorized to perform: ssm:%s on resource: %s because no identity-based policy allows the ssm:%s action",
			s.opts.AccountID, op, resource, op)
	case "InternalServerError":
		return "An internal error occurred."
	case "InvalidActivation":
		return "Activation ID is not valid. Verify the you entered the correct ActivationId or ActivationCode and try again."
	case "InvalidActivationId":
		return "The activation ID is not valid. Verify the you entered the correct ActivationId or ActivationCode and try again."
	case "ActivationExpired":
		return "Activation has expired."
	case "RegistrationLimitExceeded":
		return "Registration limit of the activation has been reached."
	case "InvalidInstanceId":
		return "Instance Id is not valid."
	case "InvalidFilter":
		return "The filter name isn't valid. Verify that you entered the correct name and try again."
	case "TooManyUpdates":
		return "There are concurrent updates for a resource that supports one update at a time."
	case "UnrecognizedClientException":
		return "The security token included in the request is invalid."
	case "ServiceUnavailable":
		return "Service Unavailable"
	}
	return "injected fault"
}
