package fakeaws_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/bastion-dev/bastion/internal/awsconf"
	"github.com/bastion-dev/bastion/test/fakeaws"
	"github.com/bastion-dev/bastion/test/fakeaws/awstest"
)

// standIn is the smallest service that exercises the machinery: three
// operations on SSM's wire, so that the real SSM client can call it, with
// none of SSM's model (test/fakessm has that). GetSetting reads nothing,
// CreateActivation leaves an effect to look for, RegisterManagedInstance is
// served unsigned.
type standIn struct {
	*fakeaws.Endpoint
	mu      sync.Mutex
	created []string // activation ids, in order
}

const namespace = "http://internal.amazon.com/coral/com.amazonaws.ssm/"

func newStandIn() *standIn {
	s := &standIn{}
	s.Endpoint = fakeaws.New(fakeaws.Service{
		Name:         "standin",
		TargetPrefix: "AmazonSSM.",
		SigningName:  "ssm",
		Region:       fakeaws.DefaultRegion,
		Secret: func(akid string) (string, bool) {
			return fakeaws.DefaultSecretAccessKey, akid == fakeaws.DefaultAccessKeyID
		},
		Ops: map[string]fakeaws.Handler{
			"GetServiceSetting": func(c *fakeaws.Call) (any, *fakeaws.Error) {
				var in struct{ SettingId *string }
				if err := c.Decode(&in); err != nil {
					return nil, err
				}
				if in.SettingId == nil {
					return nil, fakeaws.ValidationError(nil, "settingId", "Member must not be null")
				}
				return map[string]any{"ServiceSetting": map[string]string{"SettingId": *in.SettingId, "SettingValue": "advanced"}}, nil
			},
			"CreateActivation": func(c *fakeaws.Call) (any, *fakeaws.Error) {
				id := fakeaws.NewUUID()
				s.mu.Lock()
				s.created = append(s.created, id)
				s.mu.Unlock()
				return map[string]string{"ActivationId": id, "ActivationCode": "code"}, nil
			},
			"RegisterManagedInstance": func(c *fakeaws.Call) (any, *fakeaws.Error) {
				return map[string]string{"InstanceId": "mi-0123456789abcdef0"}, nil
			},
		},
		Unsigned:       map[string]bool{"RegisterManagedInstance": true},
		Modeled:        func(code string) bool { return code == "InternalServerError" || code == "TooManyUpdates" },
		ErrorNamespace: namespace,
		FaultMessage: func(c *fakeaws.Call, code string) string {
			if code == "TooManyUpdates" {
				return "the stand-in is busy with " + c.Op
			}
			return ""
		},
		Control: func(mux *http.ServeMux) {
			mux.HandleFunc("GET /_fake/state", func(w http.ResponseWriter, r *http.Request) {
				fakeaws.WriteJSON(w, http.StatusOK, map[string]int{"activations": s.activations()})
			})
		},
	})
	return s
}

func startStandIn(t *testing.T) *standIn {
	s := newStandIn()
	s.StartTest(t)
	return s
}

func (s *standIn) activations() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.created)
}

// client is the real SSM client aimed at s through AWS_ENDPOINT_URL_SSM.
func client(t *testing.T, s *standIn, region, akid, secret string) *ssm.Client {
	return ssm.NewFromConfig(awstest.Config(t, "AWS_ENDPOINT_URL_SSM", s.URL(), region, akid, secret))
}

func defaultClient(t *testing.T, s *standIn) *ssm.Client {
	return client(t, s, fakeaws.DefaultRegion, fakeaws.DefaultAccessKeyID, fakeaws.DefaultSecretAccessKey)
}

var signed = awstest.Signing{Service: "ssm", Region: fakeaws.DefaultRegion,
	AccessKeyID: fakeaws.DefaultAccessKeyID, SecretAccessKey: fakeaws.DefaultSecretAccessKey}

// call sends body to op, signed.
func call(t *testing.T, s *standIn, op, body string) awstest.Response {
	t.Helper()
	return awstest.Post(t, s.URL(), "AmazonSSM."+op, []byte(body), signed)
}

func getSetting(ctx context.Context, c *ssm.Client) error {
	_, err := c.GetServiceSetting(ctx, &ssm.GetServiceSettingInput{SettingId: aws.String("/ssm/x")})
	return err
}

func create(ctx context.Context, c *ssm.Client) error {
	_, err := c.CreateActivation(ctx, &ssm.CreateActivationInput{IamRole: aws.String("r")})
	return err
}

var uuidExpr = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// TestWire: what a JSON 1.1 client meets on the wire, answers and errors.
func TestWire(t *testing.T) {
	s := startStandIn(t)
	tests := []struct {
		name, target, body string
		status             int
		code               string // "" for success
		messageKey         string // member carrying the message; "" for none
	}{
		{"success", "AmazonSSM.GetServiceSetting", `{"SettingId":"/ssm/x"}`, 200, "", ""},
		{"empty body is an empty input", "AmazonSSM.GetServiceSetting", ``, 400, "ValidationException", "message"},
		{"unknown operation", "AmazonSSM.SendCommand", `{}`, 400, "UnknownOperationException", ""},
		{"another service's target", "secretsmanager.GetServiceSetting", `{}`, 400, "UnknownOperationException", ""},
		{"no target", "", `{}`, 400, "UnknownOperationException", ""},
		{"body not an object", "AmazonSSM.GetServiceSetting", `[1]`, 400, "SerializationException", "message"},
		{"member of the wrong type", "AmazonSSM.GetServiceSetting", `{"SettingId":7}`, 400, "SerializationException", "message"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := awstest.Post(t, s.URL(), tt.target, []byte(tt.body), signed)
			if r.Status != tt.status || r.Header.Get("Content-Type") != "application/x-amz-json-1.1" ||
				!uuidExpr.MatchString(r.Header.Get("X-Amzn-Requestid")) {
				t.Fatalf("%d %v %v", r.Status, r.Header, r.Body)
			}
			if tt.code == "" {
				if r.Body["ServiceSetting"] == nil {
					t.Fatalf("body %v", r.Body)
				}
				return
			}
			if r.Body["__type"] != tt.code || r.Header.Get("X-Amzn-Errortype") != tt.code+":"+namespace {
				t.Fatalf("error %v, X-Amzn-Errortype %q", r.Body, r.Header.Get("X-Amzn-Errortype"))
			}
			if tt.messageKey == "" && len(r.Body) != 1 || tt.messageKey != "" && r.Body[tt.messageKey] == nil {
				t.Fatalf("want the message in %q: %v", tt.messageKey, r.Body)
			}
		})
	}
	t.Run("GET is not an API call", func(t *testing.T) {
		resp, err := http.Get(s.URL() + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 || !strings.HasPrefix(resp.Header.Get("X-Amzn-Errortype"), "UnknownOperationException:") {
			t.Fatalf("%d %v", resp.StatusCode, resp.Header)
		}
	})
	t.Run("validation error names a missing member null", func(t *testing.T) {
		r := call(t, s, "GetServiceSetting", `{}`)
		want := "1 validation error detected: Value null at 'settingId' failed to satisfy constraint: Member must not be null"
		if r.Body["message"] != want {
			t.Fatalf("%v", r.Body)
		}
		if msg := fakeaws.ValidationError("x y", "tags.1.member.key", "c").Message; !strings.Contains(msg, "Value 'x y' at 'tags.1.member.key'") {
			t.Fatalf("value quoted: %s", msg)
		}
	})
	t.Run("the real SDK reads answers and errors", func(t *testing.T) {
		c := defaultClient(t, s)
		out, err := c.GetServiceSetting(context.Background(), &ssm.GetServiceSettingInput{SettingId: aws.String("/ssm/x")})
		if err != nil || aws.ToString(out.ServiceSetting.SettingValue) != "advanced" {
			t.Fatalf("%+v %v", out, err)
		}
		s.FailNext("GetServiceSetting", 1, "TooManyUpdates")
		var busy *types.TooManyUpdates
		if err := getSetting(context.Background(), c); !errors.As(err, &busy) || aws.ToString(busy.Message) != "the stand-in is busy with GetServiceSetting" {
			t.Fatalf("modeled error: %v", err)
		}
	})
}

// TestAuthentication: the endpoint refuses what AWS refuses, records who
// called, and serves the service's unsigned operations without a signature.
func TestAuthentication(t *testing.T) {
	s := startStandIn(t)
	body := `{"SettingId":"/ssm/x"}`
	tests := []struct {
		name string
		sign awstest.Signing
		code string
	}{
		{"good", signed, ""},
		{"unsigned", awstest.Signing{}, "MissingAuthenticationTokenException"},
		{"wrong secret", awstest.Signing{Service: "ssm", Region: "us-east-1", AccessKeyID: "AKIDFAKE", SecretAccessKey: "other"}, "InvalidSignatureException"},
		{"unknown key", awstest.Signing{Service: "ssm", Region: "us-east-1", AccessKeyID: "AKIDOTHER", SecretAccessKey: "x"}, "UnrecognizedClientException"},
		{"scoped to another service", awstest.Signing{Service: "ec2", Region: "us-east-1", AccessKeyID: "AKIDFAKE", SecretAccessKey: "fakesecret"}, "InvalidSignatureException"},
		{"scoped to another region", awstest.Signing{Service: "ssm", Region: "eu-west-1", AccessKeyID: "AKIDFAKE", SecretAccessKey: "fakesecret"}, "InvalidSignatureException"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := s.Calls("GetServiceSetting")
			r := awstest.Post(t, s.URL(), "AmazonSSM.GetServiceSetting", []byte(body), tt.sign)
			if tt.code == "" {
				if r.Status != 200 {
					t.Fatalf("%d %v", r.Status, r.Body)
				}
			} else if r.Status != 400 || r.Body["__type"] != tt.code || r.Body["message"] == nil {
				t.Fatalf("%d %v, want %s", r.Status, r.Body, tt.code)
			}
			reqs := s.Requests()
			last := reqs[len(reqs)-1]
			if s.Calls("GetServiceSetting") != before+1 || last.ErrorCode != tt.code || last.AccessKeyID != tt.sign.AccessKeyID || last.Body != body {
				t.Fatalf("logged %+v", last)
			}
		})
	}
	t.Run("tampered body", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, s.URL()+"/", strings.NewReader(body))
		req.Header.Set("X-Amz-Target", "AmazonSSM.GetServiceSetting")
		sum := sha256.Sum256([]byte(`{}`))
		if err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: "AKIDFAKE", SecretAccessKey: "fakesecret"},
			req, hex.EncodeToString(sum[:]), "ssm", "us-east-1", time.Now()); err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 || !strings.HasPrefix(resp.Header.Get("X-Amzn-Errortype"), "InvalidSignatureException:") {
			t.Fatalf("tampered body accepted: %d %v", resp.StatusCode, resp.Header)
		}
	})
	t.Run("unsigned operation", func(t *testing.T) {
		if r := awstest.Post(t, s.URL(), "AmazonSSM.RegisterManagedInstance", []byte(`{}`), awstest.Signing{}); r.Status != 200 {
			t.Fatalf("anonymous: %d %v", r.Status, r.Body)
		}
		// A signature is not checked, but the key id it names is recorded.
		bad := awstest.Signing{Service: "ssm", Region: "us-east-1", AccessKeyID: "mi-0123456789abcdef0", SecretAccessKey: "anything"}
		if r := awstest.Post(t, s.URL(), "AmazonSSM.RegisterManagedInstance", []byte(`{}`), bad); r.Status != 200 {
			t.Fatalf("signed: %d %v", r.Status, r.Body)
		}
		reqs := s.Requests()
		if reqs[len(reqs)-2].AccessKeyID != "" || reqs[len(reqs)-1].AccessKeyID != "mi-0123456789abcdef0" {
			t.Fatalf("recorded %+v", reqs[len(reqs)-2:])
		}
	})
	t.Run("SDK in another region", func(t *testing.T) {
		c := client(t, s, "eu-west-1", fakeaws.DefaultAccessKeyID, fakeaws.DefaultSecretAccessKey)
		if err := getSetting(context.Background(), c); awsconf.ErrorCode(err) != "InvalidSignatureException" {
			t.Fatalf("err = %v", err)
		}
	})
}

// TestFaults: injected errors answer with the code, status and message
// asked for, as often as asked, are counted, and reach the SDK as AWS's
// would (retried when AWS's are).
func TestFaults(t *testing.T) {
	s := startStandIn(t)
	c := defaultClient(t, s)
	ctx := context.Background()

	t.Run("statuses and messages", func(t *testing.T) {
		tests := []struct {
			fault        fakeaws.Fault
			status       int
			key, message string
		}{
			{fakeaws.Fault{Code: "InternalServerError"}, 500, "Message", "injected fault"},
			{fakeaws.Fault{Code: "InternalServiceError"}, 500, "message", "injected fault"},
			{fakeaws.Fault{Code: "ServerException"}, 500, "message", "injected fault"},
			{fakeaws.Fault{Code: "InternalFailure"}, 500, "message", fakeaws.DefaultMessage("InternalFailure")},
			{fakeaws.Fault{Code: "ServiceUnavailable"}, 503, "message", "Service Unavailable"},
			{fakeaws.Fault{Code: "ThrottlingException"}, 400, "message", "Rate exceeded"},
			{fakeaws.Fault{Code: "TooManyUpdates"}, 400, "Message", "the stand-in is busy with GetServiceSetting"},
			{fakeaws.Fault{Code: "AccessDeniedException", Message: "no", Status: 403}, 403, "message", "no"},
		}
		for _, tt := range tests {
			t.Run(tt.fault.Code, func(t *testing.T) {
				tt.fault.Count = 1
				s.Inject("GetServiceSetting", tt.fault)
				r := call(t, s, "GetServiceSetting", `{"SettingId":"/ssm/x"}`)
				if r.Status != tt.status || r.Body["__type"] != tt.fault.Code || r.Body[tt.key] != tt.message {
					t.Fatalf("%d %v", r.Status, r.Body)
				}
				if r := call(t, s, "GetServiceSetting", `{"SettingId":"/ssm/x"}`); r.Status != 200 {
					t.Fatalf("a fault with Count 1 answered twice: %d %v", r.Status, r.Body)
				}
			})
		}
	})
	t.Run("throttling retried by the SDK", func(t *testing.T) {
		before := s.Calls("CreateActivation")
		s.FailNext("CreateActivation", 2, "ThrottlingException")
		if err := create(ctx, c); err != nil {
			t.Fatalf("SDK did not retry: %v", err)
		}
		if n := s.Calls("CreateActivation") - before; n != 3 {
			t.Fatalf("calls = %d, want 3", n)
		}
	})
	t.Run("internal error exhausts retries", func(t *testing.T) {
		before := s.Calls("CreateActivation")
		s.FailNext("CreateActivation", 5, "InternalServerError")
		var ise *types.InternalServerError
		if err := create(ctx, c); !errors.As(err, &ise) {
			t.Fatalf("err = %v", err)
		}
		if n := s.Calls("CreateActivation") - before; n != 3 {
			t.Fatalf("calls = %d, want 3 (SDK default attempts)", n)
		}
		s.ClearFaults()
	})
	t.Run("faults served are counted and marked", func(t *testing.T) {
		before, beforeAll := s.FaultsServed("GetServiceSetting"), s.FaultsServed(fakeaws.AnyOp)
		s.FailNext("GetServiceSetting", 1, "ThrottlingException")
		s.FailNext("GetServiceSetting", 0, "ThrottlingException") // n <= 0: nothing
		if err := getSetting(ctx, c); err != nil {
			t.Fatal(err)
		}
		if n := s.FaultsServed("GetServiceSetting") - before; n != 1 {
			t.Fatalf("faults served = %d, want 1", n)
		}
		if s.FaultsServed(fakeaws.AnyOp)-beforeAll != 1 || s.FaultsServedByOp()["GetServiceSetting"] != s.FaultsServed("GetServiceSetting") {
			t.Fatalf("by op %v", s.FaultsServedByOp())
		}
		reqs := s.Requests()
		if r := reqs[len(reqs)-2]; r.Fault != "ThrottlingException" || r.ErrorCode != "ThrottlingException" {
			t.Fatalf("throttled request logged %+v", r)
		}
		if r := reqs[len(reqs)-1]; r.Fault != "" || r.ErrorCode != "" || !strings.Contains(r.Response, `"SettingValue":"advanced"`) {
			t.Fatalf("retry logged %+v", r)
		}
	})
	t.Run("until cleared, the op's own before any op's", func(t *testing.T) {
		s.Inject(fakeaws.AnyOp, fakeaws.Fault{Code: "AccessDeniedException"})
		s.FailNext("GetServiceSetting", 1, "TooManyUpdates")
		if err := getSetting(ctx, c); awsconf.ErrorCode(err) != "TooManyUpdates" {
			t.Fatalf("err = %v", err)
		}
		for range 3 {
			if err := getSetting(ctx, c); awsconf.ErrorCode(err) != "AccessDeniedException" {
				t.Fatalf("err = %v", err)
			}
			if err := create(ctx, c); awsconf.ErrorCode(err) != "AccessDeniedException" {
				t.Fatalf("err = %v", err)
			}
		}
		s.ClearFaults()
		if err := getSetting(ctx, c); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("lost response: the operation took effect", func(t *testing.T) {
		before := s.activations()
		s.Inject("CreateActivation", fakeaws.Fault{Count: 1, Code: "InternalServerError", After: true})
		if err := create(ctx, c); err != nil {
			t.Fatalf("SDK did not retry: %v", err)
		}
		if n := s.activations() - before; n != 2 {
			t.Fatalf("%d activations created, want the lost attempt's and the retry's", n)
		}
	})
	t.Run("a failed operation has no response to lose", func(t *testing.T) {
		before := s.FaultsServed("GetServiceSetting")
		s.Inject("GetServiceSetting", fakeaws.Fault{Count: 1, Code: "InternalServerError", After: true})
		if r := call(t, s, "GetServiceSetting", `{}`); r.Body["__type"] != "ValidationException" {
			t.Fatalf("%v", r.Body)
		}
		if r := call(t, s, "GetServiceSetting", `{"SettingId":"/ssm/x"}`); r.Status != 200 || s.FaultsServed("GetServiceSetting") != before {
			t.Fatalf("the fault outlived the call it met: %d %v", r.Status, r.Body)
		}
	})
}

// TestDelays: injected latency, and what a call that its client gave up on
// has done.
func TestDelays(t *testing.T) {
	s := startStandIn(t)
	c := defaultClient(t, s)
	ctx := context.Background()
	short := func(d time.Duration) context.Context {
		cctx, cancel := context.WithTimeout(ctx, d)
		t.Cleanup(cancel)
		return cctx
	}

	t.Run("delay ends with the client's context, nothing happened", func(t *testing.T) {
		before := s.activations()
		ended := make(chan fakeaws.Request, 1)
		s.After("CreateActivation", func(r fakeaws.Request) {
			if strings.Contains(r.Body, `"IamRole":"gives up"`) {
				ended <- r
			}
		})
		s.Delay("CreateActivation", time.Minute)
		defer s.Delay("CreateActivation", 0)
		start := time.Now()
		_, err := c.CreateActivation(short(200*time.Millisecond), &ssm.CreateActivationInput{IamRole: aws.String("gives up")})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v", err)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Fatalf("took %v", took)
		}
		select {
		case r := <-ended:
			if r.Fault != "delay" || r.ErrorCode != "" || r.Response != "" {
				t.Fatalf("a call given up during its delay was answered: %+v", r)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the delayed call did not end with its client")
		}
		if s.activations() != before {
			t.Fatal("a call given up during its delay took effect")
		}
	})
	t.Run("delay next only", func(t *testing.T) {
		// A delay well above a loaded machine's call time tells the two apart.
		before := s.FaultsServed("GetServiceSetting")
		s.DelayNext("GetServiceSetting", 1, time.Second)
		for i, want := range []time.Duration{time.Second, 0} {
			start := time.Now()
			if err := getSetting(ctx, c); err != nil {
				t.Fatal(err)
			}
			if took := time.Since(start); took < want || (want == 0 && took > 900*time.Millisecond) {
				t.Fatalf("call %d took %v", i, took)
			}
		}
		reqs := s.Requests()
		if n := s.FaultsServed("GetServiceSetting") - before; n != 1 || reqs[len(reqs)-2].Fault != "delay" {
			t.Fatalf("delays served %d, logged %+v", n, reqs[len(reqs)-2])
		}
	})
	t.Run("delayed response: the call took effect", func(t *testing.T) {
		before := s.activations()
		s.DelayResponse("CreateActivation", 1, time.Minute)
		if err := create(short(300*time.Millisecond), c); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v", err)
		}
		if n := s.activations() - before; n != 1 {
			t.Fatalf("%d activations created, want the one whose answer was lost", n)
		}
	})
	t.Run("delayed effect: lands after the client gave up", func(t *testing.T) {
		before := s.activations()
		landed := make(chan fakeaws.Request, 1)
		s.After("CreateActivation", func(r fakeaws.Request) {
			if strings.Contains(r.Body, `"IamRole":"lands"`) { // not an earlier call, answered late
				select {
				case landed <- r:
				default:
				}
			}
		})
		s.DelayEffect("CreateActivation", 1, 500*time.Millisecond)
		_, err := c.CreateActivation(short(100*time.Millisecond), &ssm.CreateActivationInput{IamRole: aws.String("lands")})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v", err)
		}
		if n := s.activations() - before; n != 0 {
			t.Fatalf("activation created before the delay ended")
		}
		select {
		case <-landed:
		case <-time.After(10 * time.Second):
			t.Fatal("the call never landed")
		}
		if n := s.activations() - before; n != 1 {
			t.Fatalf("%d activations after the delay, want 1", n)
		}
	})
	t.Run("hang until the client gives up", func(t *testing.T) {
		s.HangNext("GetServiceSetting", 1)
		if err := getSetting(short(300*time.Millisecond), c); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v", err)
		}
		if err := getSetting(ctx, c); err != nil {
			t.Fatalf("after the hang: %v", err)
		}
	})
	t.Run("close ends a hang", func(t *testing.T) {
		s := startStandIn(t)
		s.HangNext(fakeaws.AnyOp, -1)
		arrived := s.NextRequest()
		done := make(chan awstest.Response, 1)
		go func() {
			// http.DefaultClient retries nothing: the fake's Close is what ends it.
			req, _ := http.NewRequest(http.MethodPost, s.URL()+"/", strings.NewReader(`{}`))
			req.Header.Set("X-Amz-Target", "AmazonSSM.RegisterManagedInstance")
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
				done <- awstest.Response{Status: resp.StatusCode}
				return
			}
			done <- awstest.Response{}
		}()
		select {
		case <-arrived:
		case <-time.After(10 * time.Second):
			t.Fatal("the call never arrived")
		}
		s.Close()
		select {
		case r := <-done:
			if r.Status != 0 {
				t.Fatalf("a hung call was answered %d", r.Status)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Close left the hung call open")
		}
	})
}

// TestRateLimit: calls beyond the rate are throttled as AWS throttles them,
// and the SDK's retries get through.
func TestRateLimit(t *testing.T) {
	s := startStandIn(t)
	s.RateLimit(20)
	var throttled int
	for range 40 {
		r := call(t, s, "GetServiceSetting", `{"SettingId":"/ssm/x"}`)
		if r.Status == 400 && r.Body["__type"] == "ThrottlingException" && r.Body["message"] == "Rate exceeded" {
			throttled++
		}
	}
	if throttled == 0 {
		t.Fatal("no call throttled")
	}
	if err := getSetting(context.Background(), defaultClient(t, s)); err != nil {
		t.Fatalf("SDK call under rate limit: %v", err)
	}
	s.ClearFaults() // removes the limit too
	for i := range 40 {
		if r := call(t, s, "GetServiceSetting", `{"SettingId":"/ssm/x"}`); r.Status != 200 {
			t.Fatalf("call %d after ClearFaults: %d %v", i, r.Status, r.Body)
		}
	}
}

// TestLog: calls are counted per operation and logged in order; hooks see
// each answered request and NextRequest fires on an arrival.
func TestLog(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	s := fakeaws.New(fakeaws.Service{Name: "clocked", TargetPrefix: "AmazonSSM.", SigningName: "ssm", Region: "us-east-1",
		Secret: func(string) (string, bool) { return "fakesecret", true },
		Ops:    map[string]fakeaws.Handler{"CreateActivation": func(*fakeaws.Call) (any, *fakeaws.Error) { return struct{}{}, nil }},
		Clock:  func() time.Time { return now }})
	s.StartTest(t)

	next := s.NextRequest()
	select {
	case <-next:
		t.Fatal("fired before any request")
	default:
	}
	answered := make(chan fakeaws.Request, 2)
	s.After(fakeaws.AnyOp, func(r fakeaws.Request) { answered <- r })
	s.After("CreateActivation", func(r fakeaws.Request) { answered <- r })

	r := awstest.Post(t, s.URL(), "AmazonSSM.CreateActivation", []byte(`{"IamRole":"r"}`), signed)
	if r.Status != 200 {
		t.Fatalf("%d %v", r.Status, r.Body)
	}
	select {
	case <-next:
	case <-time.After(10 * time.Second):
		t.Fatal("NextRequest did not fire")
	}
	awstest.Post(t, s.URL(), "AmazonSSM.Nope", []byte(`{}`), signed) // not an operation: neither counted nor logged
	for range 2 {
		select {
		case h := <-answered:
			if h.Op != "CreateActivation" || h.Response != "{}" {
				t.Fatalf("hook saw %+v", h)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a hook was not called")
		}
	}
	want := fakeaws.Request{Time: now, Op: "CreateActivation", AccessKeyID: "AKIDFAKE", Body: `{"IamRole":"r"}`, Response: "{}"}
	if reqs := s.Requests(); len(reqs) != 1 || reqs[0] != want {
		t.Fatalf("log %+v", reqs)
	}
	if s.Calls("CreateActivation") != 1 || s.Calls(fakeaws.AnyOp) != 1 || fmt.Sprint(s.CallsByOp()) != "map[CreateActivation:1]" {
		t.Fatalf("calls %v", s.CallsByOp())
	}
	raw, _ := json.Marshal(want)
	if strings.Contains(string(raw), "response") {
		t.Fatalf("the response reaches the control API's state: %s", raw)
	}
}

// TestControlAPI drives the shared endpoints over HTTP, as a test outside
// the process does with a fake's command.
func TestControlAPI(t *testing.T) {
	s := startStandIn(t)
	c := defaultClient(t, s)
	ctx := context.Background()
	post := func(path, body string, want int) {
		t.Helper()
		resp, err := http.Post(s.URL()+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		_, _ = buf.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("%s %s: %d %s, want %d", path, body, resp.StatusCode, buf.String(), want)
		}
	}
	post("/_fake/fail", `{"op":"GetServiceSetting","code":"TooManyUpdates","count":1}`, 200)
	if err := getSetting(ctx, c); awsconf.ErrorCode(err) != "TooManyUpdates" {
		t.Fatalf("fault via HTTP: %v", err)
	}
	post("/_fake/delay", `{"op":"GetServiceSetting","duration":"200ms","count":1}`, 200)
	start := time.Now()
	if err := getSetting(ctx, c); err != nil || time.Since(start) < 200*time.Millisecond {
		t.Fatalf("delay via HTTP: %v after %v", err, time.Since(start))
	}
	before := s.activations()
	post("/_fake/delay", `{"op":"CreateActivation","duration":"1m","count":1,"after":true}`, 200)
	cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := create(cctx, c); !errors.Is(err, context.DeadlineExceeded) || s.activations() != before+1 {
		t.Fatalf("delayed response via HTTP: %v, %d activations", err, s.activations()-before)
	}
	post("/_fake/hang", `{"op":"GetServiceSetting"}`, 200)
	post("/_fake/ratelimit", `{"perSecond":1000}`, 200)
	post("/_fake/clear", `{}`, 200)
	if err := getSetting(ctx, c); err != nil {
		t.Fatalf("after clear: %v", err)
	}
	for _, bad := range []struct{ path, body string }{
		{"/_fake/fail", `{"op":"GetServiceSetting"}`},
		{"/_fake/fail", `{"code":"X"}`},
		{"/_fake/delay", `{"op":"GetServiceSetting","duration":"soon"}`},
		{"/_fake/hang", `{"count":1}`},
		{"/_fake/ratelimit", `not json`},
	} {
		post(bad.path, bad.body, 400)
	}
	post("/_fake/nothing", `{}`, 404)

	resp, err := http.Get(s.URL() + "/_fake/state") // the service's own endpoint
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st map[string]int
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || st["activations"] != s.activations() {
		t.Fatalf("state %v %v", st, err)
	}
}

// TestLifecycle: a started endpoint listens on loopback until closed;
// closing twice is harmless; a bad address is an error naming the service.
func TestLifecycle(t *testing.T) {
	s := newStandIn()
	if s.URL() != "" {
		t.Fatalf("URL before Start: %q", s.URL())
	}
	s.Close() // not started: nothing to do
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(s.URL(), "http://127.0.0.1:") || s.Region() != fakeaws.DefaultRegion {
		t.Fatalf("URL %q region %q", s.URL(), s.Region())
	}
	if r := call(t, s, "GetServiceSetting", `{"SettingId":"/ssm/x"}`); r.Status != 200 {
		t.Fatalf("%d %v", r.Status, r.Body)
	}
	s.Close()
	s.Close()
	if _, err := http.Post(s.URL()+"/", "application/x-amz-json-1.1", strings.NewReader(`{}`)); err == nil {
		t.Fatal("still answering after Close")
	}
	other := newStandIn()
	if err := other.StartAddr("256.0.0.1:0"); err == nil || !strings.HasPrefix(err.Error(), "standin: listen 256.0.0.1:0: ") {
		t.Fatalf("bad address: %v", err)
	}
}

// TestServeUntilSignal runs the body of a fake's command in a child process
// (this test binary) and stops it the way a test driving it does.
func TestServeUntilSignal(t *testing.T) {
	if addr := os.Getenv("FAKEAWS_SERVE_ADDR"); addr != "" { // the child
		if err := newStandIn().ServeUntilSignal(addr); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestServeUntilSignal$")
	cmd.Env = append(os.Environ(), "FAKEAWS_SERVE_ADDR=127.0.0.1:0")
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() }) // by PID; harmless once it has exited
	out := bufio.NewReader(stdout)
	first := make(chan string, 1)
	go func() { // ends when the line comes or the child dies
		line, _ := out.ReadString('\n')
		first <- line
	}()
	var line string
	select {
	case line = <-first:
	case <-time.After(20 * time.Second):
		t.Fatal("no line from the child in 20 s")
	}
	url, ok := strings.CutPrefix(strings.TrimSpace(line), "listening on ")
	if !ok || !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Fatalf("first line %q", line)
	}
	exited := make(chan error, 1)
	go func() {
		_, _ = io.Copy(io.Discard, out) // Wait only once the pipe is drained
		exited <- cmd.Wait()
	}()
	if r := awstest.Post(t, url, "AmazonSSM.GetServiceSetting", []byte(`{"SettingId":"/ssm/x"}`), signed); r.Status != 200 {
		t.Fatalf("%d %v", r.Status, r.Body)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("still running 20 s after SIGTERM")
	}
}

// TestCloseEndsDelayedEffect: a call whose effect lands after its delay,
// given up by its client, ends with Close and never lands, instead of
// landing at the end of its delay on an endpoint that is gone.
func TestCloseEndsDelayedEffect(t *testing.T) {
	s := startStandIn(t)
	c := defaultClient(t, s)
	ended := make(chan fakeaws.Request, 1)
	s.After("CreateActivation", func(r fakeaws.Request) { ended <- r })
	s.DelayEffect("CreateActivation", 1, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	arrived := s.NextRequest()
	go func() { <-arrived; cancel() }() // the client gives up once the call is in
	if _, err := c.CreateActivation(ctx, &ssm.CreateActivationInput{IamRole: aws.String("never")}); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	s.Close()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the call's handler still waits out its hour after Close")
	}
	if n := s.activations(); n != 0 {
		t.Fatalf("%d activations: the delayed call landed after Close", n)
	}
}
