package ssm

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsssm "github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/bastion-dev/bastion/internal/awsconf"
)

// DeregisterFloor is the least time Deregister should be given at
// shutdown: a few DeregisterManagedInstance attempts at real latency. The
// stop plan in cmd/bastion keeps it free of the steps before.
const DeregisterFloor = 2500 * time.Millisecond

// Deregister undoes what this run created, within ctx, most important
// first:
//
//  1. the instances it registered or may have (the one confirmed, any the
//     agent reported, the one in the registration file it wrote), each
//     with its own share of ctx and retried until deregistered or out of
//     time: the first share never leaves the others nothing;
//  2. if the registration was never confirmed, any other instance the
//     activation registered (DescribeInstanceInformation by ActivationIds),
//     e.g. one whose "-register" was killed after the service answered;
//  3. the registration file, once all of them are gone;
//  4. what costs nothing but is tidy, with the time left: activation
//     deletes that failed before, and the duplicate sweep if Start did not
//     get to it (SIGTERM during CreateActivation). An activation that may
//     remain is logged with the time it expires.
//
// An instance already gone counts as deregistered. The error names the
// instances left; a second call only retries those. Run it after StopAgent,
// after a successful Start as after a failed or abandoned one.
func (l *Lifecycle) Deregister(ctx context.Context) error {
	ids := l.ownInstances()
	l.mu.Lock()
	act, lookup := l.act, l.instanceID == "" && l.registering && l.act != nil && l.act.id != ""
	l.mu.Unlock()
	if len(ids) == 0 && !lookup {
		l.log.Info("nothing to deregister", "step", "deregister")
	}
	reserve := 0
	if lookup {
		reserve = 1
	}
	failed, lastErr := l.deregisterEach(ctx, ids, reserve)
	if lookup {
		lctx, cancel := shareOf(ctx, 1+len(failed))
		extras, err := l.instancesOf(lctx, act.id)
		cancel()
		if err != nil {
			l.log.Error("instances of the activation not listed; one it registered unseen may remain", "step", "deregister",
				"activation_id", act.id, "error", err.Error())
		}
		for _, id := range extras {
			if !slices.Contains(ids, id) {
				l.addInstance(id)
				failed = append(failed, id) // not tried yet
			}
		}
	}
	// Again, with what is left of ctx, for those not refused outright.
	var refused []string
	failed = slices.DeleteFunc(failed, func(id string) bool {
		if l.refused(id) {
			refused = append(refused, id)
			return true
		}
		return false
	})
	if len(failed) > 0 {
		var err error
		if failed, err = l.deregisterEach(ctx, failed, 0); err != nil {
			lastErr = err
		}
	}
	failed = append(failed, refused...)
	l.removeRegistrationFile()
	l.tidyActivations(ctx)
	if len(failed) > 0 {
		return fmt.Errorf("%w (left registered: %s)", lastErr, strings.Join(failed, ", "))
	}
	return nil
}

// ownInstances are the instances this run registered or may have, not yet
// deregistered. Only a registration file this run's register process
// wrote counts; a stale one is clearStale's business.
func (l *Lifecycle) ownInstances() []string {
	l.mu.Lock()
	registering := l.registering
	l.mu.Unlock()
	if registering {
		if reg, err := readRegistration(l.path(RegistrationFile)); err == nil {
			l.addInstance(reg.ManagedInstanceID)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var ids []string
	for _, id := range l.ids {
		if !slices.Contains(l.deregistered, id) {
			ids = append(ids, id)
		}
	}
	return ids
}

// deregisterEach deregisters ids in order, each within an equal share of
// what is left of ctx, keeping reserve shares for what comes after. It
// returns the ids still registered and the last error.
func (l *Lifecycle) deregisterEach(ctx context.Context, ids []string, reserve int) (failed []string, lastErr error) {
	for i, id := range ids {
		ictx, cancel := shareOf(ctx, len(ids)-i+reserve)
		gone, err := l.deregisterInstance(ictx, id)
		cancel()
		if err != nil {
			l.log.Error("instance not deregistered", "step", "deregister", "instance_id", id, "error", err.Error())
			failed, lastErr = append(failed, id), err
			if isRefusal(err) {
				l.mu.Lock()
				l.refusedIDs = append(l.refusedIDs, id)
				l.mu.Unlock()
			}
			continue
		}
		l.mu.Lock()
		l.deregistered = append(l.deregistered, id)
		l.mu.Unlock()
		if gone {
			l.log.Info("instance was already deregistered", "step", "deregister", "instance_id", id)
		} else {
			l.log.Info("instance deregistered", "step", "deregister", "instance_id", id)
		}
	}
	return failed, lastErr
}

// shareOf bounds ctx to 1/n of its remaining time (all of it for n <= 1).
func shareOf(ctx context.Context, n int) (context.Context, context.CancelFunc) {
	d, ok := ctx.Deadline()
	if !ok || n <= 1 {
		return context.WithCancel(ctx)
	}
	return context.WithDeadline(ctx, time.Now().Add(time.Until(d)/time.Duration(n)))
}

// instancesOf lists the managed instances registered with activation id,
// within its share of ctx.
func (l *Lifecycle) instancesOf(ctx context.Context, activationID string) ([]string, error) {
	filters := []types.InstanceInformationStringFilter{{Key: aws.String("ActivationIds"), Values: []string{activationID}}}
	found, err := ListInstances(ctx, l.api, filters, l.callTimeout, nil)
	if err != nil {
		return nil, apiError("describe instance information", "ssm:DescribeInstanceInformation", err)
	}
	var ids []string
	for _, ii := range found {
		ids = append(ids, aws.ToString(ii.InstanceId))
	}
	return ids, nil
}

// removeRegistrationFile removes this run's registration file once every
// instance it knows of is deregistered; otherwise the file stays, so the
// next start of this container tries again (clearStale).
func (l *Lifecycle) removeRegistrationFile() {
	l.mu.Lock()
	registering := l.registering
	left := slices.ContainsFunc(l.ids, func(id string) bool { return !slices.Contains(l.deregistered, id) })
	l.mu.Unlock()
	if !registering || left {
		return
	}
	if err := os.Remove(l.path(RegistrationFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		l.log.Warn("registration file not removed", "step", "deregister", "error", err.Error())
	}
}

// lateCheckMargin is how long before its deadline Deregister looks once
// more for an activation that a CreateActivation cut short may still create.
const lateCheckMargin = time.Second

// tidyActivations retries failed activation deletes and, if Start did not
// get to it, looks for duplicates, with what is left of ctx. A
// CreateActivation that got no answer (cut by SIGTERM, or failed) may
// still be in flight in the service and land later: if the first look
// finds nothing, it looks again as late as ctx allows. What may remain is
// logged with its expiry; an unused activation expires on its own after
// ActivationTTL, and a used one cannot register anything more.
func (l *Lifecycle) tidyActivations(ctx context.Context) {
	l.retryActivations(ctx, "deregister")
	l.mu.Lock()
	act, swept := l.act, l.duplicatesSwept
	l.mu.Unlock()
	if act == nil {
		return
	}
	found := 0
	if !swept {
		found = l.sweepDuplicates(ctx)
	}
	unanswered := act.id == ""
	if unanswered && found == 0 && !swept {
		if d, ok := ctx.Deadline(); ok && sleepCtx(ctx, time.Until(d.Add(-lateCheckMargin))) == nil {
			l.log.Info("looking again for an activation the cut CreateActivation may have created", "step", "deregister")
			found = l.sweepDuplicates(ctx)
		}
	}
	l.mu.Lock()
	pending, swept := slices.Clone(l.pendingActivations), l.duplicatesSwept
	l.mu.Unlock()
	for _, id := range pending {
		l.log.Warn("activation not deleted; it expires on its own", "step", "deregister", "activation_id", id,
			"expires_at", act.expires(l.cfg.ActivationTTL))
	}
	if !swept || unanswered && found == 0 {
		l.log.Warn("an activation created by a CreateActivation call that was cut short may remain; it expires on its own",
			"step", "deregister", "instance_name", act.name, "expires_at", act.expires(l.cfg.ActivationTTL))
	}
}

// deregisterInstance deregisters id, retrying every failure but a refusal
// (access denied, invalid request) until ctx ends: each attempt is one
// HTTP call (the SDK's own retries would stop at their count, not at our
// deadline), with a jittered pause from retryMin doubling to retryMax.
// gone reports that it was already deregistered (InvalidInstanceId), which
// is not an error.
func (l *Lifecycle) deregisterInstance(ctx context.Context, id string) (gone bool, err error) {
	wait := l.retryMin
	for attempt := 1; ; attempt++ {
		cctx, cancel := l.call(ctx)
		_, err = l.api.DeregisterManagedInstance(cctx, &awsssm.DeregisterManagedInstanceInput{InstanceId: aws.String(id)},
			func(o *awsssm.Options) { o.RetryMaxAttempts = 1 })
		cancel()
		switch {
		case err == nil:
			return false, nil
		case awsconf.ErrorCode(err) == "InvalidInstanceId":
			return true, nil
		case isRefusal(err):
			return false, apiError("deregister managed instance", "ssm:DeregisterManagedInstance", err)
		}
		l.log.Debug("deregistration failed; retrying", "step", "deregister", "instance_id", id, "attempt", attempt, "error", err.Error())
		if sleepCtx(ctx, wait/2+time.Duration(rand.Int64N(int64(wait)))) != nil {
			return false, apiError("deregister managed instance", "ssm:DeregisterManagedInstance",
				fmt.Errorf("gave up after %d attempts at the deadline: %w", attempt, err))
		}
		wait = min(2*wait, l.retryMax)
	}
}

// isRefusal: the service refused the request itself (permissions, an
// invalid request); trying again cannot help.
func isRefusal(err error) bool {
	return isAccessDenied(err) || awsconf.ErrorCode(err) == "ValidationException"
}

func (l *Lifecycle) refused(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Contains(l.refusedIDs, id)
}
