package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-dev/bastion/authkeys"
	"github.com/bastion-dev/bastion/entrypoint"
	"github.com/bastion-dev/bastion/internal/membudget"
	"github.com/bastion-dev/bastion/internal/procs"
	"github.com/bastion-dev/bastion/notify"
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

// newLogger writes one JSON object per line (format "json", for log
// shipping) or key=value text (format "text", for a terminal).
func newLogger(level slog.Level, format string) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "text" {
		return slog.New(slog.NewTextHandler(os.Stdout, opts))
	}
	return slog.New(slog.NewJSONHandler(os.Stdout, opts))
}

// run is the container entrypoint: load the config, start the supervisor,
// the SSH server and (with SSM) the agent, wait for a reason to stop, then
// shut down in order. It returns the exit code.
func run() int {
	setupErr := supervisor.Setup(supervisor.SetupOptions{HideEnv: entrypoint.SecretVars})
	cfg, err := entrypoint.Load()
	if err != nil {
		newLogger(slog.LevelInfo, "json").Error("bad configuration", "error", err.Error())
		return supervisor.ExitConfig
	}
	log := newLogger(cfg.LogLevel, cfg.Env.LogFormat)
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
	gcTuner   *membudget.GCTuner // nil when GOGC is set
	// runStateFile tells the healthcheck the address and host key.
	runStateFile string

	// keys re-reads the authorized keys from Secrets Manager or a file;
	// nil without a live source. SIGHUP reloads it.
	keys atomic.Pointer[authkeys.Watcher]
	// notifier posts session starts to BASTION_NOTIFY_URL; nil without.
	notifier   *notify.Notifier
	notifyStop context.CancelFunc
	notifyDone chan struct{}
	// ssmAPI is the SSM client once SSM started: session owners are looked
	// up with it.
	ssmAPI   atomic.Value // ssm.API
	owners   *sessionOwners
	lc       *ssm.Lifecycle // nil without SSM; kept after a failed Start, to undo it
	agentErr chan error

	// termAt is when the first SIGTERM (or SIGINT) arrived, valid once
	// termSeen is closed: the stop budget counts from there on every path.
	termAt   time.Time
	termSeen chan struct{}
	// startCtx ends with it too: what start-up waits for (a first key
	// read, SSM's Start) stops there.
	startCtx context.Context
}

// startBastion starts the supervisor: signals, reaping, and the forced
// exit on a third SIGINT.
func startBastion(cfg *entrypoint.Config, log *slog.Logger) *bastion {
	drop := append([]string(nil), entrypoint.SecretVars...)
	if !cfg.Env.AgentTaskRole {
		drop = append(drop, taskRoleVars...)
	}
	b := &bastion{}
	*b = bastion{
		cfg: cfg,
		log: log,
		sup: supervisor.New(supervisor.Options{Logger: log, DropEnv: drop, OnHangup: func() {
			if w := b.keys.Load(); w != nil {
				w.Reload()
			}
		}}),
		supDone:  make(chan error, 1),
		serveErr: make(chan error, 1),
		agentErr: make(chan error, 1),
		termSeen: make(chan struct{}),
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	startCtx, endStart := context.WithCancel(b.ctx)
	b.startCtx = startCtx
	if cfg.SSM {
		// The principals behind SSM sessions, for the audit lines and the
		// notifications.
		b.owners = newSessionOwners(b.ctx, log, sessionOwnerTimeout, func(ctx context.Context, id string) (string, error) {
			api, _ := b.ssmAPI.Load().(ssm.API)
			if api == nil {
				return "", errors.New("the SSM client is not ready yet")
			}
			return ssm.SessionOwner(ctx, api, id)
		})
	}
	go func() { b.supDone <- b.sup.Run(b.ctx) }()
	if _, ok := os.LookupEnv("GOMAXPROCS"); !ok {
		// The runtime's default (CPUs or quota) is the most it uses.
		sc := &procs.Scaler{Changed: func(from, to int, used float64) {
			log.Debug("processors", "from", from, "to", to, "cpu_used", used)
		}}
		go sc.Run(b.ctx)
	}
	go func() {
		select {
		case <-b.sup.Shutdown():
			b.termAt = time.Now()
			close(b.termSeen)
			endStart()
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
	keys, err := b.startKeys()
	if err != nil {
		b.log.Error("authorized keys", "error", err.Error())
		return supervisor.ExitConfig
	}
	if err := b.startNotifier(); err != nil {
		b.log.Error("notifications", "error", err.Error())
		return supervisor.ExitConfig
	}
	if err := b.startSSH(keys); err != nil {
		b.log.Error("ssh server", "error", err.Error(), "addr", b.cfg.Env.SSHAddr)
		return supervisor.ExitSSH
	}
	if b.cfg.SSM {
		if code := b.startSSM(); code != supervisor.ExitOK {
			return code
		}
	}
	// What start-up left behind (configuration, keys, SDK set-up, SSM's
	// registration) would otherwise stay until the heap reaches the
	// tuner's floor.
	debug.FreeOSMemory()
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

// startKeys reads the live authorized keys, when a source is set, and
// returns the set to start with; the watcher keeps it current from then on.
func (b *bastion) startKeys() ([]sshd.AuthorizedKey, error) {
	e := b.cfg.Env
	if e.KeysSecret == "" && e.KeysFile == "" {
		return b.cfg.AuthorizedKeys, nil
	}
	w, err := authkeys.New(b.ctx, authkeys.Config{
		SecretID: e.KeysSecret,
		File:     e.KeysFile,
		Region:   e.Region,
		Refresh:  e.KeysRefresh,
		Initial:  b.cfg.AuthorizedKeys,
		Decode:   entrypoint.DecodeAuthorizedKeys,
		Logger:   b.log,
	})
	if err != nil {
		return nil, err
	}
	// Reachable by SIGHUP from now on: Start takes a reload while it waits.
	b.keys.Store(w)
	// Without a set to start with this waits for the first good read (a
	// bastion with no keys is useless); SIGTERM ends the wait.
	keys, version, err := w.Start(b.startCtx)
	if err != nil {
		return nil, err
	}
	b.log.Info("authorized keys in force", "version", version, "keys", len(keys))
	return keys, nil
}

// runKeys applies every accepted version to the server until the run ends.
func (b *bastion) runKeys() {
	w := b.keys.Load()
	if w == nil {
		return
	}
	go w.Run(b.ctx, func(keys []sshd.AuthorizedKey, _ string) { b.srv.SetAuthorizedKeys(keys) })
}

// startNotifier starts the webhook notifier when BASTION_NOTIFY_URL is set.
func (b *bastion) startNotifier() error {
	if b.cfg.Env.NotifyURL == "" {
		return nil
	}
	cfg := notify.Config{URL: b.cfg.Env.NotifyURL, Log: b.log, Name: b.cfg.Env.InstanceName}
	if b.owners != nil {
		cfg.PrincipalOf = b.owners.get
	}
	n, err := notify.New(cfg)
	if err != nil {
		return fmt.Errorf("BASTION_NOTIFY_URL: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.notifier, b.notifyStop, b.notifyDone = n, cancel, make(chan struct{})
	go func() {
		defer close(b.notifyDone)
		n.Run(ctx)
	}()
	return nil
}

// startSSH listens and serves in the background.
func (b *bastion) startSSH(keys []sshd.AuthorizedKey) error {
	budget, maxTunnels, reclaimer, tuner := memoryBudget(b.cfg, b.log)
	b.reclaimer, b.gcTuner = reclaimer, tuner
	scfg := sshdConfig(b.cfg, b.log)
	scfg.AuthorizedKeys = keys
	scfg.MaxTunnels = maxTunnels
	scfg.TunnelCount = reclaimer.Note
	scfg.Peers = b.peers()
	if b.notifier != nil {
		scfg.Audit = notifyAudit{b.notifier}
	}
	srv, err := sshd.New(scfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", b.cfg.Env.SSHAddr)
	if err != nil {
		return listenError(b.cfg.Env.SSHAddr, err)
	}
	b.srv = srv // drained at stop only once it serves
	go func() { b.serveErr <- srv.Serve(ln) }()
	b.runKeys()
	hostKey := strings.TrimSpace(string(gossh.MarshalAuthorizedKey(b.cfg.HostSigner.PublicKey())))
	if path, err := writeRunState(runState{PID: os.Getpid(), SSHAddr: ln.Addr().String(), HostKey: hostKey}); err != nil {
		b.log.Warn("bastion healthcheck will report unhealthy: it cannot learn this bastion's host key", "error", err.Error())
	} else {
		b.runStateFile = path
	}
	b.log.Info("bastion started", "pid", os.Getpid(), "ssh_addr", ln.Addr().String(),
		"host_key", gossh.FingerprintSHA256(b.cfg.HostSigner.PublicKey()),
		"host_key_ephemeral", b.cfg.HostKeyEphemeral, "authorized_keys", len(keys),
		"allow", len(b.cfg.Allow), "ssm", b.cfg.SSM, "stop_timeout", b.cfg.Env.StopTimeout.String(),
		"memory_budget", budget.String(), "max_tunnels", maxTunnels)
	return nil
}

// listenError says what to do when BASTION_SSH_ADDR cannot be bound: the
// two usual causes are another process on the port and a port below 1024
// without the right to bind it.
func listenError(addr string, err error) error {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("BASTION_SSH_ADDR %s: address already in use: another process holds this port (stop it, or choose another port, e.g. BASTION_SSH_ADDR=127.0.0.1:2222)", addr)
	case errors.Is(err, syscall.EACCES):
		return fmt.Errorf("BASTION_SSH_ADDR %s: permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE; use a port of 1024 or more (e.g. BASTION_SSH_ADDR=127.0.0.1:2222), or give the binary the capability", addr)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Errorf("BASTION_SSH_ADDR %s: not an address of this host (use one of its addresses, 127.0.0.1, or :PORT for all)", addr)
	}
	return fmt.Errorf("BASTION_SSH_ADDR %s: %w", addr, err)
}

// peers names the process behind loopback connections: bastion's own
// healthcheck always, and with SSM the session workers of the agent bastion
// runs, whose principals are looked up with ssm:DescribeSessions.
func (b *bastion) peers() *peers {
	agent := ""
	if b.cfg.SSM {
		if p, err := exec.LookPath(b.cfg.SSMConfig().AgentPath); err == nil { // as Lifecycle.Start finds it
			if real, err := filepath.EvalSymlinks(p); err == nil {
				p = real
			}
			agent = p
		}
	}
	return newPeers(b.log, agent, b.owners)
}

// sessionOwnerTimeout bounds one principal lookup: the handshake never
// waits for it, so a slow answer only leaves the first lines without it.
const sessionOwnerTimeout = 5 * time.Second

// startSSM runs the lifecycle's Start and then its Run in the background.
// SIGTERM during Start abandons it and is no failure; either way the
// lifecycle is kept, so the stop undoes what Start created.
func (b *bastion) startSSM() int {
	lc, err := startSSM(b.startCtx, b.cfg, b.sup, b.log, func(c ssm.Clients) { b.ssmAPI.Store(c.SSM) })
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
	if b.notifyStop != nil {
		// Its flush (at most notify's FlushTimeout) overlaps the steps.
		b.notifyStop()
	}
	steps, sweep := shutdownSteps(b.cfg, b.srv, b.lc, b.sup, end.Add(-sweepReserve))
	results := supervisor.RunSteps(context.Background(), b.log, time.Until(end.Add(-sweepReserve)), steps)
	supervisor.RunSteps(context.Background(), b.log, time.Until(end), []supervisor.Step{sweep})
	for _, r := range results {
		if r.Name == stepDeregister && r.Err != nil && exit == supervisor.ExitOK {
			exit = supervisor.ExitDeregister
		}
	}
	if b.gcTuner != nil {
		b.gcTuner.Stop()
	}
	if b.reclaimer != nil {
		b.reclaimer.Stop()
	}
	if b.runStateFile != "" {
		os.Remove(b.runStateFile)
	}
	b.cancel()
	if b.notifyDone != nil {
		select {
		case <-b.notifyDone:
		case <-time.After(time.Until(end.Add(exitMargin / 2))):
			b.log.Warn("notifications still flushing at the stop deadline")
		}
	}
	if b.owners != nil {
		b.owners.wait()
	}
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
// BASTION_MAX_TUNNELS is, how many tunnels may be open at once, and the
// collector's pace (unless GOGC is set). The reclaimer returns memory to
// the OS after a burst of tunnels closes.
func memoryBudget(cfg *entrypoint.Config, log *slog.Logger) (membudget.Budget, int, *membudget.Reclaimer, *membudget.GCTuner) {
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
	// The collector's pace follows the budget too, unless GOGC is set.
	var tuner *membudget.GCTuner
	gc := []any{"gc", "GOGC=" + os.Getenv("GOGC")}
	if _, ok := os.LookupEnv("GOGC"); !ok {
		tuner = &membudget.GCTuner{Floor: membudget.HeapFloor(budget)}
		tuner.Start()
		gc = []any{"gc_heap_floor_mib", tuner.Floor >> 20}
	}
	log.Info("memory budget", append([]any{"limit_mib", budget.Limit >> 20, "source", budget.Source,
		"go_memory_limit_mib", goLimit >> 20, "go_memory_limit_from", from,
		"max_tunnels", maxTunnels, "max_tunnels_per_key", sshd.TunnelsPerKey(maxTunnels)}, gc...)...)
	return budget, maxTunnels, &membudget.Reclaimer{}, tuner
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

// startSSM builds the lifecycle and runs its Start until ctx, which
// SIGTERM ends, cuts it short. The lifecycle is returned whenever it
// exists, also with Start's error: its StopAgent and Deregister undo what
// Start did.
func startSSM(ctx context.Context, cfg *entrypoint.Config, sup *supervisor.Supervisor, log *slog.Logger,
	clientsReady func(ssm.Clients)) (*ssm.Lifecycle, error) {
	scfg := cfg.SSMConfig()
	clients, err := ssm.NewClients(ctx, scfg)
	if err != nil {
		return nil, err
	}
	clientsReady(clients)
	lc := ssm.New(scfg, clients, starter{sup}, log)
	return lc, lc.Start(ctx)
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
