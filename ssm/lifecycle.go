package ssm

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os/exec"
	"sync"
	"time"
)

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
	if err := l.clearStale(ctx); err != nil {
		return err
	}
	if err := l.renderConfig(); err != nil {
		return err
	}

	act, err := l.createActivation(ctx)
	if err != nil {
		if act != nil {
			l.sweepDuplicates(ctx, act)
		}
		return err
	}
	activationID := act.id
	id, candidates, regErr := l.register(ctx, activationID, act.code)
	l.deleteActivation(ctx, activationID) // always; failures are logged
	// Once per start, after the registration: by now an attempt still in
	// flight when CreateActivation returned has landed.
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

// cleanupContext returns ctx bounded by cleanupTimeout or, if ctx is
// already done, a fresh context with that timeout.
func (l *Lifecycle) cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx.Err() != nil {
		ctx = context.WithoutCancel(ctx)
	}
	return context.WithTimeout(ctx, l.cleanupTimeout)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
