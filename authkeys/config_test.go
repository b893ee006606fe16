package authkeys_test

import (
	"context"
	"strings"
	"testing"

	"github.com/bastion-dev/bastion/authkeys"
	"github.com/bastion-dev/bastion/entrypoint"
)

// TestNewRefusesBadConfig: every refusal names what to fix.
func TestNewRefusesBadConfig(t *testing.T) {
	dec := entrypoint.DecodeAuthorizedKeys
	tests := []struct {
		name string
		cfg  authkeys.Config
		want string
	}{
		{"no source", authkeys.Config{Decode: dec}, "set BASTION_AUTHORIZED_KEYS_SECRET or BASTION_AUTHORIZED_KEYS_FILE"},
		{"two sources", authkeys.Config{SecretID: "s", File: "/f", Region: "us-east-1", Decode: dec}, "both set"},
		{"no decoder", authkeys.Config{File: "/f"}, "Decode is required"},
		{"negative refresh", authkeys.Config{File: "/f", Refresh: -1, Decode: dec}, "BASTION_KEYS_REFRESH"},
		{"secret name without region", authkeys.Config{SecretID: "bastion/keys", Decode: dec}, "AWS_REGION is required with BASTION_AUTHORIZED_KEYS_SECRET"},
		{"ARN of another service", authkeys.Config{SecretID: "arn:aws:ssm:us-east-1:123456789012:parameter/keys", Decode: dec}, "not a Secrets Manager secret ARN"},
		{"broken ARN", authkeys.Config{SecretID: "arn:aws:secretsmanager", Region: "us-east-1", Decode: dec}, "not a Secrets Manager secret ARN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := authkeys.New(context.Background(), tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "authkeys: ") {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}
