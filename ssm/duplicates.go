package ssm

import (
	"context"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsssm "github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/ssm/types"
)

// duplicateSkew is how much earlier than the start of our CreateActivation
// call (by our clock) the service may date an activation that call created.
const duplicateSkew = 2 * time.Minute

// maxDuplicatePages bounds the DescribeActivations pages one sweep reads.
const maxDuplicatePages = 20

// sweepDuplicates deletes the activations our CreateActivation call created
// besides act.id: the SDK retries an attempt that timed out, and if the
// service had created an activation before its response was lost, the retry
// creates a second one. Only this run's activations are deleted: same
// DefaultInstanceName, same Description (it carries the run id), on ECS
// our task ARN in TagTaskARN, no registration, created at or after the call
// started (minus duplicateSkew). Failures are logged as warnings, never
// fatal: a duplicate left behind expires after ActivationTTL.
func (l *Lifecycle) sweepDuplicates(ctx context.Context, act *activation) {
	ctx, cancel := l.cleanupContext(ctx)
	defer cancel()
	var dups []string
	var token *string
	seen := map[string]bool{}
	for page := 0; page < maxDuplicatePages; page++ {
		cctx, ccancel := l.call(ctx)
		out, err := l.api.DescribeActivations(cctx, &awsssm.DescribeActivationsInput{
			Filters: []types.DescribeActivationsFilter{{
				FilterKey: types.DescribeActivationsFilterKeysDefaultInstanceName, FilterValues: []string{act.name},
			}},
			MaxResults: aws.Int32(50),
			NextToken:  token,
		})
		ccancel()
		if err != nil {
			err = apiError("find duplicate activations", "ssm:DescribeActivations", err)
			l.log.Warn("duplicate activations not listed; any expire on their own", "step", "activation",
				"activation_id", act.id, "expires_in", l.cfg.ActivationTTL.String(), "error", err.Error())
			break
		}
		for _, a := range out.ActivationList {
			if id := aws.ToString(a.ActivationId); l.isDuplicate(a, act) && !seen[id] {
				seen[id] = true
				dups = append(dups, id)
			}
		}
		next := aws.ToString(out.NextToken)
		if next == "" || seen["token "+next] {
			break
		}
		seen["token "+next] = true
		token = out.NextToken
	}
	for _, id := range dups {
		cctx, ccancel := l.call(ctx)
		_, err := l.api.DeleteActivation(cctx, &awsssm.DeleteActivationInput{ActivationId: aws.String(id)})
		ccancel()
		switch code := errorCode(err); {
		case err == nil:
			l.log.Info("duplicate activation deleted", "step", "activation", "activation_id", id, "kept_activation_id", act.id)
		case code == "InvalidActivationId" || code == "InvalidActivation":
			l.log.Info("duplicate activation already gone", "step", "activation", "activation_id", id)
		default:
			err = apiError("delete duplicate activation", "ssm:DeleteActivation", err)
			l.log.Warn("duplicate activation not deleted; it expires on its own", "step", "activation",
				"activation_id", id, "expires_in", l.cfg.ActivationTTL.String(), "error", err.Error())
		}
	}
}

// isDuplicate reports whether a is an activation this run created besides
// act.id. A missing CreatedDate does not qualify.
func (l *Lifecycle) isDuplicate(a types.Activation, act *activation) bool {
	switch {
	case aws.ToString(a.ActivationId) == "" || aws.ToString(a.ActivationId) == act.id,
		aws.ToString(a.DefaultInstanceName) != act.name,
		aws.ToString(a.Description) != act.desc,
		aws.ToInt32(a.RegistrationsCount) != 0,
		a.CreatedDate == nil || a.CreatedDate.Before(act.callStarted.Add(-duplicateSkew)):
		return false
	case act.taskARN == "":
		return true
	}
	for _, t := range a.Tags {
		if aws.ToString(t.Key) == TagTaskARN {
			return aws.ToString(t.Value) == act.taskARN
		}
	}
	return false
}
