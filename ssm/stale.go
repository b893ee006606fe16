package ssm

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsssm "github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/bastion-dev/bastion/internal/awsconf"
)

// clearStale deals with a registration file an earlier run left on the
// same filesystem (a restarted container), before "-register" writes ours.
// The file is not trusted on its own word: its instance is deregistered
// only if it is ours (on ECS: tagged with our task ARN; off ECS: untagged
// by any task and named as we would name ours) or ConnectionLost. An
// instance that is Online and someone else's (a file copied from another
// task, a shared volume) is left alone. The file is then removed, so that a
// file seen after "-register" is the new one; the new registration
// overwrites the agent's vault ("-register -y"), so "-clear" is not needed.
//
// When ctx ends (SIGTERM) before the instance was deregistered, the file is
// kept for the next start and ctx's error returned. Other failures are
// logged: the orphan sweep of a later task removes the instance once its
// task has stopped.
func (l *Lifecycle) clearStale(ctx context.Context) error {
	file := l.path(RegistrationFile)
	old, err := readRegistration(file)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		l.log.Warn("unreadable registration file removed", "step", "stale", "error", err.Error())
	case !instanceIDPattern.MatchString(old.ManagedInstanceID):
		l.log.Warn("registration file without a managed instance id removed", "step", "stale")
	case old.Region != l.cfg.Region:
		l.log.Warn("previous instance is in another region; left alone", "step", "stale",
			"instance_id", old.ManagedInstanceID, "region", old.Region)
	default:
		if err := l.deregisterStale(ctx, old.ManagedInstanceID); err != nil {
			if ctx.Err() != nil {
				l.log.Warn("stopped before the previous instance was deregistered; registration file kept for the next start",
					"step", "stale", "instance_id", old.ManagedInstanceID, "error", err.Error())
				return fmt.Errorf("ssm: previous instance %s: %w", old.ManagedInstanceID, ctx.Err())
			}
			l.log.Warn("previous instance not deregistered; the orphan sweep of a later task will once its task stopped",
				"step", "stale", "instance_id", old.ManagedInstanceID, "error", err.Error())
		}
	}
	if err := os.Remove(file); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("ssm: remove stale registration file: %w", err)
	}
	return nil
}

// deregisterStale deregisters the previous instance id if it is ours or
// ConnectionLost; nil also when it is gone or someone else's.
func (l *Lifecycle) deregisterStale(ctx context.Context, id string) error {
	ii, err := l.describeInstance(ctx, id)
	if err != nil {
		return err
	}
	if ii == nil {
		l.log.Info("previous instance was already deregistered", "step", "stale", "instance_id", id)
		return nil
	}
	if ii.PingStatus != types.PingStatusConnectionLost {
		ours, why, err := l.isOurs(ctx, *ii)
		if err != nil {
			return err
		}
		if !ours {
			l.log.Warn("registration file names an instance that is not ours and still pings; left alone",
				"step", "stale", "instance_id", id, "ping_status", string(ii.PingStatus), "reason", why)
			return nil
		}
	}
	cctx, cancel := l.call(ctx)
	defer cancel()
	gone, err := l.deregisterInstance(cctx, id)
	switch {
	case err != nil:
		return err
	case gone:
		l.log.Info("previous instance was already deregistered", "step", "stale", "instance_id", id)
	default:
		l.log.Info("previous instance deregistered", "step", "stale", "instance_id", id, "ping_status", string(ii.PingStatus))
	}
	return nil
}

// describeInstance returns id's InstanceInformation, or nil if the service
// does not know it.
func (l *Lifecycle) describeInstance(ctx context.Context, id string) (*types.InstanceInformation, error) {
	cctx, cancel := l.call(ctx)
	defer cancel()
	out, err := l.api.DescribeInstanceInformation(cctx, &awsssm.DescribeInstanceInformationInput{
		Filters: []types.InstanceInformationStringFilter{{Key: aws.String("InstanceIds"), Values: []string{id}}},
	})
	if awsconf.ErrorCode(err) == "InvalidInstanceId" {
		return nil, nil
	}
	if err != nil {
		return nil, apiError("describe instance information", "ssm:DescribeInstanceInformation", err)
	}
	for _, ii := range out.InstanceInformationList {
		if aws.ToString(ii.InstanceId) == id {
			return &ii, nil
		}
	}
	return nil, nil
}

// isOurs tells whether ii was registered by this task (on ECS: its
// TagTaskARN is our task ARN) or, off ECS, by a bastion named as this one
// that no ECS task claims. why says what decided.
func (l *Lifecycle) isOurs(ctx context.Context, ii types.InstanceInformation) (ours bool, why string, err error) {
	tags, err := l.instanceTags(ctx, aws.ToString(ii.InstanceId))
	if err != nil {
		return false, "", err
	}
	taskARN := tags[TagTaskARN]
	if l.task != nil {
		if taskARN == l.task.TaskARN {
			return true, "tagged with this task", nil
		}
		return false, fmt.Sprintf("tagged with task %q, not this one", taskARN), nil
	}
	switch {
	case taskARN != "":
		return false, fmt.Sprintf("tagged with ECS task %q", taskARN), nil
	case tags[TagManagedBy] != TagManagedByValue:
		return false, "not tagged as bastion's", nil
	case aws.ToString(ii.Name) != l.instanceName():
		return false, fmt.Sprintf("named %q, not %q", aws.ToString(ii.Name), l.instanceName()), nil
	}
	return true, "bastion's, named as this one", nil
}

// instanceTags returns a managed instance's tags.
func (l *Lifecycle) instanceTags(ctx context.Context, id string) (map[string]string, error) {
	cctx, cancel := l.call(ctx)
	defer cancel()
	out, err := l.api.ListTagsForResource(cctx, &awsssm.ListTagsForResourceInput{
		ResourceType: types.ResourceTypeForTaggingManagedInstance, ResourceId: aws.String(id),
	})
	if err != nil {
		return nil, apiError("list tags of a managed instance", "ssm:ListTagsForResource", err)
	}
	tags := make(map[string]string, len(out.TagList))
	for _, t := range out.TagList {
		tags[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	return tags, nil
}
