package supervisor

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// reexecEnv marks the process image that Setup re-executed, so it happens
// at most once; its value is the descriptor of the memfd holding the hidden
// variables, or "-" when there were none.
const reexecEnv = "BASTION_SUPERVISOR_REEXEC"

// SetupOptions say what Setup must do besides the fixed work.
type SetupOptions struct {
	// HideEnv names variables (secrets) that must not stay in the
	// environment the kernel keeps for this process: /proc/<pid>/environ
	// shows the environment a process was exec'd with, to every root
	// process of the container (an SSM shell), whatever os.Unsetenv does
	// later. When one is set, Setup re-executes the binary without them and
	// hands their values over in a memfd, which the new image reads back
	// into its own (Go-side) environment and closes.
	HideEnv []string
}

// Setup prepares the process to be a container init. Call it first in main,
// before any goroutine starts children:
//
//   - if the process inherited blocked signals, or its environment holds a
//     variable of HideEnv, it re-executes itself once, with an empty mask
//     and without those variables (see reexec);
//   - every inherited fd >= 3 is marked close-on-exec, or os/exec would leak
//     it to every child;
//   - when not PID 1 (under tini, docker --init, a shell), the process
//     becomes a child subreaper so orphaned grandchildren are re-parented to
//     it rather than to the real init, as tini -s does.
//
// A step that fails does not skip the others: each is reported.
func Setup(opts SetupOptions) error {
	errs := []error{reexec(opts.HideEnv), markCloexec()}
	if os.Getpid() != 1 {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			errs = append(errs, fmt.Errorf("supervisor: set child subreaper: %w", err))
		}
	}
	return errors.Join(errs...)
}

// reexec re-executes the binary when the signal mask is not empty or a
// hidden variable is in the environment, and in the second image restores
// the hidden variables from the memfd.
//
// The mask: Go hands the signal mask the process started with to every
// child it forks (the blockable part of it, as measured on go1.26), and
// SysProcAttr has no field to clear it; tini restores the mask itself before
// exec (restore_signals). Dispositions need no work: os/exec resets every
// signal with a Go handler to SIG_DFL in the child, and New installs
// handlers for SIGHUP and SIGINT, the only ones Go leaves ignored.
func reexec(hide []string) error {
	if v, ok := os.LookupEnv(reexecEnv); ok {
		// Second image: never loop, whatever the mask says.
		os.Unsetenv(reexecEnv)
		return restoreHidden(v)
	}
	var hidden []string
	for _, name := range hide {
		if v, ok := os.LookupEnv(name); ok {
			hidden = append(hidden, name+"="+v)
		}
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var old unix.Sigset_t
	if err := unix.PthreadSigmask(unix.SIG_BLOCK, nil, &old); err != nil {
		return fmt.Errorf("supervisor: read signal mask: %w", err)
	}
	if old == (unix.Sigset_t{}) && len(hidden) == 0 {
		return nil
	}
	marker := "-"
	if len(hidden) > 0 {
		fd, err := hiddenMemfd(hidden)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		marker = strconv.Itoa(fd)
	}
	env := []string{reexecEnv + "=" + marker}
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(hide, name) {
			env = append(env, kv)
		}
	}
	// exec keeps the calling thread's mask, so clear it on this thread only.
	var empty unix.Sigset_t
	if err := unix.PthreadSigmask(unix.SIG_SETMASK, &empty, nil); err != nil {
		return fmt.Errorf("supervisor: clear signal mask: %w", err)
	}
	err := syscall.Exec("/proc/self/exe", os.Args, env)
	return fmt.Errorf("supervisor: re-exec (empty signal mask, hidden variables): %w", err)
}

// hiddenMemfdName names the memfd, as /proc/PID/fd shows it.
const hiddenMemfdName = "bastion-hidden-env"

// hiddenMemfd writes NAME=VALUE records, NUL-terminated, to a memfd that
// survives exec, and rewinds it.
func hiddenMemfd(hidden []string) (int, error) {
	fd, err := unix.MemfdCreate(hiddenMemfdName, 0)
	if err != nil {
		return -1, fmt.Errorf("supervisor: memfd for hidden variables: %w", err)
	}
	data := []byte(strings.Join(hidden, "\x00") + "\x00")
	for len(data) > 0 {
		n, err := unix.Write(fd, data)
		if err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("supervisor: write hidden variables: %w", err)
		}
		data = data[n:]
	}
	if _, err := unix.Seek(fd, 0, io.SeekStart); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("supervisor: rewind hidden variables: %w", err)
	}
	return fd, nil
}

// restoreHidden reads the variables the first image hid back into this
// process's environment and closes the memfd.
func restoreHidden(marker string) error {
	if marker == "-" {
		return nil
	}
	fd, err := strconv.Atoi(marker)
	if err != nil || fd < 3 {
		return fmt.Errorf("supervisor: %s=%q is not a descriptor", reexecEnv, marker)
	}
	// Only the first image's memfd: a marker copied from another bastion's
	// environment must not make this one read whatever it inherited there.
	if link, err := os.Readlink("/proc/self/fd/" + marker); err != nil || !strings.HasPrefix(link, "/memfd:"+hiddenMemfdName+" ") {
		return fmt.Errorf("supervisor: %s=%q does not name the hidden variables' memfd", reexecEnv, marker)
	}
	f := os.NewFile(uintptr(fd), hiddenMemfdName)
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("supervisor: read hidden variables: %w", err)
	}
	for _, kv := range strings.Split(string(data), "\x00") {
		if name, v, ok := strings.Cut(kv, "="); ok {
			os.Setenv(name, v)
		}
	}
	return nil
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
