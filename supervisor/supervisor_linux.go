package supervisor

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// exitSignalOffset turns a fatal signal into an exit code, as a shell, tini
// and containerd do.
const exitSignalOffset = 128

// reapTick bounds how long a zombie can wait when SIGCHLDs coalesce or the
// signal channel overflowed (tini's sigtimedwait timeout).
const reapTick = time.Second

// Options configures a Supervisor.
type Options struct {
	// Logger receives reaping, signal and shutdown records; nil discards them.
	Logger *slog.Logger
	// DropEnv names variables removed from every child's environment (the
	// secret key variables and the task-role credential variables
	// AWS_CONTAINER_CREDENTIALS_RELATIVE_URI, AWS_CONTAINER_CREDENTIALS_FULL_URI,
	// AWS_CONTAINER_AUTHORIZATION_TOKEN, AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE);
	// matched exactly.
	DropEnv []string
	// OnHangup is called (on the signal loop: it must not block) for each
	// SIGHUP, which asks for a reload; nil = SIGHUP is logged and ignored.
	OnHangup func()
}

// Supervisor is the process's only reaper and signal owner. Create one with
// New, run Run in a goroutine for the life of the process.
type Supervisor struct {
	log      *slog.Logger
	onHangup func()
	drop     map[string]bool

	sigs    chan os.Signal
	running atomic.Bool

	// reapMu is held exclusively around wait4 and shared by Start and
	// Signal: a child is registered before it can be reaped, and never
	// signalled by pid after it was reaped (its pid could be reused).
	reapMu   sync.RWMutex
	mu       sync.Mutex // guards children
	children map[int]*Child

	reapedChildren atomic.Uint64
	reapedOrphans  atomic.Uint64

	shutdown     chan struct{}
	shutdownOnce sync.Once
	force        chan struct{}
	forceOnce    sync.Once
}

// New returns a Supervisor. It installs the signal handlers right away
// (rather than in Run) so a SIGTERM that arrives before Run starts is queued,
// not fatal: without a handler Go exits 2 on SIGTERM. Handlers, not
// signal.Ignore, are used for the terminal signals because SIG_IGN would be
// inherited by every child across exec; a handler is reset to SIG_DFL.
func New(opts Options) *Supervisor {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Supervisor{
		log:      log,
		onHangup: opts.OnHangup,
		drop:     make(map[string]bool, len(opts.DropEnv)),
		sigs:     make(chan os.Signal, 64),
		children: make(map[int]*Child),
		shutdown: make(chan struct{}),
		force:    make(chan struct{}),
	}
	for _, name := range opts.DropEnv {
		s.drop[name] = true
	}
	signal.Notify(s.sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGCHLD,
		syscall.SIGTTIN, syscall.SIGTTOU, syscall.SIGTSTP)
	return s
}

// Shutdown is closed on the first SIGTERM or SIGINT. Repeated signals never
// reopen or restart anything.
func (s *Supervisor) Shutdown() <-chan struct{} { return s.shutdown }

// ForceExit is closed on the third SIGINT (an operator pressing Ctrl-C while
// a shutdown hangs); the binary should then exit ExitForced at once.
func (s *Supervisor) ForceExit() <-chan struct{} { return s.force }

// ReapStats counts processes reaped so far.
type ReapStats struct {
	Children uint64 // started with Start
	Orphans  uint64 // anything else: re-parented grandchildren, leftovers
}

// Stats reports how many processes have been reaped.
func (s *Supervisor) Stats() ReapStats {
	return ReapStats{Children: s.reapedChildren.Load(), Orphans: s.reapedOrphans.Load()}
}

// Run handles signals and reaps until ctx ends, then returns nil. It reaps
// on every SIGCHLD and on a 1 s tick, because signals coalesce and a full
// channel drops them. Run it exactly once, for the life of the process:
// after it returns, exits are only collected while Stop or Sweep wait.
func (s *Supervisor) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("supervisor: Run called twice")
	}
	defer s.running.Store(false)
	tick := time.NewTicker(reapTick)
	defer tick.Stop()
	sigints := 0
	s.reap()
	for {
		select {
		case <-ctx.Done():
			s.reap()
			return nil
		case <-tick.C:
			s.reap()
		case sig := <-s.sigs:
			switch sig {
			case syscall.SIGCHLD:
				s.reap()
			case syscall.SIGTERM, syscall.SIGINT:
				first := false
				s.shutdownOnce.Do(func() { close(s.shutdown); first = true })
				if sig == syscall.SIGINT {
					sigints++
				}
				switch {
				case sigints >= 3:
					s.log.Warn("supervisor: third SIGINT, forcing exit", "signal", sig.String())
					s.forceOnce.Do(func() { close(s.force) })
				case first:
					s.log.Info("supervisor: shutdown requested", "signal", sig.String())
				default:
					s.log.Info("supervisor: already shutting down", "signal", sig.String())
				}
			case syscall.SIGHUP:
				// Handled in any case, so that it cannot kill us.
				if s.onHangup == nil {
					s.log.Info("supervisor: SIGHUP ignored")
					break
				}
				s.log.Info("supervisor: SIGHUP: reload requested")
				s.onHangup()
			default:
				// SIGTTIN/SIGTTOU/SIGTSTP: an init must not stop.
				s.log.Debug("supervisor: terminal signal dropped", "signal", sig.String())
			}
		}
	}
}

// reap collects every exited child with wait4(-1, WNOHANG) until none is
// left. It is the only wait4 caller in the program (STYLE point 8).
func (s *Supervisor) reap() {
	s.reapMu.Lock()
	defer s.reapMu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ECHILD), err == nil && pid <= 0:
			// ECHILD here only means "no children at all".
			return
		case err != nil:
			s.log.Error("supervisor: wait4 failed", "err", err)
			return
		}
		code := exitCode(ws)
		s.mu.Lock()
		c := s.children[pid]
		delete(s.children, pid)
		s.mu.Unlock()
		if c == nil {
			s.reapedOrphans.Add(1)
			s.log.Debug("supervisor: reaped orphan", "pid", pid, "exit_code", code)
			continue
		}
		s.reapedChildren.Add(1)
		c.exited(code)
	}
}

// exitCode is the one place a wait status becomes an exit code.
func exitCode(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return exitSignalOffset + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// waitFor waits for done, driving reap itself on a short tick so that it also
// works when Run is not running (before it starts or after it returned).
func (s *Supervisor) waitFor(ctx context.Context, done <-chan struct{}) bool {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-done:
			return true
		case <-ctx.Done():
			select {
			case <-done:
				return true
			default:
				return false
			}
		case <-t.C:
			s.reap()
		}
	}
}
