package ssm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsssm "github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/ssm/types"
)

// activationTierSetting is the service setting holding the account's
// activation tier ("standard" or "advanced").
const activationTierSetting = "/ssm/managed-instance/activation-tier"

// Lifecycle registers the container as a managed instance, runs the agent
// and deregisters on shutdown. Start, then Run; on shutdown StopAgent, then
// Deregister.
type Lifecycle struct {
	cfg   Config
	api   API
	start Starter
	log   *slog.Logger

	// root prefixes the fixed paths (RegistrationFile, IPCDir, SeelogPath,
	// AgentConfigPath); "" in production.
	root string
	// Timing knobs, set by New.
	httpClient        *http.Client
	callTimeout       time.Duration // each SDK call
	cleanupTimeout    time.Duration // cleanup after a failed Start
	registerTimeout   time.Duration // amazon-ssm-agent -register
	pollMin, pollMax  time.Duration // readiness polling backoff
	drainDelay        time.Duration // output read after the child was reaped
	stableAfter       time.Duration // run time after which restarts are forgiven
	maxRestartBackoff time.Duration

	agentPath string // resolved at Start

	mu           sync.Mutex
	task         *taskMeta
	instanceID   string
	proc         Process
	procOut      <-chan struct{}
	procStarted  time.Time
	stopping     bool
	deregistered bool
	// pendingActivations were not deleted (e.g. the delete timed out under
	// throttling); they are retried once Online, after a failed Start and
	// at Deregister.
	pendingActivations []string
}

// New returns a Lifecycle for cfg (zero fields defaulted, see Config). api
// is the SSM client (NewAPI), start starts the agent as a supervised child,
// log receives JSON-friendly records; a nil log discards them.
func New(cfg Config, api API, start Starter, log *slog.Logger) *Lifecycle {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Lifecycle{
		cfg:               cfg.withDefaults(),
		api:               api,
		start:             start,
		log:               log,
		httpClient:        &http.Client{Timeout: 5 * time.Second},
		callTimeout:       60 * time.Second,
		cleanupTimeout:    20 * time.Second,
		registerTimeout:   90 * time.Second,
		pollMin:           time.Second,
		pollMax:           10 * time.Second,
		drainDelay:        drainDelay,
		stableAfter:       10 * time.Minute,
		maxRestartBackoff: 30 * time.Second,
	}
}

// InstanceID returns the managed instance id (mi-…) once registered, else "".
func (l *Lifecycle) InstanceID() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.instanceID
}

func (l *Lifecycle) path(p string) string { return l.root + p }

func (l *Lifecycle) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, l.callTimeout)
}

// Start registers the container and starts the agent, returning once the
// instance is Online. On failure after CreateActivation, neither the
// activation nor a managed instance is left behind, even if ctx is done.
func (l *Lifecycle) Start(ctx context.Context) error {
	begin := l.cfg.Clock()
	if err := l.cfg.validate(); err != nil {
		return err
	}
	agentPath, err := exec.LookPath(l.cfg.AgentPath)
	if err != nil {
		return fmt.Errorf("ssm: agent executable: %w", err)
	}
	l.agentPath = agentPath

	if l.cfg.MetadataURI != "" {
		task, err := fetchTaskMeta(ctx, l.httpClient, l.cfg.MetadataURI)
		if err != nil {
			return err
		}
		l.mu.Lock()
		l.task = task
		l.mu.Unlock()
		l.log.Info("ECS task", "step", "metadata", "cluster", task.Cluster, "family", task.Family, "task_arn", task.TaskARN)
	}

	if err := l.preflight(ctx); err != nil {
		return err
	}
	switch {
	case !l.cfg.OrphanSweep:
	case l.task == nil:
		l.log.Info("orphan sweep skipped: not on ECS", "step", "orphan-sweep")
	default:
		l.sweepOrphans(ctx)
	}
	if err := l.clearStale(ctx); err != nil {
		return err
	}
	if err := l.renderConfig(); err != nil {
		return err
	}

	act, err := l.createActivation(ctx)
	if err != nil {
		return err
	}
	activationID := act.id
	id, candidates, regErr := l.register(ctx, activationID, act.code)
	l.deleteActivation(ctx, activationID) // always; failures are logged
	// Again: an attempt still in flight when the call returned may have
	// created one since.
	l.sweepDuplicates(ctx, act)
	if regErr != nil {
		l.abort(ctx, activationID, candidates)
		return regErr
	}
	l.mu.Lock()
	l.instanceID = id
	l.mu.Unlock()
	l.log.Info("registered", "step", "register", "instance_id", id, "activation_id", activationID)

	p, err := l.startAgent()
	if err != nil {
		l.abort(ctx, activationID, []string{id})
		return fmt.Errorf("ssm: start agent: %w", err)
	}
	if err := l.waitOnline(ctx, id, p); err != nil {
		l.abort(ctx, activationID, []string{id})
		return err
	}
	now := l.cfg.Clock()
	l.log.Info("ssm agent online", "step", "ready", "instance_id", id,
		"ready_at", now.UTC().Format(time.RFC3339Nano), "ready_after", now.Sub(begin).String())
	l.retryActivations(ctx, "activation")
	return nil
}

// preflight checks the account's activation tier.
func (l *Lifecycle) preflight(ctx context.Context) error {
	cctx, cancel := l.call(ctx)
	defer cancel()
	out, err := l.api.GetServiceSetting(cctx, &awsssm.GetServiceSettingInput{SettingId: aws.String(activationTierSetting)})
	if err != nil {
		err = apiError("preflight: get activation tier",
			fmt.Sprintf("ssm:GetServiceSetting on arn:aws:ssm:%s:<account>:servicesetting%s", l.cfg.Region, activationTierSetting), err)
		if !l.cfg.RequireAdvancedTier {
			l.log.Warn("activation tier unknown; going on because the advanced tier is not required",
				"step", "preflight", "error", err.Error())
			return nil
		}
		return err
	}
	var value, arn string
	if s := out.ServiceSetting; s != nil {
		value, arn = aws.ToString(s.SettingValue), aws.ToString(s.ARN)
	}
	if strings.EqualFold(value, "advanced") {
		l.log.Info("activation tier is advanced", "step", "preflight")
		return nil
	}
	if arn == "" {
		arn = fmt.Sprintf("arn:aws:ssm:%s:<account>:servicesetting%s", l.cfg.Region, activationTierSetting)
	}
	err = fmt.Errorf("ssm: preflight: the activation tier of region %s is %q, but Session Manager on hybrid (mi-) instances needs the advanced-instances tier; "+
		"enable it (charged per instance) with `aws ssm update-service-setting --setting-id %s --setting-value advanced`, "+
		"or set %s=false to register without Session Manager",
		l.cfg.Region, value, arn, EnvRequireAdvancedTier)
	if !l.cfg.RequireAdvancedTier {
		l.log.Warn("activation tier is not advanced: Session Manager will refuse sessions to this instance",
			"step", "preflight", "tier", value, "error", err.Error())
		return nil
	}
	return err
}

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

// registration is the content of RegistrationFile.
type registration struct {
	ManagedInstanceID string
	Region            string
}

func readRegistration(path string) (registration, error) {
	var r registration
	b, err := os.ReadFile(path)
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// clearStale removes what an earlier run of this container left on the
// same filesystem: its managed instance is deregistered (the new
// registration overwrites the agent's vault, "-register -y", so "-clear"
// is not needed) and the registration file is removed, so that a file seen
// after "-register" is the new one.
func (l *Lifecycle) clearStale(ctx context.Context) error {
	file := l.path(RegistrationFile)
	old, err := readRegistration(file)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		l.log.Warn("unreadable registration file removed", "step", "stale", "error", err.Error())
	case old.ManagedInstanceID != "":
		gone, err := l.deregisterInstance(ctx, old.ManagedInstanceID)
		switch {
		case err != nil:
			l.log.Warn("previous instance not deregistered; the orphan sweep of a later task will", "step", "stale",
				"instance_id", old.ManagedInstanceID, "error", err.Error())
		case gone:
			l.log.Info("previous instance was already deregistered", "step", "stale", "instance_id", old.ManagedInstanceID)
		default:
			l.log.Info("previous instance deregistered", "step", "stale", "instance_id", old.ManagedInstanceID)
		}
	}
	if err := os.Remove(file); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("ssm: remove stale registration file: %w", err)
	}
	return nil
}

// renderConfig writes the agent's seelog.xml and amazon-ssm-agent.json. It
// runs before "-register", which reads Ssm.Endpoint too.
func (l *Lifecycle) renderConfig() error {
	seelog, err := RenderSeelog(l.cfg.LogGroup)
	if err != nil {
		return err
	}
	agentCfg, err := RenderAgentConfig(l.cfg.Region, l.cfg.Endpoint)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(l.path(SeelogPath), seelog, 0o644); err != nil {
		return fmt.Errorf("ssm: write seelog config: %w", err)
	}
	if err := writeFileAtomic(l.path(AgentConfigPath), agentCfg, 0o644); err != nil {
		return fmt.Errorf("ssm: write agent config: %w", err)
	}
	l.log.Info("agent config rendered", "step", "config", "seelog", SeelogPath, "agent_config", AgentConfigPath,
		"cloudwatch_log_group", l.cfg.LogGroup, "ssm_endpoint", l.cfg.Endpoint)
	return nil
}

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
// retries may have created (see sweepDuplicates).
type activation struct {
	id, code    string
	name, desc  string
	taskARN     string    // "" when not on ECS
	callStarted time.Time // when the CreateActivation call started
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
// and is not idempotent: an attempt whose response was lost may have
// created an activation nobody knows, so duplicates are swept right away,
// and after a failed call too.
func (l *Lifecycle) createActivation(ctx context.Context) (*activation, error) {
	act := &activation{name: l.instanceName(), callStarted: l.cfg.Clock()}
	subject := act.name
	if l.task != nil {
		subject, act.taskARN = l.task.TaskARN, l.task.TaskARN
	}
	act.desc = activationDescription(subject, newRunID())
	cctx, cancel := l.call(ctx)
	defer cancel()
	out, err := l.api.CreateActivation(cctx, &awsssm.CreateActivationInput{
		IamRole:             aws.String(l.cfg.IAMRole),
		DefaultInstanceName: aws.String(act.name),
		Description:         aws.String(act.desc),
		RegistrationLimit:   aws.Int32(1),
		ExpirationDate:      aws.Time(l.cfg.Clock().Add(l.cfg.ActivationTTL).UTC()),
		Tags:                l.activationTags(),
	})
	if err != nil {
		if !isAccessDenied(err) { // an attempt may have got through
			l.sweepDuplicates(ctx, act)
		}
		return nil, apiError("create activation",
			fmt.Sprintf("ssm:CreateActivation, ssm:AddTagsToResource and iam:PassRole on role %q", l.cfg.IAMRole), err)
	}
	act.id, act.code = aws.ToString(out.ActivationId), aws.ToString(out.ActivationCode)
	if act.id == "" || act.code == "" {
		if act.id != "" {
			l.deleteActivation(ctx, act.id)
		}
		l.sweepDuplicates(ctx, act)
		return nil, fmt.Errorf("ssm: create activation: response without activation id or code")
	}
	l.log.Info("activation created", "step", "activation", "activation_id", act.id, "instance_name", act.name,
		"expires_in", l.cfg.ActivationTTL.String())
	l.sweepDuplicates(ctx, act)
	return act, nil
}

// transientRegistration lists failure texts of "amazon-ssm-agent -register"
// worth another try with the same activation: throttling, server errors and
// network trouble. The activation is unused after such a failure, so a retry
// registers at most once.
var transientRegistration = []string{
	"ThrottlingException", "Rate exceeded", "InternalServerError", "ServiceUnavailable",
	"timeout", "connection refused", "connection reset",
}

const registerAttempts = 6

// register runs registerOnce, retrying transient failures with jittered
// exponential backoff (2s doubling to 32s) inside ctx. candidates collects every id
// an attempt may have created.
func (l *Lifecycle) register(ctx context.Context, activationID, code string) (id string, candidates []string, err error) {
	backoff := 2 * time.Second
	for attempt := 1; ; attempt++ {
		var cands []string
		id, cands, err = l.registerOnce(ctx, activationID, code)
		for _, c := range cands {
			if !slices.Contains(candidates, c) {
				candidates = append(candidates, c)
			}
		}
		if err == nil || attempt == registerAttempts || !isTransientRegistration(err) {
			return id, candidates, err
		}
		wait := backoff/2 + time.Duration(rand.Int64N(int64(backoff)))
		l.log.Warn("registration failed transiently; retrying", "step", "register", "attempt", attempt,
			"retry_in", wait.Round(time.Millisecond).String(), "error", err.Error())
		select {
		case <-ctx.Done():
			return "", candidates, err
		case <-time.After(wait):
		}
		backoff *= 2
	}
}

func isTransientRegistration(err error) bool {
	for _, s := range transientRegistration {
		if strings.Contains(err.Error(), s) {
			return true
		}
	}
	return false
}

// registerOnce runs "amazon-ssm-agent -register -y" and checks its result
// against RegistrationFile. candidates are the ids a failed registration
// may have created.
func (l *Lifecycle) registerOnce(ctx context.Context, activationID, code string) (id string, candidates []string, err error) {
	var reported, failure string
	onLine := func(line string) {
		if i := strings.Index(line, registeredMarker); i >= 0 {
			f := strings.Fields(line[i+len(registeredMarker):])
			if len(f) > 0 {
				reported = f[0]
			}
		}
		if i := strings.Index(line, regFailedMarker); i >= 0 {
			failure = strings.TrimSpace(line[i:])
		}
	}
	cmd := exec.Command(l.agentPath, "-register", "-code", code, "-id", activationID, "-region", l.cfg.Region, "-y")
	p, out, err := l.startLogged(cmd, "register", code, onLine)
	if err != nil {
		return "", nil, fmt.Errorf("ssm: register: start %s: %w", l.cfg.AgentPath, err)
	}
	rctx, cancel := context.WithTimeout(ctx, l.registerTimeout)
	defer cancel()
	select {
	case <-p.Done():
	case <-rctx.Done():
		sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		p.Stop(sctx)
		scancel()
		<-out
		return "", l.registrationCandidates(reported), fmt.Errorf("ssm: register: %w", rctx.Err())
	}
	<-out // bounded by drainDelay
	candidates = l.registrationCandidates(reported)
	if code := p.ExitCode(); code != 0 || failure != "" {
		if failure == "" {
			failure = "no reason given"
		}
		return "", candidates, fmt.Errorf("ssm: register: amazon-ssm-agent exited with code %d: %s", code, failure)
	}
	reg, ferr := readRegistration(l.path(RegistrationFile))
	switch {
	case reported == "":
		return "", candidates, fmt.Errorf("ssm: register: amazon-ssm-agent did not report a managed instance id")
	case ferr != nil:
		return "", candidates, fmt.Errorf("ssm: register: read registration file: %w", ferr)
	case reg.ManagedInstanceID != reported:
		return "", candidates, fmt.Errorf("ssm: register: registration file names %q but amazon-ssm-agent reported %q", reg.ManagedInstanceID, reported)
	case !instanceIDPattern.MatchString(reported):
		return "", candidates, fmt.Errorf("ssm: register: %q is not a managed instance id", reported)
	case reg.Region != l.cfg.Region:
		return "", candidates, fmt.Errorf("ssm: register: registration file names region %q, want %q", reg.Region, l.cfg.Region)
	}
	return reported, candidates, nil
}

// registrationCandidates returns the ids a registration may have created:
// the reported one and the one in the registration file.
func (l *Lifecycle) registrationCandidates(reported string) []string {
	var ids []string
	if instanceIDPattern.MatchString(reported) {
		ids = append(ids, reported)
	}
	if reg, err := readRegistration(l.path(RegistrationFile)); err == nil && instanceIDPattern.MatchString(reg.ManagedInstanceID) {
		ids = append(ids, reg.ManagedInstanceID)
	}
	return ids
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

// tryDeleteActivation deletes id, reporting whether it is gone.
func (l *Lifecycle) tryDeleteActivation(ctx context.Context, id, step string) bool {
	ctx, cancel := l.cleanupContext(ctx)
	defer cancel()
	cctx, ccancel := l.call(ctx)
	defer ccancel()
	_, err := l.api.DeleteActivation(cctx, &awsssm.DeleteActivationInput{ActivationId: aws.String(id)})
	switch code := errorCode(err); {
	case err == nil:
		l.log.Info("activation deleted", "step", step, "activation_id", id)
	case code == "InvalidActivationId" || code == "InvalidActivation":
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
		if l.tryDeleteActivation(ctx, id, step) {
			l.mu.Lock()
			l.pendingActivations = slices.DeleteFunc(l.pendingActivations, func(p string) bool { return p == id })
			l.mu.Unlock()
		}
	}
}

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

// cleanupContext returns ctx bounded by cleanupTimeout or, if ctx is
// already done, a fresh context with that timeout.
func (l *Lifecycle) cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx.Err() != nil {
		ctx = context.WithoutCancel(ctx)
	}
	return context.WithTimeout(ctx, l.cleanupTimeout)
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

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// startAgent starts the long-running agent in its own process group, after
// removing stale IPC channels. The caller must not hold l.mu.
func (l *Lifecycle) startAgent() (Process, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.startAgentLocked()
}

func (l *Lifecycle) startAgentLocked() (Process, error) {
	if err := os.RemoveAll(l.path(IPCDir)); err != nil {
		l.log.Warn("stale agent IPC directory not removed", "step", "agent", "error", err.Error())
	}
	p, out, err := l.startLogged(exec.Command(l.agentPath), "agent", "", nil)
	if err != nil {
		return nil, err
	}
	l.proc, l.procOut, l.procStarted = p, out, l.cfg.Clock()
	l.log.Info("agent started", "step", "agent", "pid", p.Pid(), "instance_id", l.instanceID)
	return p, nil
}

// waitOnline polls DescribeInstanceInformation until id is Online, backing
// off from pollMin to pollMax, for at most ReadyTimeout.
func (l *Lifecycle) waitOnline(ctx context.Context, id string, p Process) error {
	rctx, cancel := context.WithTimeout(ctx, l.cfg.ReadyTimeout)
	defer cancel()
	wait := l.pollMin
	status := "unknown"
	for {
		cctx, ccancel := l.call(rctx)
		out, err := l.api.DescribeInstanceInformation(cctx, &awsssm.DescribeInstanceInformationInput{
			Filters: []types.InstanceInformationStringFilter{{Key: aws.String("InstanceIds"), Values: []string{id}}},
		})
		ccancel()
		switch {
		case isAccessDenied(err):
			return apiError("wait for agent online", "ssm:DescribeInstanceInformation", err)
		case err != nil:
			l.log.Debug("readiness poll failed", "step", "ready", "instance_id", id, "error", err.Error())
		default:
			status = "not listed"
			for _, ii := range out.InstanceInformationList {
				if aws.ToString(ii.InstanceId) == id {
					status = string(ii.PingStatus)
				}
			}
			if status == string(types.PingStatusOnline) {
				return nil
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-p.Done():
			t.Stop()
			return fmt.Errorf("ssm: wait for agent online: amazon-ssm-agent exited with code %d", p.ExitCode())
		case <-rctx.Done():
			t.Stop()
		}
		if rctx.Err() != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("ssm: wait for agent online: %w", ctx.Err())
			}
			return fmt.Errorf("ssm: wait for agent online: instance %s not Online after %v (PingStatus %s): %w",
				id, l.cfg.ReadyTimeout, status, rctx.Err())
		}
		wait = min(wait*2, l.pollMax)
	}
}

// Run watches the agent until ctx is done (then it returns nil) or
// StopAgent is called. An unexpected exit of the agent (any exit code: the
// agent also exits 0 when it fails to start) is logged and followed by a
// restart after a backoff, at most Restarts times in a row; then Run
// returns an error, so the task exits non-zero and ECS replaces it.
func (l *Lifecycle) Run(ctx context.Context) error {
	l.mu.Lock()
	p, started := l.proc, l.procStarted
	l.mu.Unlock()
	if p == nil {
		return errors.New("ssm: run: agent not started")
	}
	restarts := 0
	backoff := l.cfg.RestartBackoff
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.Done():
		}
		if l.isStopping() {
			return nil
		}
		code := p.ExitCode()
		if l.cfg.Clock().Sub(started) >= l.stableAfter {
			restarts, backoff = 0, l.cfg.RestartBackoff
		}
		if restarts >= l.cfg.Restarts {
			l.log.Error("agent exited; no restarts left", "step", "agent", "exit_code", code,
				"restarts", restarts, "instance_id", l.InstanceID())
			return fmt.Errorf("ssm: amazon-ssm-agent exited with code %d after %d restarts", code, restarts)
		}
		restarts++
		l.log.Warn("agent exited unexpectedly; restarting", "step", "agent", "exit_code", code,
			"restart", restarts, "max_restarts", l.cfg.Restarts, "backoff", backoff.String(), "instance_id", l.InstanceID())
		if err := sleepCtx(ctx, backoff); err != nil {
			return nil
		}
		backoff = min(backoff*2, l.maxRestartBackoff)
		l.mu.Lock()
		if l.stopping {
			l.mu.Unlock()
			return nil
		}
		np, err := l.startAgentLocked()
		started = l.procStarted
		l.mu.Unlock()
		if err != nil {
			return fmt.Errorf("ssm: restart agent: %w", err)
		}
		p = np
	}
}

func (l *Lifecycle) isStopping() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stopping
}

// StopAgent stops the agent for shutdown: SIGTERM to its process group,
// SIGKILL when ctx is done (Process.Stop). Run then returns nil. An agent
// that had to be killed is reported as ctx's error.
func (l *Lifecycle) StopAgent(ctx context.Context) error {
	l.mu.Lock()
	l.stopping = true
	p, out := l.proc, l.procOut
	l.mu.Unlock()
	if p == nil {
		return nil
	}
	select {
	case <-p.Done():
		l.log.Info("agent already exited", "step", "stop-agent", "exit_code", p.ExitCode())
		return nil
	default:
	}
	start := time.Now()
	killed, err := p.Stop(ctx)
	if err != nil {
		return fmt.Errorf("ssm: stop agent: %w", err)
	}
	select { // let its last lines through
	case <-out:
	case <-ctx.Done():
	}
	l.log.Info("agent stopped", "step", "stop-agent", "exit_code", p.ExitCode(), "killed", killed,
		"took", time.Since(start).String())
	if killed {
		if cause := context.Cause(ctx); cause != nil {
			return fmt.Errorf("ssm: stop agent: killed: %w", cause)
		}
		return errors.New("ssm: stop agent: killed")
	}
	return nil
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
