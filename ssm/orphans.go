package ssm

import (
	"context"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ssm/types"
)

// sweepOrphans deregisters instances of the same ECS cluster and family
// that lost their connection at least OrphanAfter ago: earlier tasks that
// died without deregistering. Failures are logged, never fatal.
func (l *Lifecycle) sweepOrphans(ctx context.Context) {
	task := l.task
	filters := []types.InstanceInformationStringFilter{
		// Tag filters can't be combined with other keys: PingStatus is
		// checked here.
		{Key: aws.String("tag:" + TagCluster), Values: []string{task.Cluster}},
		{Key: aws.String("tag:" + TagFamily), Values: []string{task.Family}},
	}
	now := l.cfg.Clock()
	orphans, err := ListInstances(ctx, l.api, filters, l.callTimeout, func(ii types.InstanceInformation) bool {
		return isOrphan(ii, now, l.cfg.OrphanAfter)
	})
	if err != nil {
		err = apiError("orphan sweep: describe instance information", "ssm:DescribeInstanceInformation", err)
		l.log.Warn("orphan sweep failed", "step", "orphan-sweep", "error", err.Error())
		return
	}
	for _, ii := range orphans {
		id := aws.ToString(ii.InstanceId)
		last := lastSeen(ii)
		_, err := l.deregisterInstance(ctx, id)
		if err != nil {
			l.log.Warn("orphan not deregistered", "step", "orphan-sweep", "instance_id", id, "error", err.Error())
			continue
		}
		l.log.Info("orphan deregistered", "step", "orphan-sweep", "instance_id", id,
			"name", aws.ToString(ii.Name), "last_ping", last.UTC().Format(time.RFC3339))
	}
}

// isOrphan: a managed instance (mi-) whose PingStatus is ConnectionLost and
// whose last ping (or registration, if it never pinged) is at least after
// old.
func isOrphan(ii types.InstanceInformation, now time.Time, after time.Duration) bool {
	if !instanceIDPattern.MatchString(aws.ToString(ii.InstanceId)) || ii.PingStatus != types.PingStatusConnectionLost {
		return false
	}
	last := lastSeen(ii)
	return !last.IsZero() && now.Sub(last) >= after
}

func lastSeen(ii types.InstanceInformation) time.Time {
	switch {
	case ii.LastPingDateTime != nil:
		return *ii.LastPingDateTime
	case ii.RegistrationDate != nil:
		return *ii.RegistrationDate
	}
	return time.Time{}
}
