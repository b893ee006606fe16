package supervisor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/bastion-dev/bastion/internal/procfs"
)

// helperOrphans: 100 double-forked grandchildren (plain, setsid, own process
// group) are re-parented to us and reaped; no zombie is left.
func helperOrphans(h *helper) int {
	s := h.init()
	var bit int
	if err := unix.Prctl(unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(&bit)), 0, 0, 0); err != nil {
		h.failf("PR_GET_CHILD_SUBREAPER: %v", err)
	}
	pid1 := os.Getpid() == 1
	h.metric("pid1", pid1)
	h.metric("subreaper", bit)
	if pid1 == (bit == 1) {
		h.failf("pid1=%v but subreaper=%d: subreaper only when not PID 1", pid1, bit)
	}

	const n = 100
	start := time.Now()
	kids := make([]*Child, 0, n)
	for i := range n {
		var cmd *exec.Cmd
		switch i % 3 {
		case 0:
			cmd = sh("(sleep 0.2 &) ; exit 0")
		case 1:
			cmd = sh("(setsid sleep 0.2 &) ; exit 0")
		case 2: // the grandchild inherits a process group that is not ours
			cmd = sh("(sleep 0.2 &) ; exit 0")
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		}
		c, err := s.Start(cmd)
		if err != nil {
			h.failf("start %d: %v", i, err)
			continue
		}
		kids = append(kids, c)
	}
	for _, c := range kids {
		if h.wait(c, 10*time.Second) && c.ExitCode() != 0 {
			h.failf("pid %d exit %d, want 0", c.Pid(), c.ExitCode())
		}
	}
	zombiesSeen := 0
	end := time.Now().Add(10 * time.Second)
	for s.Stats().Orphans < n && time.Now().Before(end) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := s.Stats().Orphans; got < n {
		h.failf("reaped %d orphans, want >= %d; left: %s", got, n, describe(others()))
	}
	left, ok := waitProcs(3*time.Second, func(p []procfs.Stat) bool { return len(p) == 0 })
	for _, p := range left {
		if p.State == 'Z' {
			zombiesSeen++
		}
	}
	if !ok {
		h.failf("processes left (%d zombies): %s", zombiesSeen, describe(left))
	}
	h.metric("orphans_reaped", s.Stats().Orphans)
	h.metric("children_reaped", s.Stats().Children)
	h.metric("elapsed_ms", time.Since(start).Milliseconds())
	return 0
}

// helperMany: 1,000 short children with varied exit statuses, run 8 at a
// time, while a goroutine keeps making orphans that the same reaper takes.
func helperMany(h *helper) int {
	s := h.init()
	ctx, stop := context.WithCancel(context.Background())
	var orphanRuns int
	orphansDone := make(chan struct{})
	go func() { // orphan maker
		defer close(orphansDone)
		for ctx.Err() == nil {
			c, err := s.Start(sh("(true &) ; (true &) ; exit 0"))
			if err != nil {
				h.failf("orphan maker: %v", err)
				return
			}
			h.wait(c, 10*time.Second)
			orphanRuns++
		}
	}()

	type job struct {
		cmd  *exec.Cmd
		want int
	}
	mk := func(i int) job {
		switch i % 5 {
		case 0:
			return job{exec.Command("true"), 0}
		case 1:
			return job{exec.Command("false"), 1}
		case 2:
			return job{sh("kill -TERM $$"), 128 + int(syscall.SIGTERM)}
		case 3:
			return job{sh("kill -KILL $$"), 128 + int(syscall.SIGKILL)}
		default:
			n := (i * 7) % 256
			return job{sh(fmt.Sprintf("exit %d", n)), n}
		}
	}
	const runs, workers = 1000, 8
	start := time.Now()
	jobs := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				j := mk(i)
				c, err := s.Start(j.cmd)
				if err != nil {
					h.failf("run %d: start: %v (ECHILD=%v)", i, err, errors.Is(err, syscall.ECHILD))
					continue
				}
				if !h.wait(c, 20*time.Second) {
					continue
				}
				if got := c.ExitCode(); got != j.want {
					h.failf("run %d (%v): exit %d, want %d", i, j.cmd.Args, got, j.want)
				}
				mu.Lock()
				codes[c.ExitCode()]++
				mu.Unlock()
			}
		}()
	}
	for i := range runs {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start)
	stop()
	<-orphansDone
	if _, ok := waitProcs(5*time.Second, func(p []procfs.Stat) bool { return len(p) == 0 }); !ok {
		h.failf("processes left: %s", describe(others()))
	}
	st := s.Stats()
	if st.Orphans == 0 {
		h.failf("no orphan reaped during the runs")
	}
	h.metric("runs", runs)
	h.metric("distinct_codes", len(codes))
	h.metric("orphan_maker_runs", orphanRuns)
	h.metric("orphans_reaped", st.Orphans)
	h.metric("children_reaped", st.Children)
	h.metric("elapsed_ms", elapsed.Milliseconds())
	return 0
}

// helperBadMarker: a re-exec marker that names no memfd (copied from
// another bastion's environment) is an error, and Setup's other steps run
// all the same: inherited fds become close-on-exec, the subreaper is set.
func helperBadMarker(h *helper) int {
	leak, err := syscall.Open("/dev/null", syscall.O_RDONLY, 0) // no O_CLOEXEC on purpose
	if err != nil {
		h.failf("open: %v", err)
	}
	os.Setenv(reexecEnv, strconv.Itoa(leak))
	err = Setup(SetupOptions{})
	if err == nil || !strings.Contains(err.Error(), "does not name the hidden variables' memfd") {
		h.failf("Setup with a foreign marker: %v", err)
	}
	if fl, _ := unix.FcntlInt(uintptr(leak), unix.F_GETFD, 0); fl&unix.FD_CLOEXEC == 0 {
		h.failf("Setup left fd %d inheritable after the marker failed", leak)
	}
	if os.Getpid() != 1 {
		var on int32
		if err := unix.Prctl(unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(&on)), 0, 0, 0); err != nil || on != 1 {
			h.failf("not a subreaper after the marker failed: %d %v", on, err)
		}
	}
	return 0
}

// helperChildEnv: children have an empty signal mask, nothing ignored, fds
// 0-2 only (an fd leaked to us without CLOEXEC included), and no DropEnv
// variable.
func helperChildEnv(h *helper) int {
	h.metric("reexecuted", os.Getenv(reexecEnv) != "")
	leak, err := syscall.Open("/dev/null", syscall.O_RDONLY, 0) // no O_CLOEXEC on purpose
	if err != nil {
		h.failf("open: %v", err)
	}
	if fl, _ := unix.FcntlInt(uintptr(leak), unix.F_GETFD, 0); fl&unix.FD_CLOEXEC != 0 {
		h.failf("fd %d already close-on-exec: test proves nothing", leak)
	}
	for _, name := range dropped {
		os.Setenv(name, "secret-"+name)
	}
	os.Setenv("KEEP_ME", "1")
	if err := Setup(SetupOptions{}); err != nil {
		h.failf("Setup: %v", err)
	}
	if fl, _ := unix.FcntlInt(uintptr(leak), unix.F_GETFD, 0); fl&unix.FD_CLOEXEC == 0 {
		h.failf("Setup left fd %d inheritable", leak)
	}
	s := h.start()

	extra, err := os.Open("/dev/null")
	if err != nil {
		h.failf("open: %v", err)
	}
	cases := []struct {
		name    string
		cmd     *exec.Cmd
		wantFds []string
	}{
		{"plain", exec.Command("sleep", "10"), []string{"0", "1", "2"}},
		{"setpgid", func() *exec.Cmd {
			c := exec.Command("sleep", "10")
			c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			return c
		}(), []string{"0", "1", "2"}},
		{"file output", func() *exec.Cmd {
			c := exec.Command("sleep", "10")
			c.Stdout, c.Stderr = os.Stderr, os.Stderr
			return c
		}(), []string{"0", "1", "2"}},
		{"explicit env", func() *exec.Cmd {
			c := exec.Command("sleep", "10")
			c.Env = append(os.Environ(), "AWS_CONTAINER_AUTHORIZATION_TOKEN=x")
			return c
		}(), []string{"0", "1", "2"}},
		{"extra files", func() *exec.Cmd {
			c := exec.Command("sleep", "10")
			c.ExtraFiles = []*os.File{extra}
			return c
		}(), []string{"0", "1", "2", "3"}},
	}
	for _, tc := range cases {
		c, err := s.Start(tc.cmd)
		if err != nil {
			h.failf("%s: start: %v", tc.name, err)
			continue
		}
		pid := c.Pid()
		// Start can return while the kernel is still inside execve closing
		// close-on-exec fds (CLONE_VFORK resumes us at exec_mmap), so give a
		// close-on-exec fd a moment to go; a leaked one never does.
		var fds []string
		for range 100 {
			fds = fds[:0]
			ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
			if err != nil {
				h.failf("%s: %v", tc.name, err)
			}
			for _, e := range ents {
				fds = append(fds, e.Name())
			}
			sort.Strings(fds)
			if slices.Equal(fds, tc.wantFds) {
				break
			}
			time.Sleep(time.Millisecond)
		}
		if !slices.Equal(fds, tc.wantFds) {
			l3, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/3", pid))
			h.failf("%s: child fds %v, want %v (child fd 3 = %q)", tc.name, fds, tc.wantFds, l3)
		}
		for _, f := range []string{"SigBlk", "SigIgn"} {
			m, err := statusMask(pid, f)
			if err != nil || m != 0 {
				h.failf("%s: child %s = %016x (%v), want 0", tc.name, f, m, err)
			}
		}
		// Likewise the new image's environment is set up late in execve.
		var env []byte
		for range 100 {
			if env, err = os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid)); err != nil || len(env) > 0 {
				break
			}
			time.Sleep(time.Millisecond)
		}
		if err != nil {
			h.failf("%s: %v", tc.name, err)
		}
		vars := strings.Split(string(env), "\x00")
		for _, name := range dropped {
			for _, kv := range vars {
				if strings.HasPrefix(kv, name+"=") {
					h.failf("%s: child environment has %s", tc.name, name)
				}
			}
		}
		if !slices.Contains(vars, "KEEP_ME=1") {
			h.failf("%s: child environment lost KEEP_ME", tc.name)
		}
		killed, err := c.Stop(context.Background())
		if err != nil || killed || c.ExitCode() != 128+int(syscall.SIGTERM) {
			h.failf("%s: Stop = %v, %v; exit %d", tc.name, killed, err, c.ExitCode())
		}
	}
	return 0
}

// helperSigterm: as PID 1, SIGTERM closes Shutdown (Go would otherwise exit
// 2); a second SIGTERM changes nothing; the init exits 0.
func helperSigterm(h *helper) int {
	s := h.init()
	fmt.Println("READY")
	select {
	case <-s.Shutdown():
	case <-time.After(20 * time.Second):
		h.failf("no shutdown")
		return 1
	}
	fmt.Println("SHUTDOWN")
	time.Sleep(500 * time.Millisecond) // the test sends SIGTERM again meanwhile
	select {
	case <-s.ForceExit():
		h.failf("SIGTERM forced exit")
	default:
	}
	return ExitOK
}

// helperSigint: the first SIGINT closes Shutdown, the third ForceExit.
func helperSigint(h *helper) int {
	s := h.init()
	fmt.Println("READY")
	<-s.Shutdown()
	fmt.Println("SHUTDOWN")
	select {
	case <-s.ForceExit():
		fmt.Println("FORCED")
		return ExitForced
	case <-time.After(20 * time.Second):
		h.failf("no forced exit")
		return 1
	}
}

// helperStop: Stop on a TERM-ignoring child kills it at the deadline, on a
// TERM-honouring one returns at once; RunSteps keeps later steps' shares.
func helperStop(h *helper) int {
	s := h.init()
	const deadline = 300 * time.Millisecond
	var killDur, termDur []time.Duration
	for range 5 {
		cmd := sh(`trap "" TERM; sleep 100`)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		c, err := s.Start(cmd)
		if err != nil {
			h.failf("start: %v", err)
			return 1
		}
		if !waitIgnores(c.Pid(), syscall.SIGTERM) {
			h.failf("shell never trapped TERM")
		}
		// Timed from before the context exists: its deadline is then at
		// least t0+deadline, however late this goroutine runs.
		t0 := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		killed, err := c.Stop(ctx)
		d := time.Since(t0)
		cancel()
		killDur = append(killDur, d)
		if err != nil || !killed || c.ExitCode() != 128+int(syscall.SIGKILL) {
			h.failf("Stop(TERM-ignoring) = %v, %v, exit %d", killed, err, c.ExitCode())
		}
		// SIGKILL goes a tenth of the time (at most killLead) before the
		// deadline, so that the reap fits in it too.
		if kill := deadline - min(deadline/10, killLead); d < kill || d > deadline+400*time.Millisecond {
			h.failf("Stop(TERM-ignoring) took %v with a %v deadline (SIGKILL due at %v)", d, deadline, kill)
		}

		c, err = s.Start(exec.Command("sleep", "100"))
		if err != nil {
			h.failf("start: %v", err)
			return 1
		}
		ctx, cancel = context.WithTimeout(context.Background(), deadline)
		t0 = time.Now()
		killed, err = c.Stop(ctx)
		termDur = append(termDur, time.Since(t0))
		cancel()
		if err != nil || killed || c.ExitCode() != 128+int(syscall.SIGTERM) {
			h.failf("Stop(sleep) = %v, %v, exit %d", killed, err, c.ExitCode())
		}
	}
	h.metric("stop_kill_median_ms", median(killDur).Milliseconds())
	h.metric("stop_kill_deadline_ms", deadline.Milliseconds())
	h.metric("stop_term_median_ms", float64(median(termDur).Microseconds())/1000)

	// The shutdown sequence: a child that ignores TERM, a step that ignores
	// its context, and a last step that must still get its share.
	cmd := sh(`trap "" TERM; sleep 100`)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	agent, err := s.Start(cmd)
	if err != nil {
		h.failf("start: %v", err)
		return 1
	}
	waitIgnores(agent.Pid(), syscall.SIGTERM)
	const budget = 1500 * time.Millisecond
	var lastRan bool
	var lastLeft time.Duration
	t0 := time.Now()
	res := RunSteps(context.Background(), s.log, budget, []Step{
		{Name: "stop agent", Weight: 1, Run: func(ctx context.Context) error {
			killed, err := agent.Stop(ctx)
			if !killed {
				return errors.New("agent not killed")
			}
			return err
		}},
		{Name: "hang", Weight: 1, Run: func(ctx context.Context) error {
			time.Sleep(5 * time.Second) // ignores ctx
			return nil
		}},
		{Name: "deregister", Weight: 1, Run: func(ctx context.Context) error {
			lastRan = true
			d, _ := ctx.Deadline()
			lastLeft = time.Until(d)
			<-ctx.Done()
			return ctx.Err()
		}},
	})
	total := time.Since(t0)
	h.metric("steps_total_ms", total.Milliseconds())
	h.metric("steps_budget_ms", budget.Milliseconds())
	for _, r := range res {
		h.metric("step_"+strings.ReplaceAll(r.Name, " ", "_")+"_ms", r.Duration.Milliseconds())
	}
	// The hang step ignores its context for 5 s: ending within the budget,
	// with room for a loaded machine's scheduling, shows it was abandoned.
	if total > budget+300*time.Millisecond {
		h.failf("steps took %v, budget %v", total, budget)
	}
	if res[0].Err != nil || agent.ExitCode() != 128+int(syscall.SIGKILL) {
		h.failf("stop agent: %v, exit %d", res[0].Err, agent.ExitCode())
	}
	if !errors.Is(res[1].Err, context.DeadlineExceeded) {
		h.failf("hang: err %v, want DeadlineExceeded", res[1].Err)
	}
	if !lastRan || lastLeft < 200*time.Millisecond {
		h.failf("last step ran=%v with %v left; want its ~1/3 share", lastRan, lastLeft)
	}
	if !errors.Is(res[2].Err, context.DeadlineExceeded) {
		h.failf("deregister: err %v", res[2].Err)
	}
	return 0
}

// helperSweep: processes in other sessions and groups, TERM-ignoring ones and
// a stopped one, are all gone after Sweep; only the ignoring ones needed KILL.
func helperSweep(h *helper) int {
	s := h.init()
	scripts := []struct {
		script  string
		setpgid bool
	}{
		{`(setsid /bin/sh -c 'trap "" TERM; exec sleep 100' &) ; exit 0`, false},  // 1, ignores TERM
		{`trap "" TERM; sleep 100`, true},                                         // 2 (sh+sleep), ignore TERM
		{`(sleep 100 &) ; exit 0`, false},                                         // 1
		{`(setsid sleep 100 &) ; exit 0`, false},                                  // 1
		{`(setsid /bin/sh -c 'kill -STOP $$; exec sleep 100' &) ; exit 0`, false}, // 1, stopped: needs CONT
	}
	const want, wantKilled = 6, 3
	var direct *Child
	for _, sc := range scripts {
		cmd := sh(sc.script)
		if sc.setpgid {
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		}
		c, err := s.Start(cmd)
		if err != nil {
			h.failf("start: %v", err)
			return 1
		}
		if sc.setpgid {
			direct = c
		}
	}
	procs, ok := waitProcs(5*time.Second, func(p []procfs.Stat) bool {
		alive, stopped, ignoring := 0, 0, 0
		for _, q := range p {
			switch q.State {
			case 'Z':
				continue
			case 'T':
				stopped++
			}
			if m, _ := statusMask(q.PID, "SigIgn"); m&(1<<(syscall.SIGTERM-1)) != 0 {
				ignoring++
			}
			alive++
		}
		return alive == want && stopped == 1 && ignoring == wantKilled
	})
	if !ok {
		h.failf("setup: %s", describe(procs))
		return 1
	}
	const grace = 500 * time.Millisecond
	t0 := time.Now()
	res, err := s.Sweep(context.Background(), grace)
	d := time.Since(t0)
	h.metric("sweep_ms", d.Milliseconds())
	h.metric("sweep_grace_ms", grace.Milliseconds())
	h.metric("signalled", res.Signalled)
	h.metric("killed", res.Killed)
	if err != nil || res.Signalled != want || res.Killed != wantKilled || res.Remaining != 0 {
		h.failf("Sweep = %+v, %v; want signalled %d killed %d", res, err, want, wantKilled)
	}
	if d < grace || d > grace+time.Second {
		h.failf("Sweep took %v with grace %v", d, grace)
	}
	if left := others(); len(left) != 0 {
		h.failf("left after Sweep: %s", describe(left))
	}
	select {
	case <-direct.Done():
		if direct.ExitCode() != 128+int(syscall.SIGKILL) {
			h.failf("direct child exit %d", direct.ExitCode())
		}
	default:
		h.failf("direct child not reaped by Sweep")
	}
	// Nothing left: a second sweep is immediate.
	t0 = time.Now()
	res, err = s.Sweep(context.Background(), grace)
	if err != nil || res != (SweepResult{}) || time.Since(t0) >= grace {
		h.failf("second Sweep = %+v, %v after %v", res, err, time.Since(t0))
	}
	return 0
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// helperRefused: starts that cannot be supervised are refused before
// anything runs, a binary that cannot be executed is an error, and neither
// leaves a process behind.
func helperRefused(h *helper) int {
	s := h.init()
	if _, err := s.Start(exec.Command("/nonexistent/agent")); err == nil {
		h.failf("start of a missing binary succeeded")
	}
	var buf bytes.Buffer
	for name, cmd := range map[string]*exec.Cmd{
		"stdin":  func() *exec.Cmd { c := exec.Command("cat"); c.Stdin = strings.NewReader("x"); return c }(),
		"stdout": func() *exec.Cmd { c := exec.Command("echo"); c.Stdout = &buf; return c }(),
		"stderr": func() *exec.Cmd { c := exec.Command("echo"); c.Stderr = &buf; return c }(),
	} {
		if _, err := s.Start(cmd); err == nil || !strings.Contains(err.Error(), name+" must be nil or an *os.File") {
			h.failf("non-file %s: %v", name, err)
		}
		if cmd.Process != nil {
			h.failf("non-file %s: started pid %d", name, cmd.Process.Pid)
		}
	}
	if _, err := s.Start(exec.CommandContext(context.Background(), "true")); err == nil {
		h.failf("CommandContext accepted")
	}
	wd := exec.Command("true")
	wd.WaitDelay = time.Second
	if _, err := s.Start(wd); err == nil {
		h.failf("WaitDelay accepted")
	}
	if left := others(); len(left) != 0 {
		h.failf("left: %s", describe(left))
	}
	return 0
}
