package fakeaws

import (
	"math"
	"net/http"
	"time"
)

// AnyOp makes a fault or delay apply to every operation, and Calls and
// FaultsServed count them all.
const AnyOp = "*"

// Fault is an injected error response.
type Fault struct {
	// Count is how many calls fail; <= 0 means every call until ClearFaults.
	Count int `json:"count"`
	// Code is the __type returned, e.g. ThrottlingException.
	Code string `json:"code"`
	// Message overrides the service's realistic message for Code.
	Message string `json:"message,omitempty"`
	// Status overrides the HTTP status (default 500 for the services'
	// internal errors, 503 for ServiceUnavailable, else 400).
	Status int `json:"status,omitempty"`
	// After makes the operation take effect first and the fault answer
	// instead of its response: a response lost on the way back, so a
	// retried CreateActivation creates a second activation.
	After bool `json:"after,omitempty"`
}

type fault struct {
	Fault
	remaining int // -1 = until ClearFaults
}

type delay struct {
	d         time.Duration
	remaining int // -1 = until cleared
	mode      delayMode
}

// delayMode says what a delayed call does when its client gives up.
type delayMode int

const (
	delayCall     delayMode = iota // nothing: the call never happened
	delayResponse                  // the call took effect at once; only its answer waits
	delayEffect                    // the call takes effect after the wait all the same
)

// hang is long enough to outlast any client of a test.
const hangDuration = 24 * time.Hour

// FailNext makes the next n calls to op (or AnyOp) fail with code, with the
// message the real service gives for it (AccessDeniedException names the
// action the way IAM does). n <= 0 does nothing.
func (e *Endpoint) FailNext(op string, n int, code string) {
	if n <= 0 {
		return
	}
	e.Inject(op, Fault{Count: n, Code: code})
}

// Inject installs a fault for op (or AnyOp). Faults queue up in order; a
// fault for op comes before one for AnyOp.
func (e *Endpoint) Inject(op string, f Fault) {
	rem := f.Count
	if rem <= 0 {
		rem = -1
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.faults[op] = append(e.faults[op], &fault{Fault: f, remaining: rem})
}

// ClearFaults removes every pending fault, delay and the rate limit.
func (e *Endpoint) ClearFaults() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.faults = map[string][]*fault{}
	e.delays = map[string]*delay{}
	e.bucket = nil
}

// Delay makes every call to op (or AnyOp) wait d before being processed,
// until Delay(op, 0). The wait ends early when the client gives up (its
// request context ends), and then nothing is answered.
func (e *Endpoint) Delay(op string, d time.Duration) { e.DelayNext(op, -1, d) }

// DelayNext delays only the next n calls to op (n < 0: all); d <= 0 or
// n == 0 removes the delay.
func (e *Endpoint) DelayNext(op string, n int, d time.Duration) { e.setDelay(op, n, d, delayCall) }

// HangNext makes the next n calls to op (n < 0: all) wait without
// answering until the client gives up or the endpoint closes.
func (e *Endpoint) HangNext(op string, n int) { e.DelayNext(op, n, hangDuration) }

// DelayResponse makes the next n calls to op (n < 0: all) take effect at
// once and answer only after d. A client that gives up first gets no
// answer, but what the call did stays done: a CreateActivation cut short by
// the caller has still created its activation.
func (e *Endpoint) DelayResponse(op string, n int, d time.Duration) {
	e.setDelay(op, n, d, delayResponse)
}

// DelayEffect makes the next n calls to op (n < 0: all) take effect only
// after d, even when their client has given up by then: a request still in
// flight in the service that lands later, e.g. an activation that appears
// after the caller stopped looking for it.
func (e *Endpoint) DelayEffect(op string, n int, d time.Duration) { e.setDelay(op, n, d, delayEffect) }

func (e *Endpoint) setDelay(op string, n int, d time.Duration, mode delayMode) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if d <= 0 || n == 0 {
		delete(e.delays, op)
		return
	}
	e.delays[op] = &delay{d: d, remaining: n, mode: mode}
}

// RateLimit throttles all API calls beyond perSecond (a token bucket with a
// burst of max(1, perSecond)) with ThrottlingException "Rate exceeded", as
// AWS throttles an account. perSecond <= 0 removes the limit.
func (e *Endpoint) RateLimit(perSecond float64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if perSecond <= 0 {
		e.bucket = nil
		return
	}
	burst := math.Max(1, perSecond)
	e.bucket = &tokenBucket{rate: perSecond, burst: burst, tokens: burst, last: time.Now()}
}

type tokenBucket struct {
	rate, burst, tokens float64
	last                time.Time
}

func (e *Endpoint) takeToken() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	b := e.bucket
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

func (e *Endpoint) nextDelay(op string) (time.Duration, delayMode) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, key := range []string{op, AnyOp} {
		d := e.delays[key]
		if d == nil {
			continue
		}
		if d.remaining > 0 {
			d.remaining--
			if d.remaining == 0 {
				delete(e.delays, key)
			}
		}
		return d.d, d.mode
	}
	return 0, delayCall
}

// nextFault takes the fault that answers c, if any, and builds its error.
func (e *Endpoint) nextFault(c *Call) (_ *Error, after bool) {
	var f *Fault
	e.mu.Lock()
	for _, key := range []string{c.Op, AnyOp} {
		q := e.faults[key]
		if len(q) == 0 {
			continue
		}
		head := q[0]
		if head.remaining > 0 {
			head.remaining--
			if head.remaining == 0 {
				e.faults[key] = q[1:]
			}
		}
		copied := head.Fault
		f = &copied
		break
	}
	e.mu.Unlock()
	if f == nil {
		return nil, false
	}
	// Outside the lock: the service's message may read its own state.
	status := f.Status
	if status == 0 {
		status = faultStatus(f.Code)
	}
	msg := f.Message
	if msg == "" && e.svc.FaultMessage != nil {
		msg = e.svc.FaultMessage(c, f.Code)
	}
	if msg == "" {
		msg = DefaultMessage(f.Code)
	}
	return &Error{Status: status, Code: f.Code, Message: msg}, f.After
}

// faultStatus is the HTTP status AWS answers code with: the services'
// internal errors are 500s, ServiceUnavailable a 503, the rest 400s.
func faultStatus(code string) int {
	switch code {
	case "InternalServerError", // SSM
		"InternalServiceError", // Secrets Manager
		"ServerException",      // ECS
		"InternalFailure":      // any service, AWS's common error
		return http.StatusInternalServerError
	case "ServiceUnavailable":
		return http.StatusServiceUnavailable
	}
	return http.StatusBadRequest
}

// DefaultMessage is the message of AWS's common errors, for a fault whose
// service has none of its own for code.
func DefaultMessage(code string) string {
	switch code {
	case "ThrottlingException":
		return "Rate exceeded"
	case "ServiceUnavailable":
		return "Service Unavailable"
	case "UnrecognizedClientException":
		return "The security token included in the request is invalid."
	case "InternalFailure":
		return "The request processing has failed because of an unknown error, exception or failure."
	}
	return "injected fault"
}
