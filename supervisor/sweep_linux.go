package supervisor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
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
	var res SweepResult
	self := os.Getpid()
	pid1 := self == 1
	signalled := make(map[procKey]bool)

	// signalAll sends sig to everything and returns what /proc shows alive.
	signalAll := func(sig syscall.Signal, count *int) ([]procInfo, error) {
		procs, err := descendants(self, pid1)
		if err != nil {
			return nil, err
		}
		alive := procs[:0]
		for _, p := range procs {
			if p.state != 'Z' && p.state != 'X' {
				alive = append(alive, p)
			}
		}
		if pid1 {
			if err := unix.Kill(-1, sig); err != nil && !errors.Is(err, unix.ESRCH) {
				return nil, fmt.Errorf("supervisor: kill(-1, %v): %w", sig, err)
			}
			*count += len(alive)
			return alive, nil
		}
		for _, p := range alive {
			if err := p.signal(sig); err != nil {
				return nil, err
			}
			*count++
		}
		return alive, nil
	}
	// termNew sends TERM+CONT to processes not signalled yet: everything in
	// the first round, then anything forked or re-parented since. As PID 1
	// the first round is kill(-1), which also reaches what /proc cannot show.
	first := true
	termNew := func() (bool, error) {
		procs, err := descendants(self, pid1)
		if err != nil {
			return false, err
		}
		for _, p := range procs {
			if p.state == 'Z' || p.state == 'X' || signalled[p.key()] {
				continue
			}
			signalled[p.key()] = true
			res.Signalled++
			if pid1 && first {
				continue
			}
			if err := p.signal(syscall.SIGTERM); err != nil {
				return true, err
			}
			if err := p.signal(syscall.SIGCONT); err != nil {
				return true, err
			}
		}
		if pid1 && first {
			for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGCONT} {
				if err := unix.Kill(-1, sig); err != nil && !errors.Is(err, unix.ESRCH) {
					return true, fmt.Errorf("supervisor: kill(-1, %v): %w", sig, err)
				}
			}
		}
		first = false
		return len(procs) > 0 || (pid1 && anyLeft()), nil
	}

	start := time.Now()
	gctx, cancel := context.WithTimeout(ctx, grace)
	defer cancel()
	tick := time.NewTicker(sweepPoll)
	defer tick.Stop()
	for {
		s.reap()
		left, err := termNew()
		if err != nil {
			return res, err
		}
		if !left {
			s.log.Info("supervisor: sweep done", "signalled", res.Signalled, "duration_ms", time.Since(start).Milliseconds())
			return res, nil
		}
		select {
		case <-gctx.Done():
		case <-tick.C:
			continue
		}
		break
	}

	alive, err := signalAll(syscall.SIGKILL, &res.Killed)
	if err != nil {
		return res, err
	}
	s.log.Warn("supervisor: sweep grace over, killed leftovers", "signalled", res.Signalled, "killed", len(alive))
	deadline := time.Now().Add(killWait)
	for {
		s.reap()
		procs, err := descendants(self, pid1)
		if err != nil {
			return res, err
		}
		if len(procs) == 0 && (!pid1 || !anyLeft()) {
			return res, nil
		}
		if time.Now().After(deadline) {
			res.Remaining = len(procs)
			return res, fmt.Errorf("supervisor: sweep: %d processes left after SIGKILL", len(procs))
		}
		// Anything forked between the walk and the kill gets killed too.
		if _, err := signalAll(syscall.SIGKILL, new(int)); err != nil {
			return res, err
		}
		time.Sleep(sweepPoll)
	}
}

// anyLeft reports, for PID 1, whether any other process exists in the
// namespace, zombies included; it does not depend on /proc.
func anyLeft() bool {
	return !errors.Is(unix.Kill(-1, 0), unix.ESRCH)
}

type procKey struct {
	pid   int
	start uint64
}

type procInfo struct {
	pid, ppid int
	state     byte
	start     uint64 // starttime in clock ticks since boot: pid + start names one process
}

func (p procInfo) key() procKey { return procKey{p.pid, p.start} }

// signal sends sig through a pidfd opened after confirming, by start time,
// that the pid still names the process we listed.
func (p procInfo) signal(sig syscall.Signal) error {
	fd, err := unix.PidfdOpen(p.pid, 0)
	if errors.Is(err, unix.ENOSYS) {
		// Kernels before 5.3: accept the small pid-reuse window.
		if err := unix.Kill(p.pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("supervisor: signal %v to %d: %w", sig, p.pid, err)
		}
		return nil
	}
	if err != nil {
		return nil // gone (ESRCH) or not ours to signal any more
	}
	defer unix.Close(fd)
	now, err := readStat(p.pid)
	if err != nil || now.start != p.start {
		return nil
	}
	if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("supervisor: signal %v to %d: %w", sig, p.pid, err)
	}
	return nil
}

// descendants lists the processes Sweep is responsible for: as PID 1 every
// process in /proc but us, otherwise those whose parent chain reaches self.
// A /proc that is not our namespace's (PID 1 without --mount-proc) lists
// nothing for PID 1, which then relies on kill(-1) alone.
func descendants(self int, pid1 bool) ([]procInfo, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("supervisor: list /proc: %w", err)
	}
	if pid1 {
		if me, err := os.Readlink("/proc/self"); err != nil || me != "1" {
			return nil, nil
		}
	}
	all := make(map[int]procInfo, len(entries))
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		p, err := readStat(pid)
		if err != nil {
			continue // exited meanwhile
		}
		all[pid] = p
	}
	out := make([]procInfo, 0, len(all))
	for _, p := range all {
		if pid1 || leadsTo(all, p, self) {
			out = append(out, p)
		}
	}
	return out, nil
}

func leadsTo(all map[int]procInfo, p procInfo, self int) bool {
	for range len(all) + 1 { // bounded: /proc is not an atomic snapshot
		if p.ppid == self {
			return true
		}
		next, ok := all[p.ppid]
		if !ok {
			return false
		}
		p = next
	}
	return false
}

// readStat parses /proc/<pid>/stat. The command name may contain spaces and
// parentheses, so fields are counted from the last ')'.
func readStat(pid int) (procInfo, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procInfo{}, err
	}
	return parseStat(pid, b)
}

func parseStat(pid int, b []byte) (procInfo, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procInfo{}, fmt.Errorf("supervisor: malformed /proc/%d/stat", pid)
	}
	// After ')': state(3) ppid(4) … starttime(22).
	f := bytes.Fields(b[i+1:])
	if len(f) < 20 {
		return procInfo{}, fmt.Errorf("supervisor: malformed /proc/%d/stat", pid)
	}
	ppid, err := strconv.Atoi(string(f[1]))
	if err != nil {
		return procInfo{}, fmt.Errorf("supervisor: /proc/%d/stat ppid: %w", pid, err)
	}
	start, err := strconv.ParseUint(string(f[19]), 10, 64)
	if err != nil {
		return procInfo{}, fmt.Errorf("supervisor: /proc/%d/stat starttime: %w", pid, err)
	}
	return procInfo{pid: pid, ppid: ppid, state: f[0][0], start: start}, nil
}
