// Package awsconf loads the AWS SDK configuration bastion's clients share:
// the SDK's default credential chain (the ECS task role on Fargate), the
// SDK's own endpoint overrides (AWS_ENDPOINT_URL_<SERVICE>,
// AWS_ENDPOINT_URL, shared config), one retry policy and a per-attempt
// timeout, the ones ssm.NewAPI has always used. Callers still run every
// call under its own context deadline, which bounds the retries.
package awsconf

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/smithy-go"
)

// Retry policy of every client.
const (
	MaxAttempts = 10
	MaxBackoff  = 8 * time.Second
	// AttemptTimeout bounds one HTTP attempt, so a hung connection is
	// retried inside the call's deadline instead of using all of it.
	AttemptTimeout = 8 * time.Second
)

// Load returns the configuration for region. Retries use the adaptive mode
// (client-side rate limiting on throttles) with exponential jittered
// backoff. It reads files and the environment but makes no network call:
// credentials are fetched at the first request.
func Load(ctx context.Context, region string) (aws.Config, error) {
	cfg, err := awsconfig.LoadDefaultConfig(ctx,
		awsconfig.WithRegion(region),
		awsconfig.WithHTTPClient(awshttp.NewBuildableClient().WithTimeout(AttemptTimeout)),
		awsconfig.WithRetryer(func() aws.Retryer {
			return retry.NewAdaptiveMode(func(o *retry.AdaptiveModeOptions) {
				o.StandardOptions = append(o.StandardOptions, func(so *retry.StandardOptions) {
					so.MaxAttempts = MaxAttempts
					so.MaxBackoff = MaxBackoff
					so.Backoff = retry.NewExponentialJitterBackoff(MaxBackoff)
				})
			})
		}),
	)
	if err != nil {
		return aws.Config{}, fmt.Errorf("load AWS config: %w", err)
	}
	return cfg, nil
}

// ErrorCode returns the service's error code of err (an SDK call's
// error), or "" when the service gave none.
func ErrorCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}
