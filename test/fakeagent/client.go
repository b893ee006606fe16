package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// ssmClient makes AWS JSON 1.1 calls the way the agent's SDK does.
type ssmClient struct {
	endpoint, region string
	creds            *aws.Credentials // nil = anonymous (registration)
	http             *http.Client
}

// awsError renders like aws-sdk-go v1's RequestFailure, which is what the
// real agent prints after "Registration failed due to …".
type awsError struct {
	Code, Message string
	Status        int
	RequestID     string
}

func (e *awsError) Error() string {
	return fmt.Sprintf("%s: %s\n\tstatus code: %d, request id: %s", e.Code, e.Message, e.Status, e.RequestID)
}

func (c *ssmClient) call(ctx context.Context, op string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("SerializationError: failed to marshal %s input: %w", op, err)
	}
	var lastErr error
	// Like the SDK: up to 3 attempts for throttling and server errors.
	for attempt := 0; attempt < 3; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return lastErr
			case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
			}
		}
		retry, err := c.once(ctx, op, body, out)
		if err == nil || !retry {
			return err
		}
		lastErr = err
	}
	return lastErr
}

func (c *ssmClient) once(ctx context.Context, op string, body []byte, out any) (retry bool, err error) {
	url := c.endpoint + "/"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return false, fmt.Errorf("RequestError: build request: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "AmazonSSM."+op)
	req.Header.Set("User-Agent", "aws-sdk-go/1.55.5 (go1.22; linux; amd64) amazon-ssm-agent/"+agentVersion)
	if c.creds != nil {
		sum := sha256.Sum256(body)
		if err := v4.NewSigner().SignHTTP(ctx, *c.creds, req, hex.EncodeToString(sum[:]), "ssm", c.region, time.Now()); err != nil {
			return false, fmt.Errorf("SigningError: %w", err)
		}
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return true, fmt.Errorf("RequestError: send request failed\ncaused by: %v", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return true, fmt.Errorf("SerializationError: failed to read response body\ncaused by: %v", err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Type    string `json:"__type"`
			Message string `json:"message"`
		}
		_ = json.Unmarshal(raw, &e) // json matches "Message" too
		code := e.Type
		if h := resp.Header.Get("X-Amzn-Errortype"); h != "" {
			code = h
		}
		code, _, _ = strings.Cut(code, ":")
		if i := strings.LastIndex(code, "#"); i >= 0 {
			code = code[i+1:]
		}
		if code == "" {
			code = fmt.Sprintf("SerializationError: unexpected status %d", resp.StatusCode)
		}
		ae := &awsError{Code: code, Message: e.Message, Status: resp.StatusCode, RequestID: resp.Header.Get("X-Amzn-Requestid")}
		return resp.StatusCode >= 500 || code == "ThrottlingException", ae
	}
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return false, fmt.Errorf("SerializationError: failed decoding JSON RPC response\ncaused by: %v", err)
		}
	}
	return false, nil
}
