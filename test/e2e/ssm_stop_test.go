package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/ssm"
	"github.com/bastion-dev/bastion/test/fakeecs"
	"github.com/bastion-dev/bastion/test/fakessm"
	"github.com/bastion-dev/bastion/test/harness"
)

// Issue 12: nothing left behind on any path, the stop budget counted from
// SIGTERM, a sweep that proves death. Every test here runs the real binary
// as PID 1 against the fake SSM and ECS APIs and the fake agent, and waits
// for events (fake call counts, log lines), never for time.

// waitUntil polls cond, something seen at a fake, until it holds.
func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// terminate sends SIGTERM and returns the exit code and how long the
// bastion took to exit after it.
func terminate(t *testing.T, b *harness.Bastion, budget time.Duration) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	b.Terminate()
	code := b.Wait(budget + 10*time.Second)
	return code, time.Since(start)
}

// row logs one line of the closing note's table of stop runs.
func row(t *testing.T, what string, code int, took time.Duration, e *ssmEnv) {
	t.Helper()
	a, i := e.leaks()
	t.Logf("ROW | %-58s | exit %d | %6.2fs | %d activations | %d instances |", what, code, took.Seconds(), a, i)
}

// stopEnv is the environment of a run whose stop is measured: a short
// budget and a drain that fits in it.
func stopEnv(budget string, extra map[string]string) map[string]string {
	env := map[string]string{"BASTION_STOP_TIMEOUT": budget, "BASTION_DRAIN_TIMEOUT": "1s"}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// writeRegistration leaves a registration file as an earlier run of the
// container would have.
func (e *ssmEnv) writeRegistration(t *testing.T, id string) string {
	t.Helper()
	p := e.path(ssm.RegistrationFile)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	content := fmt.Sprintf(`{"ManagedInstanceID":%q,"Region":%q}`, id, fakessm.DefaultRegion)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return content
}

func ourTags(taskARN string) []fakessm.Tag {
	return []fakessm.Tag{{Key: ssm.TagCluster, Value: "ops"}, {Key: ssm.TagFamily, Value: fakeecs.DefaultTask().Family},
		{Key: ssm.TagManagedBy, Value: ssm.TagManagedByValue}, {Key: ssm.TagTaskARN, Value: taskARN}}
}

// readinessPolls counts DescribeInstanceInformation calls by instance id.
func readinessPolls(api *fakessm.Server) int {
	n := 0
	for _, r := range api.Requests() {
		if r.Op == "DescribeInstanceInformation" && strings.Contains(r.Body, `"InstanceIds"`) {
			n++
		}
	}
	return n
}

// TestSSMStopAtEveryStage (issue 12, defects 1, 2 and 8; the closing note's
// table): SIGTERM while each stage of Start hangs in its call. The bastion
// exits 0 within BASTION_STOP_TIMEOUT, counted from SIGTERM, and leaves no
// activation and no managed instance.
func TestSSMStopAtEveryStage(t *testing.T) {
	t.Parallel()
	const budget = 6 * time.Second
	// staged is what a stage leaves for the check after the stop: the
	// orphan candidate whose task still runs (not ours: it must survive),
	// and for a call that lands late what closes once it has (only then
	// can leftovers be counted).
	type staged struct {
		live   string
		landed chan struct{}
	}
	type stage struct {
		name  string
		env   map[string]string
		setup func(e *ssmEnv, s *staged) (ready func() bool)
	}
	calls := func(e *ssmEnv, op string, n int) func() bool { return func() bool { return e.api.Calls(op) >= n } }
	// orphan seeds a candidate for the orphan sweep whose task still runs.
	orphan := func(e *ssmEnv, s *staged) {
		in := e.api.AddInstance(fakessm.Instance{Tags: ourTags("arn:aws:ecs:us-east-1:123456789012:task/ops/ffffffffffffffffffffffffffffffff")})
		e.api.SetPing(in.InstanceID, time.Now().Add(-time.Hour))
		e.ecs.SetTaskStatus("arn:aws:ecs:us-east-1:123456789012:task/ops/ffffffffffffffffffffffffffffffff", fakeecs.StatusRunning)
		s.live = in.InstanceID
	}
	noSweep := map[string]string{"BASTION_SSM_ORPHAN_SWEEP": "false"}
	stages := []stage{
		{name: "task metadata", setup: func(e *ssmEnv, s *staged) func() bool {
			e.ecs.Delay(time.Minute)
			return func() bool { return e.ecs.Calls("/task") >= 1 }
		}},
		{name: "preflight (GetServiceSetting)", setup: func(e *ssmEnv, s *staged) func() bool {
			e.api.DelayNext("GetServiceSetting", 1, time.Minute)
			return calls(e, "GetServiceSetting", 1)
		}},
		{name: "orphan sweep (DescribeInstanceInformation)", setup: func(e *ssmEnv, s *staged) func() bool {
			e.api.DelayNext("DescribeInstanceInformation", 1, time.Minute)
			return calls(e, "DescribeInstanceInformation", 1)
		}},
		{name: "orphan sweep (ListTagsForResource)", setup: func(e *ssmEnv, s *staged) func() bool {
			orphan(e, s)
			e.api.DelayNext("ListTagsForResource", 1, time.Minute)
			return calls(e, "ListTagsForResource", 1)
		}},
		{name: "orphan sweep (ecs:DescribeTasks)", setup: func(e *ssmEnv, s *staged) func() bool {
			orphan(e, s)
			e.ecs.DelayNext(1, time.Minute)
			return func() bool { return e.ecs.APICalls("DescribeTasks") >= 1 }
		}},
		{name: "CreateActivation (created, answer held)", setup: func(e *ssmEnv, s *staged) func() bool {
			e.api.DelayResponse("CreateActivation", 1, time.Minute)
			return func() bool { return len(e.api.Activations()) == 1 }
		}},
		{name: "CreateActivation (lands 1.5s after the call)", setup: func(e *ssmEnv, s *staged) func() bool {
			e.api.DelayEffect("CreateActivation", 1, 1500*time.Millisecond)
			s.landed = make(chan struct{})
			e.api.After("CreateActivation", func(fakessm.Request) { close(s.landed) })
			return calls(e, "CreateActivation", 1)
		}},
		{name: "register (RegisterManagedInstance held)", setup: func(e *ssmEnv, s *staged) func() bool {
			e.api.DelayNext("RegisterManagedInstance", 1, time.Minute)
			return calls(e, "RegisterManagedInstance", 1)
		}},
		{name: "register (registered, answer held)", setup: func(e *ssmEnv, s *staged) func() bool {
			e.api.DelayResponse("RegisterManagedInstance", 1, time.Minute)
			return func() bool { return len(e.api.Instances()) == 1 }
		}},
		{name: "DeleteActivation", setup: func(e *ssmEnv, s *staged) func() bool {
			e.api.DelayNext("DeleteActivation", 1, time.Minute)
			return calls(e, "DeleteActivation", 1)
		}},
		{name: "duplicate sweep (DescribeActivations)", setup: func(e *ssmEnv, s *staged) func() bool {
			e.api.DelayNext("DescribeActivations", 1, time.Minute)
			return calls(e, "DescribeActivations", 1)
		}},
		{name: "readiness, every DescribeInstanceInformation hangs", env: noSweep, setup: func(e *ssmEnv, s *staged) func() bool {
			e.api.Delay("DescribeInstanceInformation", time.Minute)
			return calls(e, "DescribeInstanceInformation", 1)
		}},
		{name: "readiness, agent never Online", env: map[string]string{"FAKE_AGENT_MODE": "hang"}, setup: func(e *ssmEnv, s *staged) func() bool {
			return func() bool { return readinessPolls(e.api) >= 2 }
		}},
		{name: "readiness, never Online, agent stops in 7s", env: map[string]string{"FAKE_AGENT_MODE": "hang", "FAKE_AGENT_STOP_DELAY": "7s"},
			setup: func(e *ssmEnv, s *staged) func() bool { return func() bool { return readinessPolls(e.api) >= 2 } }},
		{name: "readiness, never Online, agent ignores SIGTERM", env: map[string]string{"FAKE_AGENT_MODE": "hang,ignore-sigterm"},
			setup: func(e *ssmEnv, s *staged) func() bool { return func() bool { return readinessPolls(e.api) >= 2 } }},
	}
	for _, st := range stages {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			e := newSSMEnv(t, nil)
			var s staged
			ready := st.setup(e, &s)
			b := e.start(t, stopEnv(budget.String(), st.env))
			waitUntil(t, "Start to reach "+st.name, 60*time.Second, ready)
			code, took := terminate(t, b, budget)
			if s.landed != nil {
				select {
				case <-s.landed:
				case <-time.After(30 * time.Second):
					t.Fatal("the delayed call never landed")
				}
			}
			if s.live != "" && !e.api.RemoveInstance(s.live) {
				t.Fatalf("the live task's instance %s was deregistered", s.live)
			}
			row(t, "SIGTERM during "+st.name, code, took, e)
			if code != 0 || took > budget {
				t.Fatalf("exit %d after %v (budget %v):\n%s", code, took, budget, b.Log.String())
			}
			e.assertNoLeaks(t)
			if _, err := os.Stat(e.path(ssm.RegistrationFile)); !os.IsNotExist(err) {
				t.Fatalf("registration file left: %v", err)
			}
		})
	}
}

// TestSSMPersistentFaults: every call of one operation refused (access
// denied, not retried). Start fails or goes on as the operation matters;
// either way the stop stays within the budget and what can be undone is.
// The two rows that leave something say why in the log: a spent
// activation that expires within the hour, an instance nobody may
// deregister (exit 5).
func TestSSMPersistentFaults(t *testing.T) {
	t.Parallel()
	const budget = 10 * time.Second
	tests := []struct {
		op          string
		exit        int
		activations int
		instances   int
	}{
		{"GetServiceSetting", 4, 0, 0},
		{"DescribeInstanceInformation", 4, 0, 0},
		{"ListTagsForResource", 0, 0, 0},
		{"DescribeTasks", 0, 0, 0},
		{"CreateActivation", 4, 0, 0},
		{"RegisterManagedInstance", 4, 0, 0},
		{"DeleteActivation", 0, 1, 0},
		{"DescribeActivations", 0, 0, 0},
		{"DeregisterManagedInstance", 5, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.op, func(t *testing.T) {
			t.Parallel()
			e := newSSMEnv(t, nil)
			// A candidate for the orphan sweep, of a live task: its tags and
			// task are looked up.
			live := "arn:aws:ecs:us-east-1:123456789012:task/ops/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"
			candidate := e.api.AddInstance(fakessm.Instance{Tags: ourTags(live)})
			e.api.SetPing(candidate.InstanceID, time.Now().Add(-time.Hour))
			e.ecs.SetTaskStatus(live, fakeecs.StatusRunning)
			if tt.op == "DescribeTasks" {
				e.ecs.FailNext(100, "AccessDeniedException")
			} else {
				e.api.Inject(tt.op, fakessm.Fault{Code: "AccessDeniedException"})
			}
			b := e.start(t, stopEnv(budget.String(), nil))
			var code int
			var took time.Duration
			if tt.exit == 4 {
				b.Log.WaitFor(t, 60*time.Second, "ssm start failed", nil)
				start := time.Now()
				code = b.Wait(budget + 10*time.Second)
				took = time.Since(start)
			} else {
				waitOnline(t, b)
				code, took = terminate(t, b, budget)
			}
			if !e.api.RemoveInstance(candidate.InstanceID) {
				t.Fatalf("the live task's instance was deregistered")
			}
			row(t, "every "+tt.op+" denied", code, took, e)
			served := e.api.FaultsServed(tt.op)
			if tt.op == "DescribeTasks" {
				served = e.ecs.APICalls("DescribeTasks")
			}
			if served == 0 {
				t.Fatalf("the fault never fired")
			}
			if a, i := e.leaks(); code != tt.exit || took > budget || a != tt.activations || i != tt.instances {
				t.Fatalf("exit %d after %v, %d activations, %d instances left; want exit %d, %d, %d:\n%s",
					code, took, a, i, tt.exit, tt.activations, tt.instances, b.Log.String())
			}
		})
	}
}

// TestSSMFailedStartDeregisters (defect 1): a Start that fails leaves no
// instance. Readiness throttled on every call: exit 4, and the known
// instance is deregistered without listing anything first.
func TestSSMFailedStartDeregisters(t *testing.T) {
	t.Parallel()
	e := newSSMEnv(t, nil)
	e.api.Inject("DescribeInstanceInformation", fakessm.Fault{Code: "ThrottlingException"}) // every call
	b := e.start(t, stopEnv("10s", map[string]string{"BASTION_SSM_READY_TIMEOUT": "5s", "BASTION_SSM_ORPHAN_SWEEP": "false"}))
	b.Log.WaitFor(t, 60*time.Second, "ssm start failed", nil)
	failedAt := time.Now()
	code := b.Wait(30 * time.Second)
	took := time.Since(failedAt)
	row(t, "readiness throttled on every call (ready timeout 5s)", code, took, e)
	if code != 4 || took > 10*time.Second {
		t.Fatalf("exit %d, %v after the failure:\n%s", code, took, b.Log.String())
	}
	if e.api.Calls("DeregisterManagedInstance") == 0 || e.api.FaultsServed("DescribeInstanceInformation") == 0 {
		t.Fatalf("deregistrations %d, throttled %d", e.api.Calls("DeregisterManagedInstance"), e.api.FaultsServed("DescribeInstanceInformation"))
	}
	e.assertNoLeaks(t)
}

// TestSSMAbortedStartExit5 (defect 3): SIGTERM during Start and the
// deregistration refused: exit 5, as on the normal path.
func TestSSMAbortedStartExit5(t *testing.T) {
	t.Parallel()
	e := newSSMEnv(t, nil)
	e.api.Inject("DeregisterManagedInstance", fakessm.Fault{Code: "AccessDeniedException"})
	b := e.start(t, stopEnv("6s", map[string]string{"FAKE_AGENT_MODE": "hang"}))
	waitUntil(t, "readiness polls", 60*time.Second, func() bool { return readinessPolls(e.api) >= 2 })
	code, took := terminate(t, b, 6*time.Second)
	row(t, "SIGTERM during readiness, deregistration denied", code, took, e)
	if code != 5 || took > 6*time.Second {
		t.Fatalf("exit %d after %v, want 5:\n%s", code, took, b.Log.String())
	}
	if a, i := e.leaks(); a != 0 || i != 1 {
		t.Fatalf("%d activations, %d instances; want the one deregistration could not remove", a, i)
	}
}

// TestSSMReadySoonAfterOnline (defect 2): readiness polls at most every 2 s,
// so Start ends soon after the instance is Online, however long it waited.
func TestSSMReadySoonAfterOnline(t *testing.T) {
	t.Parallel()
	e := newSSMEnv(t, nil)
	b := e.start(t, map[string]string{"FAKE_AGENT_MODE": "hang", "BASTION_SSM_ORPHAN_SWEEP": "false"})
	// Five polls: an exponential backoff would be at 16 s by now.
	waitUntil(t, "five readiness polls", 60*time.Second, func() bool { return readinessPolls(e.api) >= 5 })
	id := e.api.Instances()[0].InstanceID
	online := time.Now()
	e.api.SetPing(id, online)
	b.Log.WaitFor(t, 30*time.Second, "ssm agent online", nil)
	// Polls come at most 2 s apart; the old backoff was at 8-10 s by now.
	if took := time.Since(online); took > 4*time.Second {
		t.Fatalf("Online noticed %v after it happened", took)
	} else {
		t.Logf("Online noticed %v after it happened", took.Round(time.Millisecond))
	}
	if code, _ := terminate(t, b, 20*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	e.assertNoLeaks(t)
}

// TestSSMBudgetTooSmall (defect 9): a stop budget too small to deregister
// is refused before anything is created, naming the variable and the
// minimum.
func TestSSMBudgetTooSmall(t *testing.T) {
	t.Parallel()
	e := newSSMEnv(t, nil)
	for _, v := range []string{"1s", "4s"} {
		o := e.options(t, map[string]string{"BASTION_STOP_TIMEOUT": v, "BASTION_DRAIN_TIMEOUT": "500ms"})
		o.NoWait = true
		b := harness.StartBastion(t, e.dir, o)
		if code := b.Wait(10 * time.Second); code != 78 {
			t.Fatalf("BASTION_STOP_TIMEOUT=%s: exit %d, want 78:\n%s", v, code, b.Log.String())
		}
		line := b.Log.WaitFor(t, time.Second, "bad configuration", nil)
		if msg := fmt.Sprint(line["error"]); !strings.Contains(msg, "BASTION_STOP_TIMEOUT") || !strings.Contains(msg, "at least 5s") {
			t.Fatalf("error %q does not name the variable and the minimum", msg)
		}
	}
	if n := e.api.Calls(fakessm.AnyOp); n != 0 {
		t.Fatalf("%d SSM calls before the refusal", n)
	}
	// The minimum itself is accepted and deregisters.
	b := e.start(t, stopEnv("5s", nil))
	waitOnline(t, b)
	code, took := terminate(t, b, 5*time.Second)
	row(t, "normal stop at the minimum budget (5s)", code, took, e)
	if code != 0 || took > 5*time.Second {
		t.Fatalf("exit %d after %v", code, took)
	}
	e.assertNoLeaks(t)
}

// TestSSMDeregistrationUsesTheBudget (defect 10): a deregistration that
// keeps failing is retried for as long as the budget allows, past the SDK's
// own attempts, and gets all of the budget but the sweep's worst case.
func TestSSMDeregistrationUsesTheBudget(t *testing.T) {
	t.Parallel()
	e := newSSMEnv(t, nil)
	b := e.start(t, stopEnv("25s", nil))
	id := waitOnline(t, b)
	e.api.Inject("DeregisterManagedInstance", fakessm.Fault{Code: "InternalServerError"}) // every call, until cleared
	start := time.Now()
	b.Terminate()
	// More failed calls than one SDK call's 10 attempts: the old code gave
	// up there with most of its budget left.
	waitUntil(t, "eleven failed deregistrations", 25*time.Second, func() bool { return e.api.FaultsServed("DeregisterManagedInstance") >= 11 })
	e.api.ClearFaults()
	code := b.Wait(25 * time.Second)
	took := time.Since(start)
	row(t, "deregistration failing for 11 calls (budget 25s)", code, took, e)
	if code != 0 || took > 25*time.Second {
		t.Fatalf("exit %d after %v:\n%s", code, took, b.Log.String())
	}
	b.Log.WaitFor(t, time.Second, "instance deregistered", map[string]string{"instance_id": id})
	b.Log.WaitFor(t, time.Second, "shutdown step done", map[string]string{"step": "sweep remaining processes"})
	e.assertNoLeaks(t)
}

// TestSSMOrphanSweepProvesDeath (defect 4): an instance ConnectionLost for
// long is deregistered only if ECS says its task stopped (or no longer
// knows it); a live task whose pings failed keeps its instance.
func TestSSMOrphanSweepProvesDeath(t *testing.T) {
	t.Parallel()
	e := newSSMEnv(t, nil)
	task := func(n int) string { return fmt.Sprintf("arn:aws:ecs:us-east-1:123456789012:task/ops/%032x", n) }
	seed := func(tags []fakessm.Tag) string {
		in := e.api.AddInstance(fakessm.Instance{Tags: tags})
		e.api.SetPing(in.InstanceID, time.Now().Add(-20*time.Minute))
		return in.InstanceID
	}
	e.ecs.SetTaskStatus(task(1), fakeecs.StatusStopped)
	e.ecs.SetTaskStatus(task(2), fakeecs.StatusRunning)
	stopped, forgotten, alive := seed(ourTags(task(1))), seed(ourTags(task(3))), seed(ourTags(task(2)))
	untagged := seed(ourTags("")[:3])
	b := e.start(t, nil)
	id := waitOnline(t, b)
	for _, gone := range []string{stopped, forgotten} {
		b.Log.WaitFor(t, time.Second, "orphan deregistered", map[string]string{"instance_id": gone})
		if _, ok := e.api.Instance(gone); ok {
			t.Fatalf("orphan %s left", gone)
		}
	}
	b.Log.WaitFor(t, time.Second, "orphan candidate's task still runs; left alone", map[string]string{"instance_id": alive, "task_status": "RUNNING"})
	b.Log.WaitFor(t, time.Second, "orphan candidate without a task tag left alone", map[string]string{"instance_id": untagged})
	for _, kept := range []string{alive, untagged, id} {
		if _, ok := e.api.Instance(kept); !ok {
			t.Fatalf("instance %s deregistered without proof of death", kept)
		}
	}
	if n := e.ecs.APICalls("DescribeTasks"); n != 1 {
		t.Fatalf("%d DescribeTasks calls", n)
	}
	if code, _ := terminate(t, b, 20*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}

	// The threshold has a floor.
	o := e.options(t, map[string]string{"BASTION_SSM_ORPHAN_AFTER": "1m"})
	o.NoWait = true
	b = harness.StartBastion(t, e.dir, o)
	if code := b.Wait(10 * time.Second); code != 78 || !strings.Contains(b.Log.String(), "BASTION_SSM_ORPHAN_AFTER must be at least 10m0s") {
		t.Fatalf("BASTION_SSM_ORPHAN_AFTER=1m: exit %d:\n%s", code, b.Log.String())
	}
}

// healthcheck runs "bastion healthcheck" inside the bastion's namespaces,
// where the agent's real paths are.
func healthcheck(t *testing.T, b *harness.Bastion) (int, string) {
	t.Helper()
	harness.RequireTools(t, "nsenter")
	bin, _ := harness.Build(t)
	cmd := exec.Command("nsenter", "-t", fmt.Sprint(b.Pid), "-m", "-p", "--", bin, "healthcheck")
	cmd.Env = harness.BaseEnv(map[string]string{"BASTION_SSH_ADDR": b.Addr, "INSTANCE_IAM_ROLE": "bastion-agent", "AWS_REGION": fakessm.DefaultRegion})
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatalf("nsenter: %v", err)
	}
	return 0, string(out)
}

// TestSSMInstanceGoneIsUnhealthy (defect 4): when our instance is
// deregistered behind our back, the agent's pings fail with
// InvalidInstanceId and "bastion healthcheck" turns unhealthy, so ECS
// replaces the task.
func TestSSMInstanceGoneIsUnhealthy(t *testing.T) {
	t.Parallel()
	e := newSSMEnv(t, nil)
	b := e.start(t, nil)
	id := waitOnline(t, b)
	if code, out := healthcheck(t, b); code != 0 {
		t.Fatalf("healthcheck before: exit %d: %s", code, out)
	}
	if !e.api.RemoveInstance(id) {
		t.Fatal("instance not at the fake")
	}
	b.Log.WaitFor(t, 30*time.Second, "managed instance gone: deregistered outside this task; healthcheck now reports unhealthy so ECS replaces the task",
		map[string]string{"instance_id": id})
	code, out := healthcheck(t, b)
	if code != 1 || !strings.Contains(out, "unhealthy: ssm:") {
		t.Fatalf("healthcheck after: exit %d: %s", code, out)
	}
	t.Logf("after the instance vanished: healthcheck exit %d: %s", code, strings.TrimSpace(out))
	if code, _ := terminate(t, b, 20*time.Second); code != 0 {
		t.Fatalf("exit %d:\n%s", code, b.Log.String())
	}
	b.Log.WaitFor(t, time.Second, "instance was already deregistered", map[string]string{"instance_id": id})
}

// TestSSMAgentWithoutStaticCredentials (defect 5): static and profile AWS
// credentials given to the container reach neither "-register" nor the
// running agent, unless BASTION_AGENT_KEEP_TASK_ROLE is set; --help says so.
func TestSSMAgentWithoutStaticCredentials(t *testing.T) {
	t.Parallel()
	e := newSSMEnv(t, nil)
	dir := t.TempDir()
	creds := filepath.Join(dir, "credentials")
	os.WriteFile(creds, []byte("[p]\naws_access_key_id = "+fakessm.DefaultAccessKeyID+"\naws_secret_access_key = "+fakessm.DefaultSecretAccessKey+"\n"), 0o600)
	config := filepath.Join(dir, "config")
	os.WriteFile(config, []byte("[profile p]\nregion = us-east-1\n"), 0o600)
	token := filepath.Join(dir, "token")
	os.WriteFile(token, []byte("not-a-jwt"), 0o600)
	env := map[string]string{
		"AWS_SESSION_TOKEN": "", "AWS_PROFILE": "p", "AWS_SHARED_CREDENTIALS_FILE": creds, "AWS_CONFIG_FILE": config,
		"AWS_WEB_IDENTITY_TOKEN_FILE": token, "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/web",
	}
	names := []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE",
		"AWS_CONFIG_FILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"}
	seen := func(b *harness.Bastion, step string) string {
		t.Helper()
		for _, l := range b.Log.Find("agent output", map[string]string{"step": step}) {
			if v, ok := strings.CutPrefix(fmt.Sprint(l["agent"]), "fake-agent credential variables: "); ok {
				return v
			}
		}
		t.Fatalf("no credential report from the agent's %s:\n%s", step, b.Log.String())
		return ""
	}

	b := e.start(t, env)
	waitOnline(t, b)
	for _, step := range []string{"register", "agent"} {
		if got := seen(b, step); got != "none" {
			t.Fatalf("%s got %s", step, got)
		}
	}
	agent, ok := nsProc(t, b, "amazon-ssm-agen")
	if !ok {
		t.Fatal("agent not running")
	}
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", agent.PID))
	if err != nil || !strings.Contains(string(environ), "PATH=") {
		t.Fatalf("read the agent's environ: %v %q", err, environ)
	}
	for _, name := range names {
		if strings.Contains(string(environ), name+"=") {
			t.Fatalf("agent environment has %s", name)
		}
	}
	if code, _ := terminate(t, b, 20*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}

	// Kept on request: the check can see them.
	env["BASTION_AGENT_KEEP_TASK_ROLE"] = "true"
	b = e.start(t, env)
	waitOnline(t, b)
	for _, step := range []string{"register", "agent"} {
		got := seen(b, step)
		for _, name := range names {
			if !strings.Contains(got, name) {
				t.Fatalf("with BASTION_AGENT_KEEP_TASK_ROLE=true the agent's %s lacks %s: %s", step, name, got)
			}
		}
	}
	if code, _ := terminate(t, b, 20*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	e.assertNoLeaks(t)

	bin, _ := harness.Build(t)
	help, err := exec.Command(bin, "--help").Output()
	if err != nil {
		t.Fatal(err)
	}
	var line string
	for _, l := range strings.Split(string(help), "\n") {
		if strings.HasPrefix(l, "BASTION_AGENT_KEEP_TASK_ROLE") {
			line = l
		}
	}
	for _, name := range append(names, "false drops them") {
		if !strings.Contains(line, strings.TrimPrefix(name, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")) {
			t.Fatalf("--help line for BASTION_AGENT_KEEP_TASK_ROLE does not name %s: %q", name, line)
		}
	}
}

// TestSSMStaleRegistrationOwnership (defect 6): a registration file left on
// the filesystem names an instance; it is deregistered only if it is ours
// or ConnectionLost.
func TestSSMStaleRegistrationOwnership(t *testing.T) {
	t.Parallel()
	self := fakeecs.DefaultTask().TaskARN
	tests := []struct {
		name   string
		tags   []fakessm.Tag
		online bool
		dereg  bool
	}{
		{"Online, another cluster's", []fakessm.Tag{{Key: ssm.TagCluster, Value: "prod"}, {Key: ssm.TagTaskARN, Value: "arn:aws:ecs:us-east-1:123456789012:task/prod/1"}}, true, false},
		{"Online, this task's (container restarted)", ourTags(self), true, true},
		{"ConnectionLost, another cluster's", []fakessm.Tag{{Key: ssm.TagCluster, Value: "prod"}}, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newSSMEnv(t, nil)
			old := e.api.AddInstance(fakessm.Instance{Tags: tt.tags})
			if tt.online {
				e.api.SetPing(old.InstanceID, time.Now())
			}
			e.writeRegistration(t, old.InstanceID)
			b := e.start(t, nil)
			id := waitOnline(t, b)
			if _, ok := e.api.Instance(old.InstanceID); ok == tt.dereg {
				t.Fatalf("old instance %s registered %v, want deregistered %v:\n%s", old.InstanceID, ok, tt.dereg, b.Log.String())
			}
			if !tt.dereg {
				b.Log.WaitFor(t, time.Second, "registration file names an instance that is not ours and still pings; left alone",
					map[string]string{"instance_id": old.InstanceID})
			}
			if code, _ := terminate(t, b, 20*time.Second); code != 0 {
				t.Fatalf("exit %d", code)
			}
			if _, ok := e.api.Instance(id); ok {
				t.Fatalf("own instance left")
			}
		})
	}
}

// TestSSMStaleStepInterrupted (defect 7): SIGTERM while the previous
// instance's deregistration hangs keeps the registration file, so the next
// start deregisters it.
func TestSSMStaleStepInterrupted(t *testing.T) {
	t.Parallel()
	e := newSSMEnv(t, nil)
	old := e.api.AddInstance(fakessm.Instance{Tags: ourTags("arn:aws:ecs:us-east-1:123456789012:task/ops/old")})
	file := e.writeRegistration(t, old.InstanceID)
	e.api.DelayNext("DeregisterManagedInstance", 1, time.Minute)
	b := e.start(t, stopEnv("6s", nil))
	waitUntil(t, "the previous instance's deregistration", 60*time.Second, func() bool { return e.api.Calls("DeregisterManagedInstance") == 1 })
	code, took := terminate(t, b, 6*time.Second)
	row(t, "SIGTERM during the stale registration's deregistration", code, took, e)
	if code != 0 || took > 6*time.Second {
		t.Fatalf("exit %d after %v:\n%s", code, took, b.Log.String())
	}
	if got, _ := os.ReadFile(e.path(ssm.RegistrationFile)); string(got) != file {
		t.Fatalf("registration file %q, want it kept", got)
	}
	if n := e.api.Calls("CreateActivation"); n != 0 {
		t.Fatalf("went on to CreateActivation after SIGTERM")
	}
	b = e.start(t, nil)
	waitOnline(t, b)
	b.Log.WaitFor(t, time.Second, "previous instance deregistered", map[string]string{"instance_id": old.InstanceID})
	if code, _ := terminate(t, b, 20*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	e.assertNoLeaks(t)
}
