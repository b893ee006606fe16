package authkeys

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	sm "github.com/aws/aws-sdk-go-v2/service/secretsmanager"

	"github.com/bastion-dev/bastion/internal/awsconf"
)

// A source reads the current version of the authorized_keys set.
type source interface {
	// read returns the current version. When its version is seen, content
	// may be left out: the caller has already judged it.
	read(ctx context.Context, seen string) (reading, error)
	variable() string // the variable that names the source
	name() string     // the secret id or the path, for logs
}

// reading is one version of a source.
type reading struct {
	version string
	content []byte
	// noText: the secret holds SecretBinary, not SecretString.
	noText bool
}

// secretsAPI is the part of the Secrets Manager client a secretSource
// calls.
type secretsAPI interface {
	DescribeSecret(ctx context.Context, in *sm.DescribeSecretInput, optFns ...func(*sm.Options)) (*sm.DescribeSecretOutput, error)
	GetSecretValue(ctx context.Context, in *sm.GetSecretValueInput, optFns ...func(*sm.Options)) (*sm.GetSecretValueOutput, error)
}

var _ secretsAPI = (*sm.Client)(nil)

// secretSource polls a secret with DescribeSecret, which needs no KMS
// access, and reads the value with GetSecretValue only when the version
// labelled AWSCURRENT is not the one seen last. LastChangedDate is not
// used: it also moves on description and tag edits.
type secretSource struct {
	id          string
	api         secretsAPI
	callTimeout time.Duration
}

const stageCurrent = "AWSCURRENT"

// newSecretSource builds the client from awsconf (default credential
// chain: the ECS task role; the SDK's endpoint overrides
// AWS_ENDPOINT_URL_SECRETS_MANAGER and AWS_ENDPOINT_URL).
func newSecretSource(ctx context.Context, id, region string, callTimeout time.Duration) (*secretSource, error) {
	cfg, err := awsconf.Load(ctx, region)
	if err != nil {
		return nil, fmt.Errorf("authkeys: %w", err)
	}
	return &secretSource{id: id, api: sm.NewFromConfig(cfg), callTimeout: callTimeout}, nil
}

func (s *secretSource) variable() string { return EnvSecret }
func (s *secretSource) name() string     { return s.id }

func (s *secretSource) read(ctx context.Context, seen string) (reading, error) {
	dctx, cancel := context.WithTimeout(ctx, s.callTimeout)
	desc, err := s.api.DescribeSecret(dctx, &sm.DescribeSecretInput{SecretId: aws.String(s.id)})
	cancel()
	if err != nil {
		return reading{}, s.apiError("DescribeSecret", err)
	}
	current := ""
	for id, stages := range desc.VersionIdsToStages {
		for _, st := range stages {
			if st == stageCurrent {
				current = id
			}
		}
	}
	if current == "" {
		return reading{}, fmt.Errorf("authkeys: DescribeSecret %s: no version is labelled %s (the secret has no value yet)", s.id, stageCurrent)
	}
	if current == seen {
		return reading{version: seen}, nil
	}
	gctx, cancel := context.WithTimeout(ctx, s.callTimeout)
	defer cancel()
	// Without VersionId or VersionStage the service returns AWSCURRENT,
	// which also satisfies policies conditioned on
	// secretsmanager:VersionStage. It may be newer than the one just
	// described; its own VersionId is what was read.
	out, err := s.api.GetSecretValue(gctx, &sm.GetSecretValueInput{SecretId: aws.String(s.id)})
	if err != nil {
		return reading{}, s.apiError("GetSecretValue", err)
	}
	r := reading{version: aws.ToString(out.VersionId)}
	if r.version == "" {
		return reading{}, fmt.Errorf("authkeys: GetSecretValue %s: the answer names no VersionId", s.id)
	}
	if out.SecretString == nil {
		r.noText = true
	} else {
		r.content = []byte(*out.SecretString)
	}
	return r, nil
}

// apiError wraps err from op with what the operator has to fix. The SDK's
// messages name the secret and the action, never the value.
func (s *secretSource) apiError(op string, err error) error {
	switch awsconf.ErrorCode(err) {
	case "AccessDeniedException":
		return fmt.Errorf("authkeys: %s %s: access denied: the ECS task role needs secretsmanager:%s on the secret: %w", op, s.id, op, err)
	case "DecryptionFailure":
		return fmt.Errorf("authkeys: %s %s: KMS could not decrypt the secret: the ECS task role needs kms:Decrypt on the secret's customer-managed key: %w", op, s.id, err)
	case "ResourceNotFoundException":
		return fmt.Errorf("authkeys: %s %s: no such secret (or no value) in this region: %w", op, s.id, err)
	}
	return fmt.Errorf("authkeys: %s %s: %w", op, s.id, err)
}

// fileSource re-reads a file whole at every check and compares its content
// hash, which also sees a file replaced by rename (a sidecar's atomic
// update) or edited in place within the same second.
type fileSource struct {
	path string
}

func (f *fileSource) variable() string { return EnvFile }
func (f *fileSource) name() string     { return f.path }

func (f *fileSource) read(context.Context, string) (reading, error) {
	fh, err := os.Open(f.path)
	if err != nil {
		return reading{}, fmt.Errorf("authkeys: %s: %w", EnvFile, err)
	}
	defer fh.Close()
	before, err := fh.Stat()
	if err != nil {
		return reading{}, fmt.Errorf("authkeys: %s: %w", EnvFile, err)
	}
	if !before.Mode().IsRegular() {
		return reading{}, fmt.Errorf("authkeys: %s: %s is not a regular file", EnvFile, f.path)
	}
	data, err := io.ReadAll(io.LimitReader(fh, maxFileSize+1))
	if err != nil {
		return reading{}, fmt.Errorf("authkeys: %s: read %s: %w", EnvFile, f.path, err)
	}
	if len(data) > maxFileSize {
		return reading{}, fmt.Errorf("authkeys: %s: %s is larger than %d MiB", EnvFile, f.path, maxFileSize>>20)
	}
	// A writer rewriting the file in place could leave a cut version that
	// still parses (cut at a line end) and would revoke the keys after the
	// cut; a retry reads it once the writer is done. Replacing the file by
	// rename avoids the race altogether.
	if after, err := fh.Stat(); err != nil || after.Size() != before.Size() || !after.ModTime().Equal(before.ModTime()) ||
		int64(len(data)) != after.Size() {
		return reading{}, fmt.Errorf("authkeys: %s: %s changed while being read", EnvFile, f.path)
	}
	sum := sha256.Sum256(data)
	return reading{version: "sha256:" + hex.EncodeToString(sum[:8]), content: data}, nil
}
