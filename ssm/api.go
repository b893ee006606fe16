package ssm

import (
	"context"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ecs"
	awsssm "github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/bastion-dev/bastion/internal/awsconf"
)

// API is the subset of the SSM client the package calls (SessionOwner's
// DescribeSessions included); tests aim the real client at test/fakessm.
type API interface {
	GetServiceSetting(ctx context.Context, in *awsssm.GetServiceSettingInput, optFns ...func(*awsssm.Options)) (*awsssm.GetServiceSettingOutput, error)
	CreateActivation(ctx context.Context, in *awsssm.CreateActivationInput, optFns ...func(*awsssm.Options)) (*awsssm.CreateActivationOutput, error)
	DeleteActivation(ctx context.Context, in *awsssm.DeleteActivationInput, optFns ...func(*awsssm.Options)) (*awsssm.DeleteActivationOutput, error)
	DescribeActivations(ctx context.Context, in *awsssm.DescribeActivationsInput, optFns ...func(*awsssm.Options)) (*awsssm.DescribeActivationsOutput, error)
	DescribeInstanceInformation(ctx context.Context, in *awsssm.DescribeInstanceInformationInput, optFns ...func(*awsssm.Options)) (*awsssm.DescribeInstanceInformationOutput, error)
	DeregisterManagedInstance(ctx context.Context, in *awsssm.DeregisterManagedInstanceInput, optFns ...func(*awsssm.Options)) (*awsssm.DeregisterManagedInstanceOutput, error)
	ListTagsForResource(ctx context.Context, in *awsssm.ListTagsForResourceInput, optFns ...func(*awsssm.Options)) (*awsssm.ListTagsForResourceOutput, error)
	DescribeSessions(ctx context.Context, in *awsssm.DescribeSessionsInput, optFns ...func(*awsssm.Options)) (*awsssm.DescribeSessionsOutput, error)
}

var _ API = (*awsssm.Client)(nil)

// TaskAPI is the ECS call the orphan sweep makes to prove that the task
// behind an instance has stopped.
type TaskAPI interface {
	DescribeTasks(ctx context.Context, in *ecs.DescribeTasksInput, optFns ...func(*ecs.Options)) (*ecs.DescribeTasksOutput, error)
}

var _ TaskAPI = (*ecs.Client)(nil)

// Clients are the AWS clients a Lifecycle uses. A nil ECS turns the orphan
// sweep off: without it no death can be proved.
type Clients struct {
	SSM API
	ECS TaskAPI
}

// NewClients builds the SSM and ECS clients from one AWS configuration: the
// SDK's default credential chain (ECS task role on Fargate), cfg.Region,
// and the SDK's standard endpoint overrides (AWS_ENDPOINT_URL_SSM,
// AWS_ENDPOINT_URL_ECS, AWS_ENDPOINT_URL, shared config), which it reads
// itself. Retries use the adaptive mode (client-side rate limiting on
// throttles) with exponential jittered backoff.
func NewClients(ctx context.Context, cfg Config) (Clients, error) {
	awsCfg, err := loadAWSConfig(ctx, cfg.Region)
	if err != nil {
		return Clients{}, err
	}
	return Clients{SSM: awsssm.NewFromConfig(awsCfg), ECS: ecs.NewFromConfig(awsCfg)}, nil
}

// NewAPI builds the SSM client alone, as NewClients does.
func NewAPI(ctx context.Context, cfg Config) (API, error) {
	awsCfg, err := loadAWSConfig(ctx, cfg.Region)
	if err != nil {
		return nil, err
	}
	return awsssm.NewFromConfig(awsCfg), nil
}

func loadAWSConfig(ctx context.Context, region string) (aws.Config, error) {
	if region == "" {
		return aws.Config{}, fmt.Errorf("ssm: AWS_REGION is required")
	}
	cfg, err := awsconf.Load(ctx, region)
	if err != nil {
		return aws.Config{}, fmt.Errorf("ssm: %w", err)
	}
	return cfg, nil
}

func isAccessDenied(err error) bool {
	switch awsconf.ErrorCode(err) {
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
