package fakeaws

import (
	"maps"
	"time"
)

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
	// Response is the JSON answered when the call succeeded ("" until
	// then). Left out of the control API's state: it can be large.
	Response string `json:"-"`
}

// logArrival counts and records a request as it arrives and wakes
// NextRequest's waiters; it returns the record's index.
func (e *Endpoint) logArrival(r Request) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls[r.Op]++
	e.requests = append(e.requests, r)
	for _, c := range e.watchers {
		close(c)
	}
	e.watchers = nil
	return len(e.requests) - 1
}

// logAnswer completes record idx with the outcome, then runs the hooks
// registered with After outside the lock.
func (e *Endpoint) logAnswer(idx int, fault string, aerr *Error, out []byte) {
	e.mu.Lock()
	r := &e.requests[idx]
	switch {
	case aerr != nil:
		r.ErrorCode = aerr.Code
	default:
		r.Response = string(out)
	}
	if fault != "" {
		r.Fault = fault
		e.served[r.Op]++
	}
	rec := *r
	hooks := append([]func(Request){}, e.hooks[rec.Op]...)
	hooks = append(hooks, e.hooks[AnyOp]...)
	e.mu.Unlock()
	for _, h := range hooks {
		h(rec)
	}
}

// Calls returns how many requests named op have arrived, whatever their
// outcome (AnyOp: all operations).
func (e *Endpoint) Calls(op string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return count(e.calls, op)
}

// FaultsServed counts the calls to op that met an injected fault or delay
// (AnyOp: all operations), so a test can check that what it injected
// really fired.
func (e *Endpoint) FaultsServed(op string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return count(e.served, op)
}

func count(byOp map[string]int, op string) int {
	if op != AnyOp {
		return byOp[op]
	}
	n := 0
	for _, c := range byOp {
		n += c
	}
	return n
}

// CallsByOp returns Calls for every operation called so far.
func (e *Endpoint) CallsByOp() map[string]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return maps.Clone(e.calls)
}

// FaultsServedByOp returns FaultsServed for every operation that met one.
func (e *Endpoint) FaultsServedByOp() map[string]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return maps.Clone(e.served)
}

// Requests returns the log of API requests in arrival order; one still in
// flight has no outcome yet.
func (e *Endpoint) Requests() []Request {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Request{}, e.requests...)
}

// After calls fn with each request to op (or AnyOp) once it has been
// answered, outside the endpoint's lock: a test can change the state
// between calls (e.g. mark an instance Online after the third poll). Hooks
// stay until the endpoint is closed.
func (e *Endpoint) After(op string, fn func(Request)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.hooks[op] = append(e.hooks[op], fn)
}

// NextRequest returns a channel closed when the next API request arrives
// (before it is answered), so a test can wait for a poller's next call
// instead of sleeping.
func (e *Endpoint) NextRequest() <-chan struct{} {
	c := make(chan struct{})
	e.mu.Lock()
	defer e.mu.Unlock()
	e.watchers = append(e.watchers, c)
	return c
}
