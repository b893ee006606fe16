package ssm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsssm "github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/ssm/types"
)

// deregisterInstance deregisters id; gone reports that it was already
// deregistered (InvalidInstanceId), which is not an error.
func (l *Lifecycle) deregisterInstance(ctx context.Context, id string) (gone bool, err error) {
	cctx, cancel := l.call(ctx)
	defer cancel()
	_, err = l.api.DeregisterManagedInstance(cctx, &awsssm.DeregisterManagedInstanceInput{InstanceId: aws.String(id)})
	if errorCode(err) == "InvalidInstanceId" {
		return true, nil
	}
	if err != nil {
		return false, apiError("deregister managed instance", "ssm:DeregisterManagedInstance", err)
	}
	return false, nil
}

// abort undoes a failed Start: the agent is stopped, every instance the
// activation registered is deregistered, the registration file removed.
// The activation itself has been deleted already.
func (l *Lifecycle) abort(ctx context.Context, activationID string, ids []string) {
	ctx, cancel := l.cleanupContext(ctx)
	defer cancel()
	l.mu.Lock()
	p, out := l.proc, l.procOut
	l.proc, l.procOut = nil, nil
	l.instanceID = ""
	l.mu.Unlock()
	if p != nil {
		sctx, scancel := context.WithTimeout(ctx, 8*time.Second)
		killed, err := p.Stop(sctx)
		scancel()
		select {
		case <-out:
		case <-ctx.Done():
		}
		l.log.Info("agent stopped after failed start", "step", "cleanup", "killed", killed, "error", errString(err))
	}
	// An instance registered but not reported (e.g. the agent failed to
	// persist it) is found through its activation.
	cctx, ccancel := l.call(ctx)
	out2, err := l.api.DescribeInstanceInformation(cctx, &awsssm.DescribeInstanceInformationInput{
		Filters: []types.InstanceInformationStringFilter{{Key: aws.String("ActivationIds"), Values: []string{activationID}}},
	})
	ccancel()
	if err != nil {
		l.log.Warn("instances of the activation not listed", "step", "cleanup", "activation_id", activationID,
			"error", apiError("describe instance information", "ssm:DescribeInstanceInformation", err).Error())
	} else {
		for _, ii := range out2.InstanceInformationList {
			ids = append(ids, aws.ToString(ii.InstanceId))
		}
	}
	slices.Sort(ids)
	for _, id := range slices.Compact(ids) {
		if id == "" {
			continue
		}
		if _, err := l.deregisterInstance(ctx, id); err != nil {
			l.log.Error("instance not deregistered after failed start", "step", "cleanup", "instance_id", id,
				"activation_id", activationID, "error", err.Error())
			continue
		}
		l.log.Info("instance deregistered after failed start", "step", "cleanup", "instance_id", id, "activation_id", activationID)
	}
	if err := os.Remove(l.path(RegistrationFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		l.log.Warn("registration file not removed", "step", "cleanup", "error", err.Error())
	}
	l.retryActivations(ctx, "cleanup")
}

// Deregister deregisters the managed instance (one already gone counts as
// deregistered) and removes the registration file. Without a registration
// it does nothing. Activation deletes that failed earlier are retried
// within ctx; their failure is logged only.
func (l *Lifecycle) Deregister(ctx context.Context) error {
	err := l.deregister(ctx)
	if ctx.Err() == nil {
		l.retryActivations(ctx, "deregister")
	}
	return err
}

func (l *Lifecycle) deregister(ctx context.Context) error {
	l.mu.Lock()
	id, done := l.instanceID, l.deregistered
	l.mu.Unlock()
	if done {
		return nil
	}
	if id == "" {
		if reg, err := readRegistration(l.path(RegistrationFile)); err == nil {
			id = reg.ManagedInstanceID
		}
	}
	if id == "" {
		l.log.Info("nothing to deregister", "step", "deregister")
		return nil
	}
	gone, err := l.deregisterInstance(ctx, id)
	if err != nil {
		l.log.Error("instance not deregistered", "step", "deregister", "instance_id", id, "error", err.Error())
		return err
	}
	l.mu.Lock()
	l.deregistered = true
	l.mu.Unlock()
	if gone {
		l.log.Info("instance was already deregistered", "step", "deregister", "instance_id", id)
	} else {
		l.log.Info("instance deregistered", "step", "deregister", "instance_id", id)
	}
	if err := os.Remove(l.path(RegistrationFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("ssm: remove registration file: %w", err)
	}
	return nil
}
