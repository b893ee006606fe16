package ssm

import (
	"context"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ecs"
	"github.com/aws/aws-sdk-go-v2/service/ssm/types"
)

// describeTasksBatch is DescribeTasks' limit of tasks per call.
const describeTasksBatch = 100

// sweepOrphans deregisters instances of the same ECS cluster and family
// left behind by tasks that died without deregistering (SIGKILL, OOM). Time
// spent ConnectionLost (at least OrphanAfter) only makes an instance a
// candidate: a live task whose pings failed for a while (an endpoint or NAT
// outage) looks the same. Death is proved by ECS: the task named by the
// instance's TagTaskARN is STOPPED, or ECS no longer knows it (it keeps
// stopped tasks for about an hour; a running task is always found).
// Instances without a task tag, or of this task, are left alone. Failures
// are logged, never fatal.
func (l *Lifecycle) sweepOrphans(ctx context.Context) {
	if l.tasks == nil {
		l.log.Info("orphan sweep skipped: no ECS client to prove a task stopped", "step", "orphan-sweep")
		return
	}
	task := l.task
	filters := []types.InstanceInformationStringFilter{
		// Tag filters can't be combined with other keys: PingStatus is
		// checked here.
		{Key: aws.String("tag:" + TagCluster), Values: []string{task.Cluster}},
		{Key: aws.String("tag:" + TagFamily), Values: []string{task.Family}},
	}
	now := l.cfg.Clock()
	candidates, err := ListInstances(ctx, l.api, filters, l.callTimeout, func(ii types.InstanceInformation) bool {
		return isOrphan(ii, now, l.cfg.OrphanAfter)
	})
	if err != nil {
		err = apiError("orphan sweep: describe instance information", "ssm:DescribeInstanceInformation", err)
		l.log.Warn("orphan sweep failed", "step", "orphan-sweep", "error", err.Error())
		return
	}
	byTask := map[string][]types.InstanceInformation{}
	for _, ii := range candidates {
		id := aws.ToString(ii.InstanceId)
		tags, err := l.instanceTags(ctx, id)
		switch {
		case err != nil:
			l.log.Warn("orphan candidate not checked", "step", "orphan-sweep", "instance_id", id, "error", err.Error())
		case tags[TagTaskARN] == "":
			l.log.Info("orphan candidate without a task tag left alone", "step", "orphan-sweep", "instance_id", id)
		case tags[TagTaskARN] == task.TaskARN:
			// This task's own earlier registration: clearStale's business.
		default:
			byTask[tags[TagTaskARN]] = append(byTask[tags[TagTaskARN]], ii)
		}
	}
	if len(byTask) == 0 {
		return
	}
	arns := make([]string, 0, len(byTask))
	for arn := range byTask {
		arns = append(arns, arn)
	}
	slices.Sort(arns)
	status, err := l.taskStatuses(ctx, arns)
	if err != nil {
		l.log.Warn("orphan sweep failed: tasks not described, nothing deregistered", "step", "orphan-sweep", "error", err.Error())
		return
	}
	for _, arn := range arns {
		st := status[arn]
		for _, ii := range byTask[arn] {
			id := aws.ToString(ii.InstanceId)
			if st != "STOPPED" && st != "MISSING" {
				l.log.Info("orphan candidate's task still runs; left alone", "step", "orphan-sweep", "instance_id", id,
					"task_arn", arn, "task_status", st, "last_ping", lastSeen(ii).UTC().Format(time.RFC3339))
				continue
			}
			cctx, cancel := l.call(ctx)
			_, err := l.deregisterInstance(cctx, id)
			cancel()
			if err != nil {
				l.log.Warn("orphan not deregistered", "step", "orphan-sweep", "instance_id", id, "error", err.Error())
				continue
			}
			l.log.Info("orphan deregistered", "step", "orphan-sweep", "instance_id", id, "name", aws.ToString(ii.Name),
				"task_arn", arn, "task_status", st, "last_ping", lastSeen(ii).UTC().Format(time.RFC3339))
		}
	}
}

// taskStatuses returns the lastStatus of each task in our cluster, or
// "MISSING" for those ECS does not know.
func (l *Lifecycle) taskStatuses(ctx context.Context, arns []string) (map[string]string, error) {
	status := map[string]string{}
	for batch := range slices.Chunk(arns, describeTasksBatch) {
		cctx, cancel := l.call(ctx)
		out, err := l.tasks.DescribeTasks(cctx, &ecs.DescribeTasksInput{Cluster: aws.String(l.task.Cluster), Tasks: batch})
		cancel()
		if err != nil {
			return nil, apiError("orphan sweep: describe tasks", "ecs:DescribeTasks", err)
		}
		for _, t := range out.Tasks {
			status[aws.ToString(t.TaskArn)] = aws.ToString(t.LastStatus)
		}
		for _, f := range out.Failures {
			if aws.ToString(f.Reason) == "MISSING" {
				status[aws.ToString(f.Arn)] = "MISSING"
			}
		}
	}
	return status, nil
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
