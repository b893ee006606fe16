package fakeaws

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

func signed(t *testing.T, body, service, region, secret string, at time.Time) *http.Request {
	t.Helper()
	r, err := http.NewRequest(http.MethodPost, "http://127.0.0.1:1/", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	r.Header.Set("Content-Type", "application/x-amz-json-1.1")
	r.Header.Set("X-Amz-Target", "AmazonEC2ContainerServiceV20141113.DescribeTasks")
	sum := sha256.Sum256([]byte(body))
	if err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: "AKID", SecretAccessKey: secret},
		r, hex.EncodeToString(sum[:]), service, region, at); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestSigV4Verify(t *testing.T) {
	v := sigv4Verifier{Service: "ecs", Region: "us-east-1", Secret: func(akid string) (string, bool) { return "s3cret", akid == "AKID" }}
	now := time.Now()
	tests := []struct {
		name string
		req  *http.Request
		body string // what arrives
		want string // error code; "" = accepted
	}{
		{"good", signed(t, `{"a":1}`, "ecs", "us-east-1", "s3cret", now), `{"a":1}`, ""},
		{"body changed", signed(t, `{"a":1}`, "ecs", "us-east-1", "s3cret", now), `{"a":2}`, "InvalidSignatureException"},
		{"wrong secret", signed(t, `{}`, "ecs", "us-east-1", "other", now), `{}`, "InvalidSignatureException"},
		{"other service", signed(t, `{}`, "ssm", "us-east-1", "s3cret", now), `{}`, "InvalidSignatureException"},
		{"other region", signed(t, `{}`, "ecs", "eu-west-1", "s3cret", now), `{}`, "InvalidSignatureException"},
		{"expired", signed(t, `{}`, "ecs", "us-east-1", "s3cret", now.Add(-20*time.Minute)), `{}`, "InvalidSignatureException"},
	}
	for _, tt := range tests {
		akid, err := v.Verify(tt.req, []byte(tt.body))
		got := ""
		if err != nil {
			got = err.Code
		}
		if got != tt.want || akid != "AKID" {
			t.Errorf("%s: %q %v, want %q", tt.name, akid, err, tt.want)
		}
	}
	r, _ := http.NewRequest(http.MethodPost, "http://127.0.0.1:1/", nil)
	if _, err := v.Verify(r, nil); err == nil || err.Code != "MissingAuthenticationTokenException" {
		t.Errorf("unsigned: %v", err)
	}
	if signingKeyID(signed(t, `{}`, "ecs", "us-east-1", "x", now).Header.Get("Authorization")) != "AKID" || signingKeyID("garbage") != "" {
		t.Errorf("AccessKeyID")
	}
}
