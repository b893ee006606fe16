package ssm

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os/exec"
	"slices"
	"sync"
	"time"
)

// Lifecycle registers the container as a managed instance, runs the agent
// and deregisters on shutdown. Start, then Run; on shutdown, or after a
// failed or abandoned Start, StopAgent, then Deregister.
type Lifecycle struct {
	cfg   Config
	api   API
	tasks TaskAPI // nil: no orphan sweep
	start Starter
	log   *slog.Logger

	// root prefixes the fixed paths (RegistrationFile, IPCDir, SeelogPath,
	// AgentConfigPath); "" in production.
	root string
	// Timing knobs, set by New.
	httpClient         *http.Client
	callTimeout        time.Duration // each SDK call, with the SDK's retries
	registerTimeout    time.Duration // amazon-ssm-agent -register
	pollMin, pollMax   time.Duration // readiness polling
	retryMin, retryMax time.Duration // deregistration retries
	watchInterval      time.Duration // Run's check that the instance still exists
	drainDelay         time.Duration // output read after the child was reaped
	stableAfter        time.Duration // run time after which restarts are forgiven
	maxRestartBackoff  time.Duration

	agentPath string // resolved at Start
	// suspect is signalled when the agent's output says its instance is
	// unknown to the service (InvalidInstanceId): Run checks at once.
	suspect chan struct{}

	mu   sync.Mutex
	task *taskMeta
	// What this run created, for Deregister to undo whatever point Start
	// reached: the activation (nil until CreateActivation was tried, or
	// when it was refused outright), its deletes still to do, whether its
	// duplicates were looked for, the instances it registered or may have
	// (ids; instanceID once the registration was checked, so the
	// activation, limited to one, registered nothing else), whether a
	// register process ran (then the registration file is this run's) and
	// what is done.
	act                *activation
	pendingActivations []string
	duplicatesSwept    bool
	ids                []string
	registering        bool
	deregistered       []string
	refusedIDs         []string // deregistration refused (access denied): not retried
	instanceID         string   // the confirmed instance; "" until then

	// The running child: the register process during registration, then
	// the agent.
	proc        Process
	procOut     <-chan struct{}
	procStarted time.Time
	started     bool // Start succeeded: Run may run
	stopping    bool
	gone        bool // the instance disappeared while running
}

// New returns a Lifecycle for cfg (zero fields defaulted, see Config).
// clients are the AWS clients (NewClients), start starts the agent as a
// supervised child, log receives JSON-friendly records; a nil log discards
// them.
func New(cfg Config, clients Clients, start Starter, log *slog.Logger) *Lifecycle {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Lifecycle{
		cfg:               cfg.withDefaults(),
		api:               clients.SSM,
		tasks:             clients.ECS,
		start:             start,
		log:               log,
		httpClient:        &http.Client{Timeout: 5 * time.Second},
		callTimeout:       60 * time.Second,
		registerTimeout:   90 * time.Second,
		pollMin:           time.Second,
		pollMax:           2 * time.Second,
		retryMin:          200 * time.Millisecond,
		retryMax:          time.Second,
		watchInterval:     5 * time.Minute, // the agent's own ping interval
		drainDelay:        drainDelay,
		stableAfter:       10 * time.Minute,
		maxRestartBackoff: 30 * time.Second,
		suspect:           make(chan struct{}, 1),
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
// instance is Online. It never cleans up after itself: whether it fails or
// ctx ends (SIGTERM), StopAgent and Deregister undo what it created (the
// register process or agent, instances, activations, the registration
// file), so that all cleanup runs in the caller's one stop budget, counted
// from SIGTERM. Start returns soon after ctx ends.
func (l *Lifecycle) Start(ctx context.Context) error {
	begin := l.cfg.Clock()
	if err := l.cfg.Validate(); err != nil {
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
	if err := ctx.Err(); err != nil { // the sweep only logs its failures
		return fmt.Errorf("ssm: start: %w", err)
	}
	if err := l.clearStale(ctx); err != nil {
		return err
	}
	if err := l.renderConfig(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil { // nothing sent yet: nothing to undo
		return fmt.Errorf("ssm: start: %w", err)
	}

	act, err := l.createActivation(ctx)
	if err != nil {
		return err
	}
	id, regErr := l.register(ctx, act)
	l.deleteActivation(ctx, act.id) // always; failures are retried later
	// Once per start, after the registration: by now an attempt still in
	// flight when CreateActivation returned has landed.
	l.sweepDuplicates(ctx)
	if regErr != nil {
		return regErr
	}
	l.log.Info("registered", "step", "register", "instance_id", id, "activation_id", act.id)

	p, err := l.startAgent()
	if err != nil {
		return fmt.Errorf("ssm: start agent: %w", err)
	}
	if err := l.waitOnline(ctx, id, p); err != nil {
		return err
	}
	now := l.cfg.Clock()
	l.log.Info("ssm agent online", "step", "ready", "instance_id", id,
		"ready_at", now.UTC().Format(time.RFC3339Nano), "ready_after", now.Sub(begin).String())
	l.retryActivations(ctx, "activation")
	l.mu.Lock()
	l.started = true
	l.mu.Unlock()
	return nil
}

// addInstance records id as an instance this run registered or may have.
func (l *Lifecycle) addInstance(id string) {
	if !instanceIDPattern.MatchString(id) {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !slices.Contains(l.ids, id) {
		l.ids = append(l.ids, id)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
