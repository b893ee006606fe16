// Package awstest is the client side of the tests of the AWS fakes
// (test/fakeaws and the fakes built on it): the real SDK's configuration
// aimed at a fake the way the product aims it, raw JSON 1.1 calls for what
// the SDK will not send, and the error code the SDK reports.
//
// It lives apart from test/fakeaws so that the fakes' own commands do not
// link the SDK's configuration loader.
package awstest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
)

// Config loads the SDK's default configuration with static credentials and
// the fake's url given only through endpointEnv (AWS_ENDPOINT_URL_SSM,
// AWS_ENDPOINT_URL_SECRETS_MANAGER…), as the product gets it; shared config
// files and the instance metadata service are out of the way. It sets
// environment variables, so its test cannot run in parallel.
func Config(t testing.TB, endpointEnv, url, region, akid, secret string) aws.Config {
	t.Helper()
	t.Setenv(endpointEnv, url)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", "/dev/null")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
	cfg, err := config.LoadDefaultConfig(context.Background(), config.WithRegion(region),
		config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(akid, secret, "")))
	if err != nil {
		t.Fatalf("load config: %v", err)
	}
	return cfg
}

// Signing says how Post signs a request; an empty AccessKeyID sends it
// unsigned, as the SSM agent sends RegisterManagedInstance.
type Signing struct {
	Service, Region              string
	AccessKeyID, SecretAccessKey string
}

// Response is what a raw call got back.
type Response struct {
	Status int
	Header http.Header
	Body   map[string]any // the JSON body decoded
}

// Post sends body as a JSON 1.1 request for target (e.g.
// "AmazonSSM.GetServiceSetting") to url, signed as sign says, and fails
// the test unless a JSON body comes back.
func Post(t testing.TB, url, target string, body []byte, sign Signing) Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+"/", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", target)
	if sign.AccessKeyID != "" {
		sum := sha256.Sum256(body)
		creds := aws.Credentials{AccessKeyID: sign.AccessKeyID, SecretAccessKey: sign.SecretAccessKey}
		if err := v4.NewSigner().SignHTTP(context.Background(), creds, req, hex.EncodeToString(sum[:]),
			sign.Service, sign.Region, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", target, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s: read body: %v", target, err)
	}
	out := Response{Status: resp.StatusCode, Header: resp.Header}
	if err := json.Unmarshal(raw, &out.Body); err != nil {
		t.Fatalf("%s: body %q: %v", target, raw, err)
	}
	return out
}
