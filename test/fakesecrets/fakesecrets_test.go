package fakesecrets_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	sm "github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"

	"github.com/bastion-dev/bastion/internal/awsconf"
	"github.com/bastion-dev/bastion/test/fakeaws/awstest"
	"github.com/bastion-dev/bastion/test/fakesecrets"
)

// newClient builds the real SDK client with the endpoint given only through
// AWS_ENDPOINT_URL_SECRETS_MANAGER, as the product gets it.
func newClient(t *testing.T, srv *fakesecrets.Server, region, akid, secret string) *sm.Client {
	return sm.NewFromConfig(awstest.Config(t, "AWS_ENDPOINT_URL_SECRETS_MANAGER", srv.URL(), region, akid, secret))
}

func defaultClient(t *testing.T, srv *fakesecrets.Server) *sm.Client {
	return newClient(t, srv, fakesecrets.DefaultRegion, fakesecrets.DefaultAccessKeyID, fakesecrets.DefaultSecretAccessKey)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// rawCall sends a JSON 1.1 request signed for service (unsigned when akid
// is "") and returns the status and the decoded body.
func rawCall(t *testing.T, url, target, body, service, akid, secret string) (int, map[string]any) {
	t.Helper()
	r := awstest.Post(t, url, target, []byte(body), awstest.Signing{Service: service, Region: fakesecrets.DefaultRegion, AccessKeyID: akid, SecretAccessKey: secret})
	return r.Status, r.Body
}

var apiCode = awsconf.ErrorCode

// withSecret starts a fake holding the secret name = value and the real
// client aimed at it.
func withSecret(t *testing.T, opts fakesecrets.Options, name, value string) (*fakesecrets.Server, *sm.Client, fakesecrets.Secret) {
	t.Helper()
	srv := fakesecrets.NewTest(t, opts)
	sec, err := srv.CreateSecret(name, value)
	if err != nil {
		t.Fatal(err)
	}
	return srv, defaultClient(t, srv), sec
}

// TestVersionsAndStages: a new value becomes AWSCURRENT, the one before
// AWSPREVIOUS, the one before that is no longer listed; DescribeSecret
// shows the labels and GetSecretValue reads by default, id and label.
func TestVersionsAndStages(t *testing.T) {
	srv, c, sec := withSecret(t, fakesecrets.Options{}, "bastion/keys", "v1")
	ctx := ctxT(t)
	if !strings.HasPrefix(sec.ARN, "arn:aws:secretsmanager:us-east-1:123456789012:secret:bastion/keys-") || len(sec.ARN) != len("arn:aws:secretsmanager:us-east-1:123456789012:secret:bastion/keys-")+6 {
		t.Fatalf("ARN %q", sec.ARN)
	}
	v1 := sec.Current
	v2, err := srv.PutSecretString("bastion/keys", "v2")
	if err != nil {
		t.Fatal(err)
	}
	v3, err := srv.PutSecretString(sec.ARN, "v3")
	if err != nil {
		t.Fatal(err)
	}

	for _, id := range []string{"bastion/keys", sec.ARN, strings.TrimSuffix(sec.ARN, sec.ARN[len(sec.ARN)-7:])} {
		d, err := c.DescribeSecret(ctx, &sm.DescribeSecretInput{SecretId: aws.String(id)})
		if err != nil {
			t.Fatalf("DescribeSecret %q: %v", id, err)
		}
		want := map[string][]string{v3: {"AWSCURRENT"}, v2: {"AWSPREVIOUS"}}
		if aws.ToString(d.ARN) != sec.ARN || aws.ToString(d.Name) != "bastion/keys" || len(d.VersionIdsToStages) != 2 ||
			d.VersionIdsToStages[v3][0] != want[v3][0] || d.VersionIdsToStages[v2][0] != want[v2][0] {
			t.Fatalf("DescribeSecret %q = %+v", id, d)
		}
		if _, listed := d.VersionIdsToStages[v1]; listed {
			t.Errorf("deprecated version %s still listed", v1)
		}
		if d.LastChangedDate == nil || d.CreatedDate == nil || d.LastChangedDate.Before(*d.CreatedDate) || time.Since(*d.LastChangedDate) > time.Minute {
			t.Errorf("dates %v %v", d.CreatedDate, d.LastChangedDate)
		}
	}

	tests := []struct {
		name       string
		in         sm.GetSecretValueInput
		wantValue  string
		wantID     string
		wantStages string
		wantCode   string
	}{
		{"default is AWSCURRENT", sm.GetSecretValueInput{}, "v3", v3, "AWSCURRENT", ""},
		{"by label", sm.GetSecretValueInput{VersionStage: aws.String("AWSPREVIOUS")}, "v2", v2, "AWSPREVIOUS", ""},
		{"by id, deprecated", sm.GetSecretValueInput{VersionId: aws.String(v1)}, "v1", v1, "", ""},
		{"id and its label", sm.GetSecretValueInput{VersionId: aws.String(v3), VersionStage: aws.String("AWSCURRENT")}, "v3", v3, "AWSCURRENT", ""},
		{"id and another label", sm.GetSecretValueInput{VersionId: aws.String(v2), VersionStage: aws.String("AWSCURRENT")}, "", "", "", "InvalidRequestException"},
		{"unknown id", sm.GetSecretValueInput{VersionId: aws.String("00000000-0000-4000-8000-000000000000")}, "", "", "", "ResourceNotFoundException"},
		{"unknown label", sm.GetSecretValueInput{VersionStage: aws.String("AWSPENDING")}, "", "", "", "ResourceNotFoundException"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.in
			in.SecretId = aws.String("bastion/keys")
			out, err := c.GetSecretValue(ctx, &in)
			if tt.wantCode != "" {
				if apiCode(err) != tt.wantCode {
					t.Fatalf("err = %v, want %s", err, tt.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if aws.ToString(out.SecretString) != tt.wantValue || aws.ToString(out.VersionId) != tt.wantID ||
				strings.Join(out.VersionStages, ",") != tt.wantStages || aws.ToString(out.ARN) != sec.ARN ||
				aws.ToString(out.Name) != "bastion/keys" || out.CreatedDate == nil || out.SecretBinary != nil {
				t.Fatalf("GetSecretValue = %+v", out)
			}
		})
	}

	// LastAccessedDate appears after a read, as a day.
	d, err := c.DescribeSecret(ctx, &sm.DescribeSecretInput{SecretId: aws.String("bastion/keys")})
	if err != nil || d.LastAccessedDate == nil || !d.LastAccessedDate.Equal(d.LastAccessedDate.Truncate(24*time.Hour)) {
		t.Fatalf("LastAccessedDate %v, %v", d.LastAccessedDate, err)
	}
}

// TestDescriptionIsNotAVersion: a description edit moves LastChangedDate
// but not AWSCURRENT, which is why a reader polls the version id.
func TestDescriptionIsNotAVersion(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	srv, c, sec := withSecret(t, fakesecrets.Options{Clock: clock}, "k", "v")
	ctx := ctxT(t)
	now = now.Add(time.Hour)
	if err := srv.SetDescription("k", "owned by the platform team"); err != nil {
		t.Fatal(err)
	}
	d, err := c.DescribeSecret(ctx, &sm.DescribeSecretInput{SecretId: aws.String("k")})
	if err != nil {
		t.Fatal(err)
	}
	if !d.LastChangedDate.Equal(now) || !d.CreatedDate.Equal(now.Add(-time.Hour)) || aws.ToString(d.Description) != "owned by the platform team" ||
		len(d.VersionIdsToStages) != 1 || d.VersionIdsToStages[sec.Current][0] != "AWSCURRENT" {
		t.Fatalf("DescribeSecret = %+v", d)
	}
}

func TestBinarySecret(t *testing.T) {
	srv, c, _ := withSecret(t, fakesecrets.Options{}, "bin", "text")
	id, err := srv.PutSecretBinary("bin", []byte{0, 1, 2, 0xff})
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.GetSecretValue(ctxT(t), &sm.GetSecretValueInput{SecretId: aws.String("bin")})
	if err != nil {
		t.Fatal(err)
	}
	if out.SecretString != nil || !bytes.Equal(out.SecretBinary, []byte{0, 1, 2, 0xff}) || aws.ToString(out.VersionId) != id {
		t.Fatalf("GetSecretValue = %+v", out)
	}
}

// TestErrors: the codes, statuses and typed errors the SDK sees, for real
// failures and injected ones, and the SDK's retries of the retryable ones.
func TestErrors(t *testing.T) {
	srv, c, sec := withSecret(t, fakesecrets.Options{}, "keys", "v")
	ctx := ctxT(t)
	get := func() error {
		_, err := c.GetSecretValue(ctx, &sm.GetSecretValueInput{SecretId: aws.String("keys")})
		return err
	}

	t.Run("unknown secret", func(t *testing.T) {
		_, err := c.DescribeSecret(ctx, &sm.DescribeSecretInput{SecretId: aws.String("nope")})
		var nf *types.ResourceNotFoundException
		if !errors.As(err, &nf) || aws.ToString(nf.Message) != "Secrets Manager can't find the specified secret." {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("access denied names the action and the secret", func(t *testing.T) {
		srv.FailNext(fakesecrets.OpGetSecretValue, 1, "AccessDeniedException")
		before := srv.Calls(fakesecrets.OpGetSecretValue)
		err := get()
		if apiCode(err) != "AccessDeniedException" || !strings.Contains(err.Error(), "secretsmanager:GetSecretValue on resource: "+sec.ARN) {
			t.Fatalf("err = %v", err)
		}
		if n := srv.Calls(fakesecrets.OpGetSecretValue) - before; n != 1 {
			t.Errorf("%d calls: access denied must not be retried", n)
		}
	})
	t.Run("decryption failure", func(t *testing.T) {
		srv.FailNext(fakesecrets.OpGetSecretValue, 1, "DecryptionFailure")
		var df *types.DecryptionFailure
		if err := get(); !errors.As(err, &df) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("internal error and throttling are retried by the SDK", func(t *testing.T) {
		srv.FailNext(fakesecrets.OpGetSecretValue, 1, "InternalServiceError")
		srv.FailNext(fakesecrets.OpGetSecretValue, 1, "ThrottlingException")
		before := srv.Calls(fakesecrets.OpGetSecretValue)
		if err := get(); err != nil {
			t.Fatal(err)
		}
		var codes []string
		for _, r := range srv.Requests()[len(srv.Requests())-3:] {
			codes = append(codes, r.ErrorCode)
		}
		if n := srv.Calls(fakesecrets.OpGetSecretValue) - before; n != 3 || strings.Join(codes, ",") != "InternalServiceError,ThrottlingException," {
			t.Fatalf("%d calls, codes %q", n, codes)
		}
	})
	t.Run("internal error is a 500 with Message", func(t *testing.T) {
		srv.FailNext(fakesecrets.OpDescribeSecret, 1, "InternalServiceError")
		status, body := rawCall(t, srv.URL(), "secretsmanager.DescribeSecret", `{"SecretId":"keys"}`, "secretsmanager",
			fakesecrets.DefaultAccessKeyID, fakesecrets.DefaultSecretAccessKey)
		if status != 500 || body["__type"] != "InternalServiceError" || body["Message"] != "An error occurred on the server side." {
			t.Fatalf("%d %v", status, body)
		}
		status, body = rawCall(t, srv.URL(), "secretsmanager.DescribeSecret", `{"SecretId":"nope"}`, "secretsmanager",
			fakesecrets.DefaultAccessKeyID, fakesecrets.DefaultSecretAccessKey)
		if status != 400 || body["__type"] != "ResourceNotFoundException" || body["Message"] == nil {
			t.Fatalf("%d %v", status, body)
		}
	})
}

// TestSigV4: the fake signs as Secrets Manager in its region (the checks
// themselves are test/fakeaws's) and knows the configured credentials.
func TestSigV4(t *testing.T) {
	srv := fakesecrets.NewTest(t, fakesecrets.Options{})
	if _, err := srv.CreateSecret("keys", "v"); err != nil {
		t.Fatal(err)
	}
	const target, body = "secretsmanager.DescribeSecret", `{"SecretId":"keys"}`
	tests := []struct {
		name, service, akid, secret, want string
	}{
		{"good", "secretsmanager", fakesecrets.DefaultAccessKeyID, fakesecrets.DefaultSecretAccessKey, ""},
		{"scoped to ssm", "ssm", fakesecrets.DefaultAccessKeyID, fakesecrets.DefaultSecretAccessKey, "InvalidSignatureException"},
		{"unknown key id", "secretsmanager", "AKIDOTHER", "x", "UnrecognizedClientException"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, out := rawCall(t, srv.URL(), target, body, tt.service, tt.akid, tt.secret)
			if tt.want == "" {
				if status != 200 || out["Name"] != "keys" {
					t.Fatalf("%d %v", status, out)
				}
				if _, ok := out["LastChangedDate"].(float64); !ok {
					t.Fatalf("LastChangedDate not epoch seconds: %v", out["LastChangedDate"])
				}
				return
			}
			if status != 400 || out["__type"] != tt.want || out["Message"] == nil {
				t.Fatalf("%d %v, want %s with a Message", status, out, tt.want)
			}
		})
	}
	t.Run("SDK in another region", func(t *testing.T) {
		c := newClient(t, srv, "eu-west-1", fakesecrets.DefaultAccessKeyID, fakesecrets.DefaultSecretAccessKey)
		_, err := c.DescribeSecret(ctxT(t), &sm.DescribeSecretInput{SecretId: aws.String("keys")})
		if apiCode(err) != "InvalidSignatureException" {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("unknown operation", func(t *testing.T) {
		status, out := rawCall(t, srv.URL(), "secretsmanager.DeleteSecret", body, "secretsmanager",
			fakesecrets.DefaultAccessKeyID, fakesecrets.DefaultSecretAccessKey)
		if status != 400 || out["__type"] != "UnknownOperationException" {
			t.Fatalf("%d %v", status, out)
		}
	})
}

// TestRequestLog: calls are counted per operation and logged with the
// secret asked for and the version read.
func TestRequestLog(t *testing.T) {
	srv, c, sec := withSecret(t, fakesecrets.Options{}, "keys", "v")
	ctx := ctxT(t)
	for range 2 {
		if _, err := c.DescribeSecret(ctx, &sm.DescribeSecretInput{SecretId: aws.String("keys")}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.GetSecretValue(ctx, &sm.GetSecretValueInput{SecretId: aws.String("keys")}); err != nil {
		t.Fatal(err)
	}
	srv.FailNext(fakesecrets.OpGetSecretValue, 1, "AccessDeniedException")
	if _, err := c.GetSecretValue(ctx, &sm.GetSecretValueInput{SecretId: aws.String(sec.ARN)}); apiCode(err) != "AccessDeniedException" {
		t.Fatal(err)
	}
	if srv.Calls(fakesecrets.OpDescribeSecret) != 2 || srv.Calls(fakesecrets.OpGetSecretValue) != 2 {
		t.Fatalf("calls %v", srv.Snapshot().Calls)
	}
	reqs := srv.Requests()
	if r := reqs[0]; r.Op != "DescribeSecret" || r.SecretID != "keys" || r.VersionID != "" {
		t.Fatalf("describe %+v", r)
	}
	if r := reqs[2]; r.Op != "GetSecretValue" || r.SecretID != "keys" || r.VersionID != sec.Current || r.AccessKeyID != fakesecrets.DefaultAccessKeyID {
		t.Fatalf("get %+v", r)
	}
	if r := reqs[3]; r.SecretID != sec.ARN || r.VersionID != "" || r.ErrorCode != "AccessDeniedException" {
		t.Fatalf("refused get %+v", r)
	}
	// The state a test in another process reads names them the same way.
	raw, _ := json.Marshal(srv.Snapshot().Requests[2])
	if !strings.Contains(string(raw), `"secretId":"keys","versionId":"`+sec.Current+`"`) || strings.Contains(string(raw), "SecretString") {
		t.Fatalf("state request %s", raw)
	}
}

// TestControlAPI drives the fake over HTTP, as a test outside the process
// does with test/fakesecrets/cmd/fakesecrets.
func TestControlAPI(t *testing.T) {
	srv := fakesecrets.NewTest(t, fakesecrets.Options{})
	c := defaultClient(t, srv)
	ctx := ctxT(t)
	post := func(path, body string) map[string]any {
		t.Helper()
		resp, err := http.Post(srv.URL()+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, raw)
		}
		var out map[string]any
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	created := post("/_fake/secret", `{"name":"keys","value":"one"}`)
	put := post("/_fake/put", `{"secretId":"keys","value":"two"}`)
	out, err := c.GetSecretValue(ctx, &sm.GetSecretValueInput{SecretId: aws.String(created["arn"].(string))})
	if err != nil || aws.ToString(out.SecretString) != "two" || aws.ToString(out.VersionId) != put["versionId"] {
		t.Fatalf("GetSecretValue = %+v, %v", out, err)
	}
	// The shared endpoints are mounted beside these (test/fakeaws tests them).
	post("/_fake/fail", `{"op":"DescribeSecret","code":"DecryptionFailure","count":1}`)
	if _, err := c.DescribeSecret(ctx, &sm.DescribeSecretInput{SecretId: aws.String("keys")}); apiCode(err) != "DecryptionFailure" {
		t.Fatalf("err = %v", err)
	}
	if _, err := c.DescribeSecret(ctx, &sm.DescribeSecretInput{SecretId: aws.String("keys")}); err != nil {
		t.Fatalf("after the fault: %v", err)
	}
	resp, err := http.Get(srv.URL() + "/_fake/state")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st fakesecrets.State
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	if len(st.Secrets) != 1 || st.Secrets[0].Current != put["versionId"] || st.Calls["DescribeSecret"] != 2 || st.Calls["GetSecretValue"] != 1 {
		t.Fatalf("state %+v", st)
	}
}
