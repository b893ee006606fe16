// Package supervisor makes bastion a container init (PID 1): it reaps every
// zombie, turns signals into a shutdown request, starts and stops supervised
// children, sweeps leftover processes and runs the ordered, budgeted shutdown.
//
// The model follows two inits we trust:
//
//   - krallin/tini (src/tini.c): one loop waits for a signal with a 1 s
//     timeout and then calls waitpid(-1, WNOHANG) until nothing is left;
//     SIGCHLD only triggers reaping; a signaled child exits 128+signal; when
//     not PID 1 the process registers as a child subreaper; children get the
//     signal mask and dispositions back before exec.
//   - containerd (pkg/sys/reaper/reaper_unix.go): exactly one owner calls
//     wait4(-1, …); a caller subscribes before cmd.Start so no exit is missed,
//     and learns the status from the reaper, never from cmd.Wait.
//
// Exactly one function in the program, reap, calls wait4; every call is
// serialised by one lock. Go's os.Process uses a pidfd on Linux, so a late
// exec.Cmd.Wait would only ever see ECHILD: callers of Start must never call
// cmd.Wait.
package supervisor

// Exit codes of the bastion binary, documented in one place.
const (
	// ExitOK: clean shutdown after SIGTERM/SIGINT.
	ExitOK = 0
	// ExitConfig: bad configuration; the binary prints a one-line reason.
	// sysexits' EX_CONFIG, not 2: the Go runtime exits 2 on a panic or an
	// unhandled signal, and the two must not look alike.
	ExitConfig = 78
	// ExitSSH: the SSH server failed (e.g. could not listen).
	ExitSSH = 3
	// ExitAgent: the SSM agent could not be registered, started, or exited
	// unexpectedly.
	ExitAgent = 4
	// ExitDeregister: shutdown completed but the managed instance could not
	// be deregistered.
	ExitDeregister = 5
	// ExitForced: the operator pressed Ctrl-C three times (128+SIGINT);
	// shutdown was abandoned.
	ExitForced = 130
)
