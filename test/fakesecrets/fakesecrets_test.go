package fakesecrets_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	sm "github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
	"github.com/aws/smithy-go"

	"github.com/bastion-dev/bastion/test/fakesecrets"
)

// newClient builds the real SDK client with the endpoint given only through
// AWS_ENDPOINT_URL_SECRETS_MANAGER, as the product gets it.
func newClient(t *testing.T, srv *fakesecrets.Server, region, akid, secret string) *sm.Client {
	t.Helper()
	t.Setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", srv.URL())
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", "/dev/null")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
	cfg, err := config.LoadDefaultConfig(context.Background(), config.WithRegion(region),
		config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(akid, secret, "")))
	if err != nil {
		t.Fatal(err)
	}
	return sm.NewFromConfig(cfg)
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
	req, err := http.NewRequest(http.MethodPost, url+"/", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", target)
	if akid != "" {
		sum := sha256.Sum256([]byte(body))
		if err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: akid, SecretAccessKey: secret},
			req, hex.EncodeToString(sum[:]), service, fakesecrets.DefaultRegion, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s: body %q: %v", target, raw, err)
	}
	return resp.StatusCode, out
}

func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// TestVersionsAndStages: a new value becomes AWSCURRENT, the one before
// AWSPREVIOUS, the one before that is no longer listed; DescribeSecret
// shows the labels and GetSecretValue reads by default, id and label.
func TestVersionsAndStages(t *testing.T) {
	srv := fakesecrets.NewTest(t, fakesecrets.Options{})
	c := defaultClient(t, srv)
	ctx := ctxT(t)
	sec, err := srv.CreateSecret("bastion/keys", "v1")
	if err != nil {
		t.Fatal(err)
	}
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
	srv := fakesecrets.NewTest(t, fakesecrets.Options{Clock: clock})
	c := defaultClient(t, srv)
	ctx := ctxT(t)
	sec, err := srv.CreateSecret("k", "v")
	if err != nil {
		t.Fatal(err)
	}
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
	srv := fakesecrets.NewTest(t, fakesecrets.Options{})
	c := defaultClient(t, srv)
	if _, err := srv.CreateSecret("bin", "text"); err != nil {
		t.Fatal(err)
	}
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
	srv := fakesecrets.NewTest(t, fakesecrets.Options{})
	c := defaultClient(t, srv)
	ctx := ctxT(t)
	sec, err := srv.CreateSecret("keys", "v")
	if err != nil {
		t.Fatal(err)
	}
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
	t.Run("hang ends with the caller's deadline", func(t *testing.T) {
		srv.HangNext(fakesecrets.OpDescribeSecret, 1)
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		_, err := c.DescribeSecret(short, &sm.DescribeSecretInput{SecretId: aws.String("keys")})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v", err)
		}
		if _, err := c.DescribeSecret(ctx, &sm.DescribeSecretInput{SecretId: aws.String("keys")}); err != nil {
			t.Fatalf("after the hang: %v", err)
		}
	})
	t.Run("faults until cleared", func(t *testing.T) {
		srv.Inject(fakesecrets.AnyOp, fakesecrets.Fault{Code: "AccessDeniedException"})
		for range 3 {
			if err := get(); apiCode(err) != "AccessDeniedException" {
				t.Fatalf("err = %v", err)
			}
		}
		srv.ClearFaults()
		if err := get(); err != nil {
			t.Fatal(err)
		}
	})
}

// TestSigV4: the fake refuses what AWS refuses: no signature, a wrong
// secret key, a scope for another service or region, an unknown key id.
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
		{"unsigned", "", "", "", "MissingAuthenticationTokenException"},
		{"wrong secret", "secretsmanager", fakesecrets.DefaultAccessKeyID, "other", "InvalidSignatureException"},
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
			if status != 400 || out["__type"] != tt.want {
				t.Fatalf("%d %v, want %s", status, out, tt.want)
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

// TestCountersAndNextRequest: calls are counted per operation, with the
// secret and the version read, and NextRequest fires on the next call.
func TestCountersAndNextRequest(t *testing.T) {
	srv := fakesecrets.NewTest(t, fakesecrets.Options{})
	c := defaultClient(t, srv)
	ctx := ctxT(t)
	sec, err := srv.CreateSecret("keys", "v")
	if err != nil {
		t.Fatal(err)
	}
	next := srv.NextRequest()
	select {
	case <-next:
		t.Fatal("fired before any request")
	default:
	}
	for range 2 {
		if _, err := c.DescribeSecret(ctx, &sm.DescribeSecretInput{SecretId: aws.String("keys")}); err != nil {
			t.Fatal(err)
		}
	}
	<-next
	if _, err := c.GetSecretValue(ctx, &sm.GetSecretValueInput{SecretId: aws.String("keys")}); err != nil {
		t.Fatal(err)
	}
	if srv.Calls(fakesecrets.OpDescribeSecret) != 2 || srv.Calls(fakesecrets.OpGetSecretValue) != 1 {
		t.Fatalf("calls %v", srv.Snapshot().Calls)
	}
	last := srv.Requests()[2]
	if last.Op != "GetSecretValue" || last.SecretID != "keys" || last.VersionID != sec.Current || last.AccessKeyID != fakesecrets.DefaultAccessKeyID {
		t.Fatalf("request %+v", last)
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
	post("/_fake/fail", `{"op":"DescribeSecret","code":"DecryptionFailure","count":1}`)
	if _, err := c.DescribeSecret(ctx, &sm.DescribeSecretInput{SecretId: aws.String("keys")}); apiCode(err) != "DecryptionFailure" {
		t.Fatalf("err = %v", err)
	}
	post("/_fake/hang", `{"op":"DescribeSecret","count":1}`)
	post("/_fake/clear", `{}`)
	if _, err := c.DescribeSecret(ctx, &sm.DescribeSecretInput{SecretId: aws.String("keys")}); err != nil {
		t.Fatalf("after clear: %v", err)
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
