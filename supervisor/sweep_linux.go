package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bastion-dev/bastion/internal/procfs"
)

// sweepPoll is how often Sweep reaps and looks for what is left.
const sweepPoll = 20 * time.Millisecond

// SweepResult says what Sweep did.
type SweepResult struct {
	// Signalled counts the processes sent SIGTERM and SIGCONT.
	Signalled int
	// Killed counts those still alive at the end of the grace period and
	// sent SIGKILL.
	Killed int
	// Remaining counts processes still present (zombies included) after
	// SIGKILL and a 2 s wait; 0 unless something is stuck in the kernel.
	Remaining int
}

// Sweep ends every process left in the container except this one: SIGTERM and
// SIGCONT to all, a wait of up to grace (cut short by ctx), then SIGKILL, all
// the while reaping. The SSM agent's workers run in their own process groups
// and sessions, so signalling the agent's group is not enough.
//
// As PID 1, kill(-1, sig) reaches every process in the PID namespace, and
// kill(-1, 0) failing with ESRCH proves none is left. Otherwise (a subreaper
// under tini or a shell) it walks /proc for processes whose parent chain
// leads here and signals each through a pidfd after checking its start time,
// so a recycled pid is never hit. Counts come from /proc in both cases.
func (s *Supervisor) Sweep(ctx context.Context, grace time.Duration) (SweepResult, error) {
	start := time.Now()
	// A process gone from /proc has been waited for, but a reap running
	// beside Sweep (Run's, on SIGCHLD) may not have recorded its exit yet.
	// reap holds its lock until it has, so reaping once more on the way out
	// means every Child that Sweep saw go has its Done closed.
	defer s.reap()
	w := &sweep{self: os.Getpid(), signalled: make(map[procKey]bool)}
	w.pid1 = w.self == 1
	var res SweepResult

	gctx, cancel := context.WithTimeout(ctx, grace)
	defer cancel()
	gone, err := s.terminate(gctx, w, &res)
	switch {
	case err != nil:
		return res, err
	case gone:
		s.log.Info("supervisor: sweep done", "signalled", res.Signalled, "duration_ms", time.Since(start).Milliseconds())
		return res, nil
	}
	return res, s.kill(w, &res)
}

// terminate sends TERM+CONT to every process, then to each one that shows
// up later (forked, or re-parented here), reaping all the while. It reports
// whether none was left before ctx ended.
func (s *Supervisor) terminate(ctx context.Context, w *sweep, res *SweepResult) (gone bool, err error) {
	tick := time.NewTicker(sweepPoll)
	defer tick.Stop()
	for {
		s.reap()
		n, left, err := w.terminateNew()
		res.Signalled += n
		if err != nil {
			return false, err
		}
		if !left {
			return true, nil
		}
		select {
		case <-ctx.Done():
			return false, nil
		case <-tick.C:
		}
	}
}

// kill sends SIGKILL to what is left, and again to anything forked in the
// meantime, until none is left or killWait has passed.
func (s *Supervisor) kill(w *sweep, res *SweepResult) error {
	killed, err := w.signalAlive(syscall.SIGKILL)
	res.Killed = killed
	if err != nil {
		return err
	}
	s.log.Warn("supervisor: sweep grace over, killed leftovers", "signalled", res.Signalled, "killed", killed)
	deadline := time.Now().Add(killWait)
	for {
		s.reap()
		procs, err := w.list()
		if err != nil {
			return err
		}
		if len(procs) == 0 && (!w.pid1 || !anyLeft()) {
			return nil
		}
		if time.Now().After(deadline) {
			res.Remaining = len(procs)
			return fmt.Errorf("supervisor: sweep: %d processes left after SIGKILL", len(procs))
		}
		if _, err := w.signalAlive(syscall.SIGKILL); err != nil {
			return err
		}
		time.Sleep(sweepPoll)
	}
}

// sweep is one Sweep's view of the processes it answers for.
type sweep struct {
	self      int
	pid1      bool
	signalled map[procKey]bool // sent TERM+CONT already
	firstDone bool             // as PID 1: the first round's kill(-1) was sent
}

// list returns the processes the sweep answers for, zombies included.
func (w *sweep) list() ([]procfs.Stat, error) { return descendants(w.self, w.pid1) }

// terminateNew sends TERM+CONT to the live processes not signalled yet and
// returns how many that was and whether any process (zombies included) is
// left. As PID 1 the first round is kill(-1), which also reaches what /proc
// cannot show.
func (w *sweep) terminateNew() (n int, left bool, err error) {
	procs, err := w.list()
	if err != nil {
		return 0, false, err
	}
	byKill := w.pid1 && !w.firstDone
	for _, p := range procs {
		if !p.Alive() || w.signalled[key(p)] {
			continue
		}
		w.signalled[key(p)] = true
		n++
		if byKill {
			continue
		}
		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGCONT} {
			if err := signalProc(p, sig); err != nil {
				return n, true, err
			}
		}
	}
	if byKill {
		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGCONT} {
			if err := killAll(sig); err != nil {
				return n, true, err
			}
		}
		w.firstDone = true
	}
	return n, len(procs) > 0 || (w.pid1 && anyLeft()), nil
}

// signalAlive sends sig to every live process (as PID 1 by kill(-1)) and
// returns how many it reached by /proc's count.
func (w *sweep) signalAlive(sig syscall.Signal) (int, error) {
	procs, err := w.list()
	if err != nil {
		return 0, err
	}
	alive := procs[:0]
	for _, p := range procs {
		if p.Alive() {
			alive = append(alive, p)
		}
	}
	if w.pid1 {
		if err := killAll(sig); err != nil {
			return 0, err
		}
		return len(alive), nil
	}
	n := 0
	for _, p := range alive {
		if err := signalProc(p, sig); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// killAll is kill(-1, sig): every process in the namespace but us.
func killAll(sig syscall.Signal) error {
	if err := unix.Kill(-1, sig); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("supervisor: kill(-1, %v): %w", sig, err)
	}
	return nil
}

// anyLeft reports, for PID 1, whether any other process exists in the
// namespace, zombies included; it does not depend on /proc.
func anyLeft() bool {
	return !errors.Is(unix.Kill(-1, 0), unix.ESRCH)
}

// procKey names one process: a pid and its start time, so a recycled pid is
// a different key.
type procKey struct {
	pid   int
	start uint64
}

func key(p procfs.Stat) procKey { return procKey{p.PID, p.StartTime} }

// signalProc sends sig through a pidfd opened after confirming, by start time,
// that the pid still names the process we listed.
func signalProc(p procfs.Stat, sig syscall.Signal) error {
	fd, err := unix.PidfdOpen(p.PID, 0)
	if errors.Is(err, unix.ENOSYS) {
		// Kernels before 5.3: accept the small pid-reuse window.
		if err := unix.Kill(p.PID, sig); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("supervisor: signal %v to %d: %w", sig, p.PID, err)
		}
		return nil
	}
	if err != nil {
		return nil // gone (ESRCH) or not ours to signal any more
	}
	defer unix.Close(fd)
	now, err := procfs.ReadStat(p.PID)
	if err != nil || now.StartTime != p.StartTime {
		return nil
	}
	if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("supervisor: signal %v to %d: %w", sig, p.PID, err)
	}
	return nil
}

// descendants lists the processes Sweep is responsible for: as PID 1 every
// process in /proc but us, otherwise those whose parent chain reaches self.
// A /proc that is not our namespace's (PID 1 without --mount-proc) lists
// nothing for PID 1, which then relies on kill(-1) alone.
func descendants(self int, pid1 bool) ([]procfs.Stat, error) {
	if pid1 {
		if me, err := os.Readlink("/proc/self"); err != nil || me != "1" {
			return nil, nil
		}
	}
	procs, err := procfs.All()
	if err != nil {
		return nil, fmt.Errorf("supervisor: %w", err)
	}
	all := make(map[int]procfs.Stat, len(procs))
	for _, p := range procs {
		if p.PID != self {
			all[p.PID] = p
		}
	}
	out := make([]procfs.Stat, 0, len(all))
	for _, p := range all {
		if pid1 || leadsTo(all, p, self) {
			out = append(out, p)
		}
	}
	return out, nil
}

func leadsTo(all map[int]procfs.Stat, p procfs.Stat, self int) bool {
	for range len(all) + 1 { // bounded: /proc is not an atomic snapshot
		if p.PPID == self {
			return true
		}
		next, ok := all[p.PPID]
		if !ok {
			return false
		}
		p = next
	}
	return false
}
