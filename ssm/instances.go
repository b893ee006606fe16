package ssm

import (
	"context"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsssm "github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/ssm/types"
)

// ListInstances pages through DescribeInstanceInformation with filters and
// returns the instances keep accepts (nil keep: all). Each page gets its
// own timeout when perCall > 0. A page token seen before ends the listing,
// so a misbehaving endpoint cannot keep it going forever. Errors are the
// SDK's, unwrapped: callers say what they were doing.
func ListInstances(ctx context.Context, api API, filters []types.InstanceInformationStringFilter, perCall time.Duration,
	keep func(types.InstanceInformation) bool) ([]types.InstanceInformation, error) {
	var out []types.InstanceInformation
	var token *string
	seen := map[string]bool{}
	for {
		pctx, cancel := ctx, context.CancelFunc(func() {})
		if perCall > 0 {
			pctx, cancel = context.WithTimeout(ctx, perCall)
		}
		page, err := api.DescribeInstanceInformation(pctx, &awsssm.DescribeInstanceInformationInput{
			Filters: filters, MaxResults: aws.Int32(50), NextToken: token,
		})
		cancel()
		if err != nil {
			return nil, err
		}
		for _, ii := range page.InstanceInformationList {
			if keep == nil || keep(ii) {
				out = append(out, ii)
			}
		}
		next := aws.ToString(page.NextToken)
		if next == "" || seen[next] {
			return out, nil
		}
		seen[next] = true
		token = page.NextToken
	}
}

// IsAccessDenied reports whether err is the service refusing the caller's
// permissions.
func IsAccessDenied(err error) bool { return isAccessDenied(err) }
