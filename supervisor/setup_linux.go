package supervisor

import (
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// reexecEnv marks the process image that Setup re-executed, so it happens at
// most once.
const reexecEnv = "BASTION_SUPERVISOR_REEXEC"

// Setup prepares the process to be a container init. Call it first in main,
// before any goroutine starts children:
//
//   - if the process inherited blocked signals, it re-executes itself once
//     with an empty mask (see resetSignalMask);
//   - every inherited fd >= 3 is marked close-on-exec, or os/exec would leak
//     it to every child;
//   - when not PID 1 (under tini, docker --init, a shell), the process
//     becomes a child subreaper so orphaned grandchildren are re-parented to
//     it rather than to the real init, as tini -s does.
func Setup() error {
	if err := resetSignalMask(); err != nil {
		return err
	}
	if err := markCloexec(); err != nil {
		return err
	}
	if os.Getpid() != 1 {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("supervisor: set child subreaper: %w", err)
		}
	}
	return nil
}

// resetSignalMask re-executes the binary with an empty signal mask when the
// current one is not empty. Go hands the signal mask the process started with
// to every child it forks (the blockable part of it, as measured on go1.26),
// and SysProcAttr has no field to clear it; tini restores the mask itself
// before exec (restore_signals). Dispositions need no work: os/exec resets
// every signal with a Go handler to SIG_DFL in the child, and New installs
// handlers for SIGHUP and SIGINT, the only ones Go leaves ignored.
func resetSignalMask() error {
	if os.Getenv(reexecEnv) != "" {
		// Second image: never loop, whatever the mask says.
		return os.Unsetenv(reexecEnv)
	}
	runtime.LockOSThread()
	var old unix.Sigset_t
	if err := unix.PthreadSigmask(unix.SIG_BLOCK, nil, &old); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("supervisor: read signal mask: %w", err)
	}
	if old == (unix.Sigset_t{}) {
		runtime.UnlockOSThread()
		return nil
	}
	// exec keeps the calling thread's mask, so clear it on this thread only.
	var empty unix.Sigset_t
	if err := unix.PthreadSigmask(unix.SIG_SETMASK, &empty, nil); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("supervisor: clear signal mask: %w", err)
	}
	if err := os.Setenv(reexecEnv, "1"); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("supervisor: re-exec: %w", err)
	}
	err := syscall.Exec("/proc/self/exe", os.Args, os.Environ())
	_ = os.Unsetenv(reexecEnv)
	runtime.UnlockOSThread()
	return fmt.Errorf("supervisor: re-exec with an empty signal mask: %w", err)
}

// markCloexec sets FD_CLOEXEC on every fd >= 3. Go opens its own fds with
// O_CLOEXEC; only inherited ones can leak.
func markCloexec() error {
	err := unix.CloseRange(3, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("supervisor: close_range cloexec: %w", err)
	}
	// Kernels before 5.11: walk the fd table.
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("supervisor: list fds: %w", err)
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < 3 {
			continue
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil {
			continue // the directory's own fd, closed by now
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, flags|unix.FD_CLOEXEC); err != nil {
			return fmt.Errorf("supervisor: mark fd %d close-on-exec: %w", fd, err)
		}
	}
	return nil
}
