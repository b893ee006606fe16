package ssm

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsssm "github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/bastion-dev/bastion/internal/awsconf"
)

// instanceName is the activation's DefaultInstanceName.
func (l *Lifecycle) instanceName() string {
	name := l.cfg.InstanceName
	if name == "" && l.task != nil {
		name = l.task.Family + "-" + l.task.TaskID
	}
	if name == "" {
		name, _ = os.Hostname()
	}
	if name = sanitizeName(name); name == "" {
		name = "bastion"
	}
	return name
}

// activationTags are the user's tags plus bastion's own, sorted by key.
func (l *Lifecycle) activationTags() []types.Tag {
	m := map[string]string{TagManagedBy: TagManagedByValue}
	for k, v := range l.cfg.Tags {
		m[k] = v
	}
	if t := l.task; t != nil {
		m[TagCluster] = t.Cluster
		m[TagTaskARN] = t.TaskARN
		m[TagFamily] = t.Family
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	tags := make([]types.Tag, 0, len(keys))
	for _, k := range keys {
		tags = append(tags, types.Tag{Key: aws.String(k), Value: aws.String(m[k])})
	}
	return tags
}

// activation is what CreateActivation was sent and returned; name,
// description and (on ECS) taskARN identify the duplicates our own
// retries may have created (see sweepDuplicates). id and code are empty
// when the call gave no answer.
type activation struct {
	id, code    string
	name, desc  string
	taskARN     string    // "" when not on ECS
	callStarted time.Time // when the CreateActivation call started
}

// expires is when the service drops the activation on its own.
func (a *activation) expires(ttl time.Duration) string {
	return a.callStarted.Add(ttl).UTC().Format(time.RFC3339)
}

// activationDescription is "bastion <task ARN or instance name> run <run
// id>": the run id makes it unique to this run, so that an activation with
// this description was created by this run's CreateActivation call.
func activationDescription(subject, runID string) string {
	suffix := " run " + runID
	return cutRunes("bastion "+subject, 256-len(suffix)) + suffix
}

func newRunID() string {
	return fmt.Sprintf("%016x", rand.Uint64())
}

// createActivation creates the activation. The call is retried by the SDK
// and is not idempotent: an attempt whose response was lost, or one still
// in flight when ctx ended, may have created an activation nobody knows.
// So the activation is recorded before the call (for Deregister's
// duplicate sweep) and kept on failure, unless access was denied.
func (l *Lifecycle) createActivation(ctx context.Context) (*activation, error) {
	act := &activation{name: l.instanceName(), callStarted: l.cfg.Clock()}
	subject := act.name
	if l.task != nil {
		subject, act.taskARN = l.task.TaskARN, l.task.TaskARN
	}
	act.desc = activationDescription(subject, newRunID())
	l.setActivation(act)
	cctx, cancel := l.call(ctx)
	defer cancel()
	out, err := l.api.CreateActivation(cctx, &awsssm.CreateActivationInput{
		IamRole:             aws.String(l.cfg.IAMRole),
		DefaultInstanceName: aws.String(act.name),
		Description:         aws.String(act.desc),
		RegistrationLimit:   aws.Int32(1),
		ExpirationDate:      aws.Time(act.callStarted.Add(l.cfg.ActivationTTL).UTC()), // what the logs' expires_at say
		Tags:                l.activationTags(),
	})
	if err != nil {
		if isAccessDenied(err) { // refused before anything was created
			l.setActivation(nil)
		}
		return nil, apiError("create activation",
			fmt.Sprintf("ssm:CreateActivation, ssm:AddTagsToResource and iam:PassRole on role %q", l.cfg.IAMRole), err)
	}
	done := *act
	done.id, done.code = aws.ToString(out.ActivationId), aws.ToString(out.ActivationCode)
	if done.id == "" || done.code == "" {
		if done.id != "" {
			done.code = ""
			l.setActivation(&done)
			l.deleteActivation(ctx, done.id)
		}
		return nil, fmt.Errorf("ssm: create activation: response without activation id or code")
	}
	l.setActivation(&done)
	l.log.Info("activation created", "step", "activation", "activation_id", done.id, "instance_name", done.name,
		"expires_in", l.cfg.ActivationTTL.String())
	return &done, nil
}

func (l *Lifecycle) setActivation(act *activation) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.act = act
}

// deleteActivation deletes the activation; one already gone is fine. A
// failure is logged and the activation kept in pendingActivations, to be
// retried later (retryActivations); if that fails too, the activation is
// spent (RegistrationLimit 1) and expires after ActivationTTL.
func (l *Lifecycle) deleteActivation(ctx context.Context, id string) {
	if !l.tryDeleteActivation(ctx, id, "activation") {
		l.mu.Lock()
		if !slices.Contains(l.pendingActivations, id) {
			l.pendingActivations = append(l.pendingActivations, id)
		}
		l.mu.Unlock()
	}
}

// callDeleteActivation deletes id with one call; alreadyGone reports that
// the service no longer knew it, which is not an error.
func (l *Lifecycle) callDeleteActivation(ctx context.Context, id string) (alreadyGone bool, err error) {
	cctx, cancel := l.call(ctx)
	defer cancel()
	_, err = l.api.DeleteActivation(cctx, &awsssm.DeleteActivationInput{ActivationId: aws.String(id)})
	if code := awsconf.ErrorCode(err); code == "InvalidActivationId" || code == "InvalidActivation" {
		return true, nil
	}
	return false, err
}

// tryDeleteActivation deletes id, reporting whether it is gone.
func (l *Lifecycle) tryDeleteActivation(ctx context.Context, id, step string) bool {
	switch gone, err := l.callDeleteActivation(ctx, id); {
	case err == nil && !gone:
		l.log.Info("activation deleted", "step", step, "activation_id", id)
	case err == nil:
		l.log.Info("activation already gone", "step", step, "activation_id", id)
	default:
		err = apiError("delete activation", "ssm:DeleteActivation", err)
		l.log.Warn("activation not deleted; retried later, else it expires on its own", "step", step, "activation_id", id,
			"expires_in", l.cfg.ActivationTTL.String(), "error", err.Error())
		return false
	}
	return true
}

// retryActivations retries the deletes that failed before. What fails
// again stays pending.
func (l *Lifecycle) retryActivations(ctx context.Context, step string) {
	l.mu.Lock()
	ids := slices.Clone(l.pendingActivations)
	l.mu.Unlock()
	for _, id := range ids {
		if ctx.Err() != nil {
			return
		}
		if l.tryDeleteActivation(ctx, id, step) {
			l.mu.Lock()
			l.pendingActivations = slices.DeleteFunc(l.pendingActivations, func(p string) bool { return p == id })
			l.mu.Unlock()
		}
	}
}

// duplicateSkew is how much earlier than the start of our CreateActivation
// call (by our clock) the service may date an activation that call created.
const duplicateSkew = 2 * time.Minute

// maxDuplicatePages bounds the DescribeActivations pages one sweep reads.
const maxDuplicatePages = 20

// sweepDuplicates deletes the activations our CreateActivation call created
// besides the one it reported: the SDK retries an attempt that timed out,
// and if the service had created an activation before its response was
// lost, the retry creates a second one; a call cut short by SIGTERM may
// have created one nobody saw. Only this run's unused activations are
// deleted: same DefaultInstanceName, same Description (it carries the run
// id), on ECS our task ARN in TagTaskARN, no registration, created at or
// after the call started (minus duplicateSkew). Start runs it once;
// tidyActivations again only when that one did not finish (and once more
// late, for a CreateActivation cut short). It returns how many it found. Failures are warnings: a
// duplicate left behind expires after ActivationTTL.
func (l *Lifecycle) sweepDuplicates(ctx context.Context) int {
	l.mu.Lock()
	act := l.act
	l.mu.Unlock()
	if act == nil || ctx.Err() != nil {
		return 0
	}
	var dups []string
	pages := awsssm.NewDescribeActivationsPaginator(l.api, &awsssm.DescribeActivationsInput{
		Filters: []types.DescribeActivationsFilter{{
			FilterKey: types.DescribeActivationsFilterKeysDefaultInstanceName, FilterValues: []string{act.name},
		}},
		MaxResults: aws.Int32(50),
	}, func(o *awsssm.DescribeActivationsPaginatorOptions) { o.StopOnDuplicateToken = true })
	for page := 0; pages.HasMorePages() && page < maxDuplicatePages; page++ {
		cctx, ccancel := l.call(ctx)
		out, err := pages.NextPage(cctx)
		ccancel()
		if ctx.Err() != nil {
			return 0 // cut short: Deregister looks again
		}
		if err != nil {
			err = apiError("find duplicate activations", "ssm:DescribeActivations", err)
			l.log.Warn("duplicate activations not listed; any expire on their own", "step", "activation",
				"activation_id", act.id, "expires_at", act.expires(l.cfg.ActivationTTL), "error", err.Error())
			break
		}
		for _, a := range out.ActivationList {
			if id := aws.ToString(a.ActivationId); l.isDuplicate(a, act) && !slices.Contains(dups, id) {
				dups = append(dups, id)
			}
		}
	}
	for _, id := range dups {
		switch gone, err := l.callDeleteActivation(ctx, id); {
		case err == nil && !gone:
			l.log.Info("duplicate activation deleted", "step", "activation", "activation_id", id, "kept_activation_id", act.id)
		case err == nil:
			l.log.Info("duplicate activation already gone", "step", "activation", "activation_id", id)
		case ctx.Err() != nil:
			return len(dups)
		default:
			err = apiError("delete duplicate activation", "ssm:DeleteActivation", err)
			l.log.Warn("duplicate activation not deleted; it expires on its own", "step", "activation",
				"activation_id", id, "expires_at", act.expires(l.cfg.ActivationTTL), "error", err.Error())
		}
	}
	l.mu.Lock()
	l.duplicatesSwept = true
	l.mu.Unlock()
	return len(dups)
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
