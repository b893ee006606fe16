package ssm

import (
	"context"
	"errors"
	"fmt"

	awsssm "github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/smithy-go"

	"github.com/bastion-dev/bastion/internal/awsconf"
)

// API is the subset of the SSM client the lifecycle calls; tests fake it.
type API interface {
	GetServiceSetting(ctx context.Context, in *awsssm.GetServiceSettingInput, optFns ...func(*awsssm.Options)) (*awsssm.GetServiceSettingOutput, error)
	CreateActivation(ctx context.Context, in *awsssm.CreateActivationInput, optFns ...func(*awsssm.Options)) (*awsssm.CreateActivationOutput, error)
	DeleteActivation(ctx context.Context, in *awsssm.DeleteActivationInput, optFns ...func(*awsssm.Options)) (*awsssm.DeleteActivationOutput, error)
	DescribeActivations(ctx context.Context, in *awsssm.DescribeActivationsInput, optFns ...func(*awsssm.Options)) (*awsssm.DescribeActivationsOutput, error)
	DescribeInstanceInformation(ctx context.Context, in *awsssm.DescribeInstanceInformationInput, optFns ...func(*awsssm.Options)) (*awsssm.DescribeInstanceInformationOutput, error)
	DeregisterManagedInstance(ctx context.Context, in *awsssm.DeregisterManagedInstanceInput, optFns ...func(*awsssm.Options)) (*awsssm.DeregisterManagedInstanceOutput, error)
}

var _ API = (*awsssm.Client)(nil)

// NewAPI builds the SSM client from awsconf.Load: the SDK's default
// credential chain (ECS task role on Fargate), cfg.Region, the SDK's standard
// endpoint overrides (AWS_ENDPOINT_URL_SSM, AWS_ENDPOINT_URL, shared config),
// and the project's retry policy. Every call also runs under its own context
// deadline (callTimeout), which bounds the retries.
func NewAPI(ctx context.Context, cfg Config) (API, error) {
	if cfg.Region == "" {
		return nil, fmt.Errorf("ssm: AWS_REGION is required")
	}
	awsCfg, err := awsconf.Load(ctx, cfg.Region)
	if err != nil {
		return nil, fmt.Errorf("ssm: %w", err)
	}
	return awsssm.NewFromConfig(awsCfg), nil
}

// errorCode returns the service's error code of err, or "".
func errorCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

func isAccessDenied(err error) bool {
	switch errorCode(err) {
	case "AccessDeniedException", "AccessDenied", "UnauthorizedOperation":
		return true
	}
	return false
}

// apiError wraps err from an SDK call as "ssm: <op>: …"; an access-denied
// error names the IAM actions the task role is missing.
func apiError(op, actions string, err error) error {
	if isAccessDenied(err) {
		return fmt.Errorf("ssm: %s: access denied: the ECS task role needs %s: %w", op, actions, err)
	}
	return fmt.Errorf("ssm: %s: %w", op, err)
}
