package fakeaws

// AWS Signature Version 4, checked the way AWS's JSON front ends do: the
// real SDK signs its requests and the fakes refuse what AWS would refuse,
// with the same error codes and messages.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

const (
	sigAlgorithm = "AWS4-HMAC-SHA256"
	amzDateFmt   = "20060102T150405Z"
	// maxSkew is how far X-Amz-Date may be from now, as on AWS.
	maxSkew = 15 * time.Minute
)

var hex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

func fail(code, format string, args ...any) *Error {
	return Errorf(http.StatusBadRequest, code, format, args...)
}

func fail500(format string, args ...any) *Error {
	return Errorf(http.StatusInternalServerError, "InternalServerError", format, args...)
}

// sigv4Verifier checks the requests of one service in one region.
type sigv4Verifier struct {
	Service string // SigV4 service name in the credential scope, e.g. "ssm", "ecs"
	Region  string
	// Secret returns the secret access key of an access key id; false means
	// the caller is unknown (UnrecognizedClientException).
	Secret func(accessKeyID string) (string, bool)
}

type authHeader struct {
	akid, date, region, service, terminator string
	signedHeaders                           []string
	signature                               string
}

// signingKeyID returns the access key id an Authorization header names, or
// "" when it is absent or malformed (unsigned calls are recorded this way).
func signingKeyID(authorization string) string {
	h, err := parseAuthorization(authorization)
	if err != nil {
		return ""
	}
	return h.akid
}

// Verify checks r's SigV4 Authorization header over body and returns the
// caller's access key id (also with an error, when it could be read).
func (v sigv4Verifier) Verify(r *http.Request, body []byte) (string, *Error) {
	raw := r.Header.Get("Authorization")
	if raw == "" {
		return "", fail("MissingAuthenticationTokenException", "Missing Authentication Token")
	}
	h, aerr := parseAuthorization(raw)
	if aerr != nil {
		return "", aerr
	}
	amzDate := r.Header.Get("X-Amz-Date")
	if amzDate == "" {
		return h.akid, fail("IncompleteSignatureException",
			"Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. Authorization=%s", raw)
	}
	signTime, err := time.Parse(amzDateFmt, amzDate)
	if err != nil {
		return h.akid, fail("IncompleteSignatureException",
			"Date must be in ISO-8601 'basic format'. Got '%s'. See http://en.wikipedia.org/wiki/ISO_8601", amzDate)
	}
	switch {
	case h.date != signTime.Format("20060102"):
		return h.akid, fail("InvalidSignatureException",
			"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '%s' != '%s', from '%s'.",
			h.date, signTime.Format("20060102"), amzDate)
	case h.region != v.Region:
		return h.akid, fail("InvalidSignatureException",
			"Credential should be scoped to a valid region. ")
	case h.service != v.Service:
		return h.akid, fail("InvalidSignatureException",
			"Credential should be scoped to correct service: '%s'. ", v.Service)
	case h.terminator != "aws4_request":
		return h.akid, fail("InvalidSignatureException",
			"Credential should be scoped with a valid terminator: 'aws4_request', not '%s'. ", h.terminator)
	}
	if !slices.Contains(h.signedHeaders, "host") {
		return h.akid, fail("InvalidSignatureException",
			"'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")
	}
	now := time.Now().UTC() // clients sign with the wall clock
	if signTime.Before(now.Add(-maxSkew)) {
		return h.akid, fail("InvalidSignatureException",
			"Signature expired: %s is now earlier than %s (%s - 15 min.)",
			amzDate, now.Add(-maxSkew).Format(amzDateFmt), now.Format(amzDateFmt))
	}
	if signTime.After(now.Add(maxSkew)) {
		return h.akid, fail("InvalidSignatureException",
			"Signature not yet current: %s is still later than %s (%s + 15 min.)",
			amzDate, now.Add(maxSkew).Format(amzDateFmt), now.Format(amzDateFmt))
	}
	secret, known := v.Secret(h.akid)
	if !known {
		return h.akid, fail("UnrecognizedClientException",
			"The security token included in the request is invalid.")
	}
	want, err := expectedSignature(r, h, body, secret, signTime)
	if err != nil {
		return h.akid, fail500("signature check: %v", err)
	}
	if want != h.signature {
		// JSON-protocol services (SSM, DynamoDB…) answer a bad signature with
		// InvalidSignatureException/400, not S3's SignatureDoesNotMatch/403.
		return h.akid, fail("InvalidSignatureException",
			"The request signature we calculated does not match the signature you provided. "+
				"Check your AWS Secret Access Key and signing method. Consult the service documentation for details.")
	}
	return h.akid, nil
}

func parseAuthorization(raw string) (authHeader, *Error) {
	var h authHeader
	incomplete := func(format string, args ...any) *Error {
		return fail("IncompleteSignatureException", format, args...)
	}
	rest, ok := strings.CutPrefix(raw, sigAlgorithm+" ")
	if !ok {
		return h, incomplete("Authorization header requires 'Credential' parameter. Authorization header requires 'Signature' parameter. Authorization=%s", raw)
	}
	params := map[string]string{}
	for _, part := range strings.Split(rest, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if ok {
			params[k] = v
		}
	}
	for _, k := range []string{"Credential", "SignedHeaders", "Signature"} {
		if params[k] == "" {
			return h, incomplete("Authorization header requires '%s' parameter. Authorization=%s", k, raw)
		}
	}
	scope := strings.Split(params["Credential"], "/")
	if len(scope) != 5 || scope[0] == "" {
		return h, incomplete("Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got '%s'", params["Credential"])
	}
	h.akid, h.date, h.region, h.service, h.terminator = scope[0], scope[1], scope[2], scope[3], scope[4]
	h.signedHeaders = strings.Split(params["SignedHeaders"], ";")
	h.signature = params["Signature"]
	if !hex64.MatchString(h.signature) {
		return h, incomplete("Signature must be 64 lowercase hexadecimal characters. Authorization=%s", raw)
	}
	return h, nil
}

// expectedSignature re-signs a copy of the request holding only the headers
// the client said it signed, with the SDK's own signer, and returns the
// signature that results.
func expectedSignature(r *http.Request, h authHeader, body []byte, secret string, signTime time.Time) (string, error) {
	u := *r.URL
	u.Scheme, u.Host = "http", r.Host
	cp, err := http.NewRequest(r.Method, u.String(), bytes.NewReader(body))
	if err != nil {
		return "", fmt.Errorf("copy request: %w", err)
	}
	cp.Host = r.Host
	cp.Header = http.Header{}
	cp.ContentLength = 0
	for _, name := range h.signedHeaders {
		switch name {
		case "host", "x-amz-date":
			// the signer sets these itself
		case "content-length":
			cp.ContentLength = r.ContentLength
			if cp.ContentLength < 0 {
				cp.ContentLength = int64(len(body))
			}
		default:
			if vals, ok := r.Header[http.CanonicalHeaderKey(name)]; ok {
				cp.Header[http.CanonicalHeaderKey(name)] = vals
			} else {
				cp.Header[http.CanonicalHeaderKey(name)] = []string{""}
			}
		}
	}
	sum := sha256.Sum256(body)
	creds := aws.Credentials{AccessKeyID: h.akid, SecretAccessKey: secret}
	if err := v4.NewSigner().SignHTTP(context.Background(), creds, cp, hex.EncodeToString(sum[:]),
		h.service, h.region, signTime); err != nil {
		return "", fmt.Errorf("sign copy: %w", err)
	}
	got, perr := parseAuthorization(cp.Header.Get("Authorization"))
	if perr != nil {
		return "", fmt.Errorf("parse own signature: %v", perr)
	}
	if strings.Join(got.signedHeaders, ";") != strings.Join(h.signedHeaders, ";") {
		// Different header sets can never produce the same signature.
		return "signed-headers-differ:" + strings.Join(got.signedHeaders, ";"), nil
	}
	return got.signature, nil
}
