package fakessm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"regexp"
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

// unsignedOps are called anonymously by the real agent (anonauth).
var unsignedOps = map[string]bool{"RegisterManagedInstance": true}

var (
	hex64         = regexp.MustCompile(`^[0-9a-f]{64}$`)
	managedIDExpr = regexp.MustCompile(`^mi-[0-9a-f]{17}$`)
)

// AgentSecret is the secret access key that goes with the access key id
// instanceID (mi-…). The fake agent signs its calls with it and the server
// verifies them with it. (The real agent gets STS credentials through
// RequestManagedInstanceRoleToken, a private API not worth faking.)
func AgentSecret(instanceID string) string {
	sum := sha256.Sum256([]byte("fakessm-agent-secret/" + instanceID))
	return hex.EncodeToString(sum[:])
}

type authHeader struct {
	akid, date, region, service, terminator string
	signedHeaders                           []string
	signature                               string
}

// authenticate checks the SigV4 Authorization header and returns the caller's
// access key id. Unsigned ops accept anything (the caller's key is still
// recorded if present).
func (s *Server) authenticate(r *http.Request, op string, body []byte) (string, *apiError) {
	raw := r.Header.Get("Authorization")
	if unsignedOps[op] {
		if h, err := parseAuthorization(raw); err == nil {
			return h.akid, nil
		}
		return "", nil
	}
	if raw == "" {
		return "", errCommon(http.StatusBadRequest, "MissingAuthenticationTokenException", "Missing Authentication Token")
	}
	h, aerr := parseAuthorization(raw)
	if aerr != nil {
		return "", aerr
	}
	amzDate := r.Header.Get("X-Amz-Date")
	if amzDate == "" {
		return h.akid, errCommon(http.StatusBadRequest, "IncompleteSignatureException",
			"Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. Authorization=%s", raw)
	}
	signTime, err := time.Parse(amzDateFmt, amzDate)
	if err != nil {
		return h.akid, errCommon(http.StatusBadRequest, "IncompleteSignatureException",
			"Date must be in ISO-8601 'basic format'. Got '%s'. See http://en.wikipedia.org/wiki/ISO_8601", amzDate)
	}
	switch {
	case h.date != signTime.Format("20060102"):
		return h.akid, errCommon(http.StatusBadRequest, "InvalidSignatureException",
			"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '%s' != '%s', from '%s'.",
			h.date, signTime.Format("20060102"), amzDate)
	case h.region != s.opts.Region:
		return h.akid, errCommon(http.StatusBadRequest, "InvalidSignatureException",
			"Credential should be scoped to a valid region. ")
	case h.service != "ssm":
		return h.akid, errCommon(http.StatusBadRequest, "InvalidSignatureException",
			"Credential should be scoped to correct service: 'ssm'. ")
	case h.terminator != "aws4_request":
		return h.akid, errCommon(http.StatusBadRequest, "InvalidSignatureException",
			"Credential should be scoped with a valid terminator: 'aws4_request', not '%s'. ", h.terminator)
	}
	if !contains(h.signedHeaders, "host") {
		return h.akid, errCommon(http.StatusBadRequest, "InvalidSignatureException",
			"'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")
	}
	now := time.Now().UTC()
	if signTime.Before(now.Add(-maxSkew)) {
		return h.akid, errCommon(http.StatusBadRequest, "InvalidSignatureException",
			"Signature expired: %s is now earlier than %s (%s - 15 min.)",
			amzDate, now.Add(-maxSkew).Format(amzDateFmt), now.Format(amzDateFmt))
	}
	if signTime.After(now.Add(maxSkew)) {
		return h.akid, errCommon(http.StatusBadRequest, "InvalidSignatureException",
			"Signature not yet current: %s is still later than %s (%s + 15 min.)",
			amzDate, now.Add(maxSkew).Format(amzDateFmt), now.Format(amzDateFmt))
	}
	secret, known := s.opts.Credentials[h.akid]
	if !known && managedIDExpr.MatchString(h.akid) {
		secret, known = AgentSecret(h.akid), true
	}
	if !known {
		return h.akid, errCommon(http.StatusBadRequest, "UnrecognizedClientException",
			"The security token included in the request is invalid.")
	}
	want, err := expectedSignature(r, h, body, secret, signTime)
	if err != nil {
		return h.akid, errCommon(http.StatusInternalServerError, "InternalServerError", "signature check: %v", err)
	}
	if want != h.signature {
		// JSON-protocol services (SSM, DynamoDB…) answer a bad signature with
		// InvalidSignatureException/400, not S3's SignatureDoesNotMatch/403.
		return h.akid, errCommon(http.StatusBadRequest, "InvalidSignatureException",
			"The request signature we calculated does not match the signature you provided. "+
				"Check your AWS Secret Access Key and signing method. Consult the service documentation for details.")
	}
	return h.akid, nil
}

func parseAuthorization(raw string) (authHeader, *apiError) {
	var h authHeader
	incomplete := func(format string, args ...any) *apiError {
		return errCommon(http.StatusBadRequest, "IncompleteSignatureException", format, args...)
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

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
