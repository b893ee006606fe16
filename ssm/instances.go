package ssm

import (
	"context"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsssm "github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/ssm/types"
)

// maxInstancePages bounds one listing (50 instances a page): a token that
// keeps coming back in a cycle cannot keep it going forever.
const maxInstancePages = 200

// ListInstances pages through DescribeInstanceInformation with filters and
// returns the instances keep accepts (nil keep: all). Each page gets its
// own timeout when perCall > 0. Errors are the SDK's, unwrapped: callers
// say what they were doing. It is the one listing of instances, for the
// lifecycle and for "bastion ssh-config".
func ListInstances(ctx context.Context, api API, filters []types.InstanceInformationStringFilter, perCall time.Duration,
	keep func(types.InstanceInformation) bool) ([]types.InstanceInformation, error) {
	pages := awsssm.NewDescribeInstanceInformationPaginator(api,
		&awsssm.DescribeInstanceInformationInput{Filters: filters, MaxResults: aws.Int32(50)},
		func(o *awsssm.DescribeInstanceInformationPaginatorOptions) { o.StopOnDuplicateToken = true })
	var out []types.InstanceInformation
	for page := 0; pages.HasMorePages(); page++ {
		if page == maxInstancePages {
			return nil, fmt.Errorf("more than %d pages of instances", maxInstancePages)
		}
		pctx, cancel := ctx, context.CancelFunc(func() {})
		if perCall > 0 {
			pctx, cancel = context.WithTimeout(ctx, perCall)
		}
		resp, err := pages.NextPage(pctx)
		cancel()
		if err != nil {
			return nil, err
		}
		for _, ii := range resp.InstanceInformationList {
			if keep == nil || keep(ii) {
				out = append(out, ii)
			}
		}
	}
	return out, nil
}

// IsAccessDenied reports whether err is the service refusing the caller's
// permissions.
func IsAccessDenied(err error) bool { return isAccessDenied(err) }
