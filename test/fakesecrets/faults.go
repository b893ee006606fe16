package fakesecrets

import (
	"fmt"
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
	// Status overrides the HTTP status (default 500 for InternalServiceError,
	// 503 for ServiceUnavailable, else 400).
	Status int `json:"status,omitempty"`
}

type fault struct {
	Fault
	remaining int // -1 = until ClearFaults
}

type delay struct {
	d         time.Duration
	remaining int // -1 = until ClearFaults
}

// FailNext makes the next n calls to op (or AnyOp) fail with code, with the
// message the real service gives for it (AccessDeniedException names the
// action and the secret the way IAM does). n <= 0 does nothing.
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

// HangNext makes the next n calls to op (or AnyOp; n < 0: all) wait without
// answering until the client gives up or the server closes.
func (s *Server) HangNext(op string, n int) { s.DelayNext(op, n, 24*time.Hour) }

// DelayNext makes the next n calls to op (or AnyOp; n < 0: all) wait d
// before being processed; d <= 0 or n == 0 removes the delay. The wait
// ends early when the client gives up, and then nothing is answered.
func (s *Server) DelayNext(op string, n int, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d <= 0 || n == 0 {
		delete(s.delays, op)
		return
	}
	s.delays[op] = &delay{d: d, remaining: n}
}

// ClearFaults removes every pending fault and delay.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = map[string][]*fault{}
	s.delays = map[string]*delay{}
}

func (s *Server) nextDelay(op string) time.Duration {
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
		return d.d
	}
	return 0
}

func (s *Server) nextFault(op, secretID string) *apiError {
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
		return s.faultError(op, secretID, f.Fault)
	}
	return nil
}

// faultError builds the response for an injected fault; s.mu is held.
func (s *Server) faultError(op, secretID string, f Fault) *apiError {
	status := f.Status
	if status == 0 {
		switch f.Code {
		case "InternalServiceError", "InternalFailure":
			status = http.StatusInternalServerError
		case "ServiceUnavailable":
			status = http.StatusServiceUnavailable
		default:
			status = http.StatusBadRequest
		}
	}
	msg := f.Message
	if msg == "" {
		msg = s.defaultMessage(op, secretID, f.Code)
	}
	return &apiError{Status: status, Code: f.Code, Msg: msg}
}

// defaultMessage is the text the real service sends with code.
func (s *Server) defaultMessage(op, secretID, code string) string {
	switch code {
	case "AccessDeniedException":
		resource := secretID
		if sec := s.lookup(secretID); sec != nil {
			resource = sec.arn
		}
		return fmt.Sprintf("User: arn:aws:sts::%s:assumed-role/bastion-task/0f1e2d3c4b5a69788796a5b4c3d2e1f0 "+
			"is not authorized to perform: secretsmanager:%s on resource: %s because no identity-based policy allows the secretsmanager:%s action",
			s.opts.AccountID, op, resource, op)
	case "ResourceNotFoundException":
		return "Secrets Manager can't find the specified secret."
	case "DecryptionFailure":
		return "Secrets Manager can't decrypt the protected secret text using the provided KMS key."
	case "InternalServiceError":
		return "An error occurred on the server side."
	case "ThrottlingException":
		return "Rate exceeded"
	case "ServiceUnavailable":
		return "Service Unavailable"
	}
	return "injected fault"
}
