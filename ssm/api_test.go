package ssm

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsssm "github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/bastion-dev/bastion/internal/awsconf"
)

// TestNewAPIEndpointAndRetry checks that the real client reaches the
// endpoint from AWS_ENDPOINT_URL_SSM, retries a 500, maps error codes, and
// that a call's context bounds it.
func TestNewAPIEndpointAndRetry(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		switch r.Header.Get("X-Amz-Target") {
		case "AmazonSSM.GetServiceSetting":
			if n.Add(1) == 1 {
				w.WriteHeader(500)
				w.Write([]byte(`{"__type":"InternalServerError","Message":"try again"}`))
				return
			}
			if !strings.Contains(string(body), activationTierSetting) {
				t.Errorf("body %s", body)
			}
			w.Write([]byte(`{"ServiceSetting":{"SettingId":"/ssm/managed-instance/activation-tier","SettingValue":"advanced"}}`))
		case "AmazonSSM.DeregisterManagedInstance":
			w.WriteHeader(400)
			w.Write([]byte(`{"__type":"com.amazonaws.ssm#InvalidInstanceId","Message":"gone"}`))
		case "AmazonSSM.DeleteActivation":
			time.Sleep(400 * time.Millisecond)
		default:
			w.WriteHeader(400)
			w.Write([]byte(`{"__type":"AccessDeniedException","Message":"no"}`))
		}
	}))
	defer srv.Close()
	dir := t.TempDir()
	t.Setenv("AWS_ENDPOINT_URL_SSM", srv.URL)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")

	if _, err := NewAPI(context.Background(), Config{}); err == nil {
		t.Errorf("NewAPI without region succeeded")
	}
	api, err := NewAPI(context.Background(), Config{Region: "us-east-1"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := api.GetServiceSetting(ctx, &awsssm.GetServiceSettingInput{SettingId: aws.String(activationTierSetting)})
	if err != nil || aws.ToString(out.ServiceSetting.SettingValue) != "advanced" || n.Load() != 2 {
		t.Fatalf("GetServiceSetting = %v, %v after %d requests", out, err, n.Load())
	}
	_, err = api.DeregisterManagedInstance(ctx, &awsssm.DeregisterManagedInstanceInput{InstanceId: aws.String("mi-0123456789abcdef0")})
	if awsconf.ErrorCode(err) != "InvalidInstanceId" {
		t.Errorf("error code %q of %v", awsconf.ErrorCode(err), err)
	}
	_, err = api.CreateActivation(ctx, &awsssm.CreateActivationInput{IamRole: aws.String("r")})
	if !isAccessDenied(err) {
		t.Errorf("not access denied: %v", err)
	}
	short, scancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer scancel()
	start := time.Now()
	if _, err := api.DeleteActivation(short, &awsssm.DeleteActivationInput{ActivationId: aws.String("a")}); err == nil {
		t.Errorf("hung call succeeded")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("call outlived its context: %v", d)
	}
}
