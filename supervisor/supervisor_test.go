package supervisor

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bastion-dev/bastion/internal/logtest"
)

func TestOrphansReaped(t *testing.T) {
	for _, tc := range []struct {
		name string
		w    wrapper
	}{
		{"pid1", asPID1},
		{"subreaper under tini -s", underTini},
		{"subreaper under plain parent", plain},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runHelper(t, "orphans", tc.w, 0)
			t.Logf("orphans reaped %s, children %s, %s ms (pid1=%s subreaper=%s)",
				r.metric("orphans_reaped"), r.metric("children_reaped"), r.metric("elapsed_ms"),
				r.metric("pid1"), r.metric("subreaper"))
		})
	}
}

func TestManyShortChildren(t *testing.T) {
	r := runHelper(t, "many", asPID1, 0)
	t.Logf("%s runs, %s distinct exit codes, %s orphan-maker runs, %s orphans reaped, %s ms",
		r.metric("runs"), r.metric("distinct_codes"), r.metric("orphan_maker_runs"),
		r.metric("orphans_reaped"), r.metric("elapsed_ms"))
}

func TestChildEnvironment(t *testing.T) {
	t.Run("pid1", func(t *testing.T) {
		runHelper(t, "childenv", asPID1, 0)
	})
	t.Run("pid1 started with blocked and ignored signals", func(t *testing.T) {
		self, _ := os.Executable()
		w := append(wrapper{self, "--"}, asPID1...)
		r := runHelper(t, "childenv", w, 0, launchBlockEnv+"=1")
		if r.metric("reexecuted") != "true" {
			t.Fatalf("Setup did not re-exec with a blocked mask:\n%s", r.stdout)
		}
	})
	t.Run("subreaper", func(t *testing.T) {
		runHelper(t, "childenv", plain, 0)
	})
}

func TestSetupGoesOnAfterABadMarker(t *testing.T) {
	runHelper(t, "badmarker", plain, 0)
	runHelper(t, "badmarker", asPID1, 0)
}

func TestStartRefuses(t *testing.T) {
	runHelper(t, "refused", asPID1, 0)
}

func TestSigtermAsPID1(t *testing.T) {
	cmd := helperCmd(t, "sigterm", asPID1)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ch := lines(out)
	var seen []string
	expectLine(t, ch, "READY", &seen)
	pid := initPid(t, cmd.Process.Pid)
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	expectLine(t, ch, "SHUTDOWN", &seen)
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for l := range ch {
		seen = append(seen, l)
	}
	err := cmd.Wait()
	if err != nil || strings.Contains(strings.Join(seen, "\n"), "FAIL") {
		t.Fatalf("init: %v; stdout %q; stderr:\n%s", err, seen, stderr.String())
	}
	if !strings.Contains(stderr.String(), "already shutting down") {
		t.Fatalf("second SIGTERM not seen:\n%s", stderr.String())
	}
}

func TestThirdSigintForcesExit(t *testing.T) {
	cmd := helperCmd(t, "sigint", asPID1)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ch := lines(out)
	var seen []string
	expectLine(t, ch, "READY", &seen)
	pid := initPid(t, cmd.Process.Pid)
	syscall.Kill(pid, syscall.SIGINT)
	expectLine(t, ch, "SHUTDOWN", &seen)
	for range 2 {
		// Same-numbered signals pending together merge into one.
		time.Sleep(50 * time.Millisecond)
		syscall.Kill(pid, syscall.SIGINT)
	}
	expectLine(t, ch, "FORCED", &seen)
	for range ch {
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != ExitForced {
		t.Fatalf("exit %v, want %d; stderr:\n%s", err, ExitForced, stderr.String())
	}
}

func TestStopAndSteps(t *testing.T) {
	r := runHelper(t, "stop", asPID1, 0)
	t.Logf("Stop(TERM-ignoring) median %s ms for a %s ms deadline; Stop(sleep) median %s ms",
		r.metric("stop_kill_median_ms"), r.metric("stop_kill_deadline_ms"), r.metric("stop_term_median_ms"))
	t.Logf("RunSteps total %s ms of %s ms: stop agent %s ms, hang %s ms, deregister %s ms",
		r.metric("steps_total_ms"), r.metric("steps_budget_ms"), r.metric("step_stop_agent_ms"),
		r.metric("step_hang_ms"), r.metric("step_deregister_ms"))
	if !r.log.Has("shutdown step cut short", map[string]string{"step": "deregister"}) ||
		!r.log.Has("shutdown step cut short", map[string]string{"step": "hang"}) ||
		!r.log.Has("shutdown step done", map[string]string{"step": "stop agent"}) {
		t.Errorf("log lacks a step's record:\n%s", tail(r.stderr, 3000))
	}
	for _, rec := range r.log.Records() {
		if _, ok := rec["step"]; ok && rec["duration_ms"] == nil {
			t.Errorf("step record without duration_ms: %v", rec)
		}
	}
}

func TestSweep(t *testing.T) {
	for _, tc := range []struct {
		name string
		w    wrapper
	}{
		{"pid1", asPID1},
		{"subreaper", plain},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runHelper(t, "sweep", tc.w, 0)
			t.Logf("Sweep %s ms (grace %s ms): signalled %s, killed %s",
				r.metric("sweep_ms"), r.metric("sweep_grace_ms"), r.metric("signalled"), r.metric("killed"))
		})
	}
}

// --- in-process tests: no children, no wait4 in this process ---

func TestExitCode(t *testing.T) {
	for _, tc := range []struct {
		name string
		ws   unix.WaitStatus
		want int
	}{
		{"exit 0", 0, 0},
		{"exit 3", 3 << 8, 3},
		{"exit 255", 255 << 8, 255},
		{"SIGTERM", unix.WaitStatus(syscall.SIGTERM), 143},
		{"SIGKILL", unix.WaitStatus(syscall.SIGKILL), 137},
		{"SIGSEGV with core", unix.WaitStatus(syscall.SIGSEGV) | 0x80, 139},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := exitCode(tc.ws); got != tc.want {
				t.Fatalf("exitCode(%#x) = %d, want %d", tc.ws, got, tc.want)
			}
		})
	}
}

func TestFilterEnv(t *testing.T) {
	s := &Supervisor{drop: map[string]bool{"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": true, "SECRET": true}}
	got := s.filterEnv([]string{
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/v2/creds",
		"SECRET=x", "SECRET_NOT=kept", "NOT_SECRET=kept", "SECRET", "PATH=/bin",
	})
	want := []string{"SECRET_NOT=kept", "NOT_SECRET=kept", "PATH=/bin"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("filterEnv = %q, want %q", got, want)
	}
}

func TestRunStepsShares(t *testing.T) {
	log, logs := logtest.New(slog.LevelInfo)
	// Each step records when it was called and the deadline it got. The
	// shares are checked on those absolute times, so a loaded machine that
	// starts a step late cannot fail the test: a step started at s with w
	// of the remaining weights r must get s + (end-s)*w/r, and s lies between
	// the previous step's return and the call.
	type call struct{ at, deadline time.Time }
	var mu sync.Mutex // an abandoned step keeps running beside later ones
	calls := map[string]call{}
	record := func(name string, ret error, sleep time.Duration) func(context.Context) error {
		return func(ctx context.Context) error {
			d, _ := ctx.Deadline()
			mu.Lock()
			calls[name] = call{time.Now(), d}
			mu.Unlock()
			time.Sleep(sleep)
			if name == "last" {
				<-ctx.Done()
				return ctx.Err()
			}
			return ret
		}
	}
	t0 := time.Now()
	res := RunSteps(context.Background(), log, 800*time.Millisecond, []Step{
		{Name: "quick", Weight: 2, Run: record("quick", nil, 0)},
		{Name: "overrun", Weight: 1, Run: record("overrun", nil, 2*time.Second)},
		{Name: "fails", Weight: 0, Run: record("fails", errors.New("boom"), 0)},
		{Name: "last", Weight: 1, Run: record("last", nil, 0)},
	})
	returned := time.Now()
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 4 {
		t.Fatalf("steps called: %v", calls)
	}
	// The last step gets all that is left: its deadline is the budget's end.
	end := calls["last"].deadline
	// RunSteps took its start between t0 and the first step's call.
	if end.Before(t0.Add(800*time.Millisecond)) || end.After(calls["quick"].at.Add(800*time.Millisecond)) {
		t.Errorf("budget end %v after the call, want 800ms after RunSteps started", end.Sub(t0))
	}
	// within checks deadline = s + (end-s)*w/r for some s in [from, to].
	within := func(name string, from time.Time, w, r int64) {
		t.Helper()
		c := calls[name]
		share := func(s time.Time) time.Time { return s.Add(time.Duration(int64(end.Sub(s)) * w / r)) }
		lo, hi := share(from).Add(-time.Millisecond), share(c.at).Add(time.Millisecond)
		if c.deadline.Before(lo) || c.deadline.After(hi) {
			t.Errorf("%s: deadline %v after start, want between %v and %v (%d/%d of what was left)",
				name, c.deadline.Sub(t0), lo.Sub(t0), hi.Sub(t0), w, r)
		}
	}
	within("quick", t0, 2, 5)
	within("overrun", calls["quick"].at, 1, 3)
	within("fails", calls["overrun"].deadline, 1, 2) // not before the overrun was abandoned
	if calls["fails"].at.Before(calls["overrun"].deadline) {
		t.Errorf("fails ran %v before the overrun step's deadline", calls["overrun"].deadline.Sub(calls["fails"].at))
	}
	// The overrun step (2 s of sleep) was abandoned at its deadline, not
	// waited for; the whole sequence ended with the budget.
	if !errors.Is(res[1].Err, context.DeadlineExceeded) || res[1].Duration >= time.Second {
		t.Errorf("overrun: %v after %v", res[1].Err, res[1].Duration)
	}
	if total := returned.Sub(t0); total >= time.Second {
		t.Fatalf("took %v of 800ms", total)
	}
	if res[2].Err == nil || res[3].Err == nil || !errors.Is(res[3].Err, context.DeadlineExceeded) {
		t.Errorf("results %+v", res)
	}
	for _, want := range []struct{ msg, step string }{
		{"shutdown step done", "quick"},
		{"shutdown step cut short", "overrun"},
		{"shutdown step failed", "fails"},
		{"shutdown step cut short", "last"},
	} {
		if !logs.Has(want.msg, map[string]string{"step": want.step}) {
			t.Errorf("log lacks %q for step %q:\n%s", want.msg, want.step, logs.String())
		}
	}

	// A spent budget skips the remaining steps without running them.
	ran := false
	res = RunSteps(context.Background(), log, 0, []Step{{Name: "late", Run: func(context.Context) error { ran = true; return nil }}})
	if ran || !errors.Is(res[0].Err, context.DeadlineExceeded) {
		t.Fatalf("late step ran=%v err=%v", ran, res[0].Err)
	}
}
