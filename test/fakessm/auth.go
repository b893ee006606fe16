package fakessm

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"regexp"

	"github.com/bastion-dev/bastion/test/fakesigv4"
)

// unsignedOps are called anonymously by the real agent (anonauth).
var unsignedOps = map[string]bool{"RegisterManagedInstance": true}

var managedIDExpr = regexp.MustCompile(`^mi-[0-9a-f]{17}$`)

// AgentSecret is the secret access key that goes with the access key id
// instanceID (mi-…). The fake agent signs its calls with it and the server
// verifies them with it. (The real agent gets STS credentials through
// RequestManagedInstanceRoleToken, a private API not worth faking.)
func AgentSecret(instanceID string) string {
	sum := sha256.Sum256([]byte("fakessm-agent-secret/" + instanceID))
	return hex.EncodeToString(sum[:])
}

// authenticate checks the SigV4 Authorization header and returns the caller's
// access key id. Unsigned ops accept anything (the caller's key is still
// recorded if present).
func (s *Server) authenticate(r *http.Request, op string, body []byte) (string, *apiError) {
	if unsignedOps[op] {
		return fakesigv4.AccessKeyID(r.Header.Get("Authorization")), nil
	}
	v := fakesigv4.Verifier{Service: "ssm", Region: s.opts.Region, Secret: func(akid string) (string, bool) {
		if secret, ok := s.opts.Credentials[akid]; ok {
			return secret, true
		}
		if managedIDExpr.MatchString(akid) {
			return AgentSecret(akid), true
		}
		return "", false
	}}
	akid, err := v.Verify(r, body)
	if err != nil {
		return akid, errCommon(err.Status, err.Code, "%s", err.Message)
	}
	return akid, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
