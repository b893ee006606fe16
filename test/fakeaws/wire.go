package fakeaws

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"time"
)

// maxBody caps a request body; AWS's JSON front ends refuse larger ones.
const maxBody = 10 << 20

// Handler serves one operation: its response (marshalled as JSON) or the
// error AWS would answer.
type Handler func(c *Call) (any, *Error)

// Call is one API request as a Handler sees it, authenticated.
type Call struct {
	Op string
	// AccessKeyID is the caller's key id ("" for an unsigned call that
	// names none).
	AccessKeyID string
	// Body is the JSON input as sent; "{}" when the request had none.
	Body []byte
	// Context ends when the client gives up or the endpoint closes.
	Context context.Context
}

// Decode reads the body into v. A member of the wrong type is a
// SerializationException, as on AWS; numbers decode as json.Number where v
// asks for one.
func (c *Call) Decode(v any) *Error {
	d := json.NewDecoder(bytes.NewReader(c.Body))
	d.UseNumber()
	if err := d.Decode(v); err != nil {
		return Errorf(http.StatusBadRequest, "SerializationException", "%v", err)
	}
	return nil
}

// Error is an AWS JSON 1.1 error response.
type Error struct {
	Status  int // HTTP status; 0 means 400
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf returns an error with a formatted message.
func Errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// ValidationError is the model-constraint error AWS front ends send before
// an operation runs: value is the member's value (nil: a missing member),
// member its path, e.g. "tags.1.member.key".
func ValidationError(value any, member, constraint string) *Error {
	shown := fmt.Sprintf("'%v'", value)
	if value == nil {
		shown = "null"
	}
	return Errorf(http.StatusBadRequest, "ValidationException",
		"1 validation error detected: Value %s at '%s' failed to satisfy constraint: %s", shown, member, constraint)
}

// noAnswer stands for a request whose client gave up during an injected
// delay: the connection is gone, there is nothing to write.
var noAnswer = &Error{}

// ServeAPI serves one API request: POST / with X-Amz-Target naming one of
// the service's operations. It checks the signature, logs the request,
// applies what was injected, calls the operation and writes its answer.
func (e *Endpoint) ServeAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Amzn-Requestid", NewUUID())
	op, ok := strings.CutPrefix(r.Header.Get("X-Amz-Target"), e.svc.TargetPrefix)
	if r.Method != http.MethodPost || r.URL.Path != "/" || !ok || e.svc.Ops[op] == nil {
		e.writeError(w, &Error{Code: "UnknownOperationException"})
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
	if err != nil {
		e.writeError(w, Errorf(http.StatusBadRequest, "SerializationException", "could not read body: %v", err))
		return
	}
	akid, authErr := e.authenticate(r, op, body)
	c := &Call{Op: op, AccessKeyID: akid, Body: body, Context: r.Context()}
	if len(bytes.TrimSpace(body)) == 0 {
		c.Body = []byte("{}")
	}
	idx := e.logArrival(Request{Time: e.svc.Clock(), Op: op, AccessKeyID: akid, Body: string(body)})

	resp, fault, aerr := e.process(c, authErr)
	var out []byte
	if aerr == nil {
		if out, err = json.Marshal(resp); err != nil {
			aerr = Errorf(http.StatusInternalServerError, "InternalFailure", "marshal: %v", err)
		}
	}
	e.logAnswer(idx, fault, aerr, out)
	switch {
	case aerr == noAnswer:
	case aerr != nil:
		e.writeError(w, aerr)
	default:
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		w.Header().Set("Content-Length", fmt.Sprint(len(out)))
		_, _ = w.Write(out)
	}
}

// authenticate checks the SigV4 Authorization header and returns the
// caller's access key id, also with an error when it could be read.
func (e *Endpoint) authenticate(r *http.Request, op string, body []byte) (string, *Error) {
	if e.svc.Unsigned[op] {
		return signingKeyID(r.Header.Get("Authorization")), nil
	}
	v := sigv4Verifier{Service: e.svc.SigningName, Region: e.svc.Region, Secret: e.svc.Secret}
	return v.Verify(r, body)
}

// process meets a request with what a real one meets, in order:
// authentication, throttling, latency, injected faults, then the operation.
// fault names what was injected and served, if anything: the code of the
// fault that answered, else "delay". A fault injected with After answers
// only once the operation has taken effect: a response lost on the way back.
func (e *Endpoint) process(c *Call, authErr *Error) (resp any, fault string, _ *Error) {
	if authErr != nil {
		return nil, "", authErr
	}
	if !e.takeToken() {
		return nil, "", Errorf(http.StatusBadRequest, "ThrottlingException", "Rate exceeded")
	}
	d, mode := e.nextDelay(c.Op)
	e.mu.Lock()
	closing := e.closing
	e.mu.Unlock()
	wait := func() bool { // false: the client gave up
		fault = "delay"
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-c.Context.Done():
			if mode == delayEffect {
				select {
				case <-t.C: // lands all the same, unanswered
				case <-closing:
					mode = delayCall // the endpoint is gone: it never lands
				}
			}
			return false
		}
	}
	gone := false // the client gave up during a delayEffect wait
	if d > 0 && mode != delayResponse && !wait() {
		if mode == delayCall {
			return nil, fault, noAnswer
		}
		gone = true
	}
	f, after := e.nextFault(c)
	if f != nil && !after {
		return nil, f.Code, f
	}
	var object map[string]json.RawMessage
	if err := json.Unmarshal(c.Body, &object); err != nil {
		return nil, fault, Errorf(http.StatusBadRequest, "SerializationException", "Start of structure or map found where not expected.")
	}
	resp, aerr := e.svc.Ops[c.Op](c)
	if gone || d > 0 && mode == delayResponse && !wait() {
		return nil, fault, noAnswer // done, but the answer never arrives
	}
	if f != nil && aerr == nil {
		return nil, f.Code, f
	}
	return resp, fault, aerr
}

func (e *Endpoint) writeError(w http.ResponseWriter, ae *Error) {
	body := map[string]string{"__type": ae.Code}
	if ae.Message != "" {
		key := "message"
		if e.svc.Modeled != nil && e.svc.Modeled(ae.Code) {
			key = "Message"
		}
		body[key] = ae.Message
	}
	out, _ := json.Marshal(body)
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-Errortype", ae.Code+":"+e.svc.ErrorNamespace)
	w.Header().Set("Content-Length", fmt.Sprint(len(out)))
	status := ae.Status
	if status == 0 {
		status = http.StatusBadRequest
	}
	w.WriteHeader(status)
	_, _ = w.Write(out)
}

// NewUUID returns a random (version 4) UUID, the shape of AWS request,
// activation and version ids.
func NewUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// Epoch is t as AWS JSON protocols write timestamps: seconds since 1970
// with milliseconds, e.g. 1555532818.578.
func Epoch(t time.Time) float64 { return math.Round(float64(t.UnixMilli())) / 1000 }

// AccessDenied is the message IAM gives a role without the permission for
// action (e.g. "ssm:CreateActivation") on resource.
func AccessDenied(accountID, action, resource string) string {
	return fmt.Sprintf("User: arn:aws:sts::%s:assumed-role/bastion-task/0f1e2d3c4b5a69788796a5b4c3d2e1f0 "+
		"is not authorized to perform: %s on resource: %s because no identity-based policy allows the %s action",
		accountID, action, resource, action)
}
