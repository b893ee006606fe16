package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime/debug"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-dev/bastion/entrypoint"
	"github.com/bastion-dev/bastion/internal/membudget"
	"github.com/bastion-dev/bastion/sshd"
	"github.com/bastion-dev/bastion/ssm"
	"github.com/bastion-dev/bastion/supervisor"
)

// taskRoleVars let a process use bastion's own AWS identity: the ECS task
// role's credential endpoint, and static or profile credentials given to
// the container. Children (amazon-ssm-agent for "-register" and its long
// run, and so every SSM session) lose them unless
// BASTION_AGENT_KEEP_TASK_ROLE is set: the agent uses its own on-prem
// identity, and an SSM shell must not act as the task.
var taskRoleVars = []string{
	"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
	"AWS_CONTAINER_CREDENTIALS_FULL_URI",
	"AWS_CONTAINER_AUTHORIZATION_TOKEN",
	"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
	"AWS_ACCESS_KEY_ID",
	"AWS_SECRET_ACCESS_KEY",
	"AWS_SESSION_TOKEN",
	"AWS_PROFILE",
	"AWS_SHARED_CREDENTIALS_FILE",
	"AWS_CONFIG_FILE", // may hold keys or a credential_process too
	"AWS_WEB_IDENTITY_TOKEN_FILE",
	"AWS_ROLE_ARN",
}

func newLogger(level slog.Level) *slog.Logger {
	return slog.New(slog.NewJSONHandler(os.Stdout, &slog.HandlerOptions{Level: level}))
}

// gcPercent is the garbage collector target unless GOGC is set. x/crypto/ssh
// copies every incoming packet into a fresh allocation (about 32 KiB each in
// bulk transfers); with the default GOGC=100 and a live heap of a few MiB
// that is a GC cycle, plus the scavenger returning and re-faulting pages,
// every few MiB forwarded. At 200, jump-host CPU per GiB measured 29% lower
// and the RSS of 1,000 idle tunnels 15% higher (test/bench, same run).
const gcPercent = 200

// run is the container entrypoint: load the config, start the supervisor,
// the SSH server and (with SSM) the agent, wait for a reason to stop, then
// shut down in order. It returns the exit code.
func run() int {
	setupErr := supervisor.Setup(supervisor.SetupOptions{HideEnv: entrypoint.SecretVars})
	if _, ok := os.LookupEnv("GOGC"); !ok {
		debug.SetGCPercent(gcPercent)
	}
	cfg, err := entrypoint.Load()
	if err != nil {
		newLogger(slog.LevelInfo).Error("bad configuration", "error", err.Error())
		return supervisor.ExitConfig
	}
	log := newLogger(cfg.LogLevel)
	if setupErr != nil {
		log.Warn("init setup incomplete", "error", setupErr.Error())
	}
	for _, w := range cfg.Warnings {
		log.Warn(w.Msg, w.Attrs...)
	}
	b := startBastion(cfg, log)
	exit := b.serve()
	return b.stop(exit)
}

// bastion is one run of the entrypoint: the supervisor, the SSH server and
// the SSM lifecycle, with the channels that report their failures.
type bastion struct {
	cfg *entrypoint.Config
	log *slog.Logger
	sup *supervisor.Supervisor
	// ctx ends when run is over; it stops the supervisor's loop.
	ctx     context.Context
	cancel  context.CancelFunc
	supDone chan error

	srv       *sshd.Server
	serveErr  chan error
	reclaimer *membudget.Reclaimer
	lc        *ssm.Lifecycle // nil without SSM; kept after a failed Start, to undo it
	agentErr  chan error

	// termAt is when the first SIGTERM (or SIGINT) arrived, valid once
	// termSeen is closed: the stop budget counts from there on every path.
	termAt   time.Time
	termSeen chan struct{}
}

// startBastion starts the supervisor: signals, reaping, and the forced
// exit on a third SIGINT.
func startBastion(cfg *entrypoint.Config, log *slog.Logger) *bastion {
	drop := append([]string(nil), entrypoint.SecretVars...)
	if !cfg.Env.AgentTaskRole {
		drop = append(drop, taskRoleVars...)
	}
	b := &bastion{
		cfg:      cfg,
		log:      log,
		sup:      supervisor.New(supervisor.Options{Logger: log, DropEnv: drop}),
		supDone:  make(chan error, 1),
		serveErr: make(chan error, 1),
		agentErr: make(chan error, 1),
		termSeen: make(chan struct{}),
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	go func() { b.supDone <- b.sup.Run(b.ctx) }()
	go func() {
		select {
		case <-b.sup.Shutdown():
			b.termAt = time.Now()
			close(b.termSeen)
		case <-b.ctx.Done():
		}
	}()
	go func() {
		select {
		case <-b.sup.ForceExit():
			log.Warn("forced exit: third interrupt")
			os.Exit(supervisor.ExitForced)
		case <-b.ctx.Done():
		}
	}()
	return b
}

// serve starts the SSH server and the SSM lifecycle, then waits for
// SIGTERM or a failure; it returns the exit code so far.
func (b *bastion) serve() int {
	if err := b.startSSH(); err != nil {
		b.log.Error("ssh server", "error", err.Error(), "addr", b.cfg.Env.SSHAddr)
		return supervisor.ExitSSH
	}
	if b.cfg.SSM {
		if code := b.startSSM(); code != supervisor.ExitOK {
			return code
		}
	}
	select {
	case <-b.sup.Shutdown():
		b.log.Info("shutdown requested")
		return supervisor.ExitOK
	case err := <-b.serveErr:
		b.log.Error("ssh server stopped", "error", err.Error())
		return supervisor.ExitSSH
	case err := <-b.agentErr:
		if err == nil {
			err = errors.New("agent supervision ended")
		}
		b.log.Error("ssm agent failed", "error", err.Error())
		return supervisor.ExitAgent
	}
}

// startSSH listens and serves in the background.
func (b *bastion) startSSH() error {
	budget, maxTunnels, reclaimer := memoryBudget(b.cfg, b.log)
	b.reclaimer = reclaimer
	scfg := sshdConfig(b.cfg, b.log)
	scfg.MaxTunnels = maxTunnels
	scfg.TunnelCount = reclaimer.Note
	srv, err := sshd.New(scfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", b.cfg.Env.SSHAddr)
	if err != nil {
		return err
	}
	b.srv = srv // drained at stop only once it serves
	go func() { b.serveErr <- srv.Serve(ln) }()
	b.log.Info("bastion started", "pid", os.Getpid(), "ssh_addr", ln.Addr().String(),
		"host_key", gossh.FingerprintSHA256(b.cfg.HostSigner.PublicKey()),
		"host_key_ephemeral", b.cfg.HostKeyEphemeral, "authorized_keys", len(b.cfg.AuthorizedKeys),
		"allow", len(b.cfg.Allow), "ssm", b.cfg.SSM, "stop_timeout", b.cfg.Env.StopTimeout.String(),
		"memory_budget", budget.String(), "max_tunnels", maxTunnels)
	return nil
}

// startSSM runs the lifecycle's Start and then its Run in the background.
// SIGTERM during Start abandons it and is no failure; either way the
// lifecycle is kept, so the stop undoes what Start created.
func (b *bastion) startSSM() int {
	lc, err := startSSM(b.ctx, b.cfg, b.sup, b.log)
	b.lc = lc
	switch {
	case err == nil:
		go func() { b.agentErr <- lc.Run(b.ctx) }()
		return supervisor.ExitOK
	case isClosed(b.sup.Shutdown()):
		b.log.Info("ssm start abandoned by shutdown", "error", err.Error())
		return supervisor.ExitOK
	default:
		b.log.Error("ssm start failed", "error", err.Error())
		return supervisor.ExitAgent
	}
}

// The stop plan. ECS sends SIGKILL stopTimeout after SIGTERM, so the whole
// stop must end by then, counted from SIGTERM whatever was running (an
// interrupted Start included):
//
//	SIGTERM ── drain tunnels, stop agent ── deregister ── sweep ── exit ── SIGKILL
//	           (shares by weight, capped    (all that is  (sweep-  (exit-
//	            so deregistration keeps      left)         Reserve) Margin)
//	            ssm.DeregisterFloor)
//
// entrypoint.MinStopTimeoutSSM is the sum of the fixed parts.
const (
	// exitMargin is kept between the end of the steps and SIGKILL.
	exitMargin = time.Second
	// sweepGrace is how long leftover processes get between SIGTERM and
	// SIGKILL; the agent has told its workers to stop already.
	sweepGrace = time.Second
	// sweepReserve is the sweep's real worst case: its grace, then SIGKILL
	// and reaping, which take milliseconds.
	sweepReserve = sweepGrace + 500*time.Millisecond
)

// stop runs the ordered shutdown and returns the exit code: exit, or
// ExitDeregister when all went well but the deregistration failed (a
// failed Start abandoned by SIGTERM included).
func (b *bastion) stop(exit int) int {
	begin := time.Now()
	select {
	case <-b.termSeen:
		begin = b.termAt
	default:
	}
	end := begin.Add(b.cfg.Env.StopTimeout - exitMargin)
	steps, sweep := shutdownSteps(b.cfg, b.srv, b.lc, b.sup, end.Add(-sweepReserve))
	results := supervisor.RunSteps(context.Background(), b.log, time.Until(end.Add(-sweepReserve)), steps)
	supervisor.RunSteps(context.Background(), b.log, time.Until(end), []supervisor.Step{sweep})
	for _, r := range results {
		if r.Name == stepDeregister && r.Err != nil && exit == supervisor.ExitOK {
			exit = supervisor.ExitDeregister
		}
	}
	if b.reclaimer != nil {
		b.reclaimer.Stop()
	}
	b.cancel()
	if err := <-b.supDone; err != nil && !errors.Is(err, context.Canceled) {
		b.log.Warn("supervisor", "error", err.Error())
	}
	b.log.Info("bastion exiting", "code", exit)
	return exit
}

const stepDeregister = "deregister managed instance"

// shutdownSteps is the ordered stop up to deregEnd, and the final sweep.
// Weights are the time each step normally needs, so the budget is cut in
// those proportions; time a step leaves unused passes to the later ones.
// Draining and stopping the agent end early enough that deregistration
// keeps at least ssm.DeregisterFloor, and deregistration, the last of
// them, may use all that is left: it matters more than any of them.
func shutdownSteps(cfg *entrypoint.Config, srv *sshd.Server, lc *ssm.Lifecycle, sup *supervisor.Supervisor,
	deregEnd time.Time) (steps []supervisor.Step, sweep supervisor.Step) {
	optionalEnd := deregEnd
	if lc != nil {
		optionalEnd = deregEnd.Add(-ssm.DeregisterFloor)
	}
	if srv != nil {
		steps = append(steps, supervisor.Step{
			Name:   "drain ssh tunnels",
			Weight: int(cfg.Env.DrainTimeout / time.Millisecond),
			Run: endBy(optionalEnd, func(ctx context.Context) error {
				_, err := srv.Shutdown(ctx)
				return err
			}),
		})
	}
	if lc != nil {
		steps = append(steps,
			supervisor.Step{Name: "stop ssm agent", Weight: 8000, Run: endBy(optionalEnd, lc.StopAgent)},
			supervisor.Step{Name: stepDeregister, Weight: 5000, Run: lc.Deregister},
		)
	}
	sweep = supervisor.Step{
		Name: "sweep remaining processes",
		Run: func(ctx context.Context) error {
			_, err := sup.Sweep(ctx, sweepGrace)
			return err
		},
	}
	return steps, sweep
}

// endBy runs run with a context ending at t at the latest.
func endBy(t time.Time, run func(context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error {
		ctx, cancel := context.WithDeadline(ctx, t)
		defer cancel()
		return run(ctx)
	}
}

func sshdConfig(cfg *entrypoint.Config, log *slog.Logger) sshd.Config {
	e := cfg.Env
	return sshd.Config{
		HostSigners:          []gossh.Signer{cfg.HostSigner},
		AuthorizedKeys:       cfg.AuthorizedKeys,
		Policy:               sshd.Policy{Allow: cfg.Allow},
		Logger:               log,
		HandshakeTimeout:     e.HandshakeTimeout,
		MaxAuthTries:         e.MaxAuthTries,
		MaxStartups:          cfg.MaxStartups,
		MaxStartupsPerSource: cfg.MaxStartupsPerSource,
		MaxTunnelsPerConn:    e.MaxTunnelsPerConn,
		MaxConnectionsPerKey: e.MaxConnectionsPerKey,
		IdleTimeout:          e.IdleTimeout,
		MaxConnectionAge:     e.MaxConnectionAge,
		KeepaliveInterval:    e.KeepaliveInterval,
		KeepaliveCountMax:    e.KeepaliveCountMax,
		DialTimeout:          e.DialTimeout,
		DrainTimeout:         e.DrainTimeout,
	}
}

// memoryBudget sizes the process to the container's memory limit: the Go
// runtime's soft limit (unless GOMEMLIMIT is set) and, unless
// BASTION_MAX_TUNNELS is, how many tunnels may be open at once. The
// reclaimer returns memory to the OS after a burst of tunnels closes.
func memoryBudget(cfg *entrypoint.Config, log *slog.Logger) (membudget.Budget, int, *membudget.Reclaimer) {
	budget, err := membudget.Detect()
	if err != nil {
		// Without a figure, assume a small task rather than none.
		log.Warn("memory limit unknown; assuming 512 MiB", "error", err.Error())
		budget = membudget.Budget{Limit: 512 << 20, Source: "assumed"}
	}
	goLimit, set := membudget.SetGoLimit(budget)
	maxTunnels := cfg.Env.MaxTunnels
	if maxTunnels == 0 {
		maxTunnels = membudget.Tunnels(budget)
	}
	from := "budget"
	if !set {
		from = "GOMEMLIMIT"
	}
	log.Info("memory budget", "limit_mib", budget.Limit>>20, "source", budget.Source,
		"go_memory_limit_mib", goLimit>>20, "go_memory_limit_from", from,
		"max_tunnels", maxTunnels, "max_tunnels_per_key", sshd.TunnelsPerKey(maxTunnels))
	return budget, maxTunnels, &membudget.Reclaimer{}
}

// starter adapts the supervisor to the ssm package's narrow interface.
type starter struct{ sup *supervisor.Supervisor }

func (s starter) Start(cmd *exec.Cmd) (ssm.Process, error) {
	c, err := s.sup.Start(cmd)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// startSSM builds the lifecycle and runs its Start, which SIGTERM cuts
// short. The lifecycle is returned whenever it exists, also with Start's
// error: its StopAgent and Deregister undo what Start did.
func startSSM(ctx context.Context, cfg *entrypoint.Config, sup *supervisor.Supervisor, log *slog.Logger) (*ssm.Lifecycle, error) {
	startCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sup.Shutdown():
			cancel()
		case <-startCtx.Done():
		}
	}()
	scfg := ssmConfig(cfg)
	clients, err := ssm.NewClients(startCtx, scfg)
	if err != nil {
		return nil, err
	}
	lc := ssm.New(scfg, clients, starter{sup}, log)
	return lc, lc.Start(startCtx)
}

// ssmConfig is the lifecycle's part of the configuration.
func ssmConfig(cfg *entrypoint.Config) ssm.Config {
	e := cfg.Env
	endpoint := e.EndpointSSM
	if endpoint == "" {
		endpoint = e.Endpoint
	}
	scfg := ssm.DefaultConfig()
	scfg.Region = e.Region
	scfg.IAMRole = e.InstanceIAMRole
	scfg.InstanceName = e.InstanceName
	scfg.LogGroup = e.LogGroup
	scfg.Tags = cfg.SSMTags
	scfg.RequireAdvancedTier = e.RequireAdvancedTier
	scfg.OrphanSweep = e.OrphanSweep
	scfg.OrphanAfter = e.OrphanAfter
	scfg.ReadyTimeout = e.ReadyTimeout
	scfg.Endpoint = endpoint
	scfg.MetadataURI = e.MetadataURI
	scfg.Restarts = e.AgentRestarts
	if e.AgentRestarts == 0 {
		scfg.Restarts = -1 // ssm: negative = never restart
	}
	return scfg
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
