package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/internal/procfs"
	"github.com/bastion-dev/bastion/ssm"
	"github.com/bastion-dev/bastion/test/fakeecs"
	"github.com/bastion-dev/bastion/test/fakessm"
	"github.com/bastion-dev/bastion/test/harness"
)

// ssmEnv is one fake AWS world: the SSM API, ECS task metadata, and host
// directories standing in for the agent's real paths.
type ssmEnv struct {
	api   *fakessm.Server
	ecs   *fakeecs.Server
	dir   string
	binds map[string]string
	user  harness.Key
	host  harness.Key
	agent string
}

func newSSMEnv(t *testing.T, api *fakessm.Server) *ssmEnv {
	t.Helper()
	harness.RequireRoot(t)
	_, agentDir := harness.Build(t)
	e := &ssmEnv{api: api, dir: t.TempDir(), agent: agentDir}
	if e.api == nil {
		e.api = fakessm.NewTest(t, fakessm.Options{})
	}
	e.ecs = fakeecs.NewTest(t, fakeecs.DefaultTask())
	e.binds = map[string]string{}
	for _, p := range []string{"/var/lib/amazon", "/etc/amazon", "/var/log/amazon"} {
		host := filepath.Join(e.dir, strings.ReplaceAll(strings.TrimPrefix(p, "/"), "/", "_"))
		os.MkdirAll(host, 0o755)
		e.binds[p] = host
	}
	e.user = harness.Keygen(t, e.dir, "user")
	e.host = harness.Keygen(t, e.dir, "host")
	return e
}

// path maps an agent path to its host directory.
func (e *ssmEnv) path(p string) string {
	for inside, host := range e.binds {
		if rest, ok := strings.CutPrefix(p, inside); ok {
			return host + rest
		}
	}
	return p
}

func (e *ssmEnv) start(t *testing.T, extra map[string]string) *harness.Bastion {
	return e.startWith(t, extra, nil)
}

// startWith starts the bastion under init (nil: the bastion is PID 1).
func (e *ssmEnv) startWith(t *testing.T, extra map[string]string, init []string) *harness.Bastion {
	t.Helper()
	o := e.options(t, extra)
	o.Init = init
	return harness.StartBastion(t, e.dir, o)
}

// options runs the bastion in this world, with extra variables.
func (e *ssmEnv) options(t *testing.T, extra map[string]string) harness.BastionOptions {
	env := map[string]string{
		"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED":      harness.B64(e.user.Pub),
		"SSH_PRIVATE_HOST_KEY_BASE64ENCODED":     harness.B64(e.host.PEM(t)),
		"INSTANCE_IAM_ROLE":                      "bastion-agent",
		"AWS_REGION":                             fakessm.DefaultRegion,
		"AWS_ACCESS_KEY_ID":                      fakessm.DefaultAccessKeyID,
		"AWS_SECRET_ACCESS_KEY":                  fakessm.DefaultSecretAccessKey,
		"AWS_ENDPOINT_URL_SSM":                   e.api.URL(),
		"AWS_ENDPOINT_URL_ECS":                   e.ecs.URL(),
		"ECS_CONTAINER_METADATA_URI_V4":          e.ecs.URI(),
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/task-role-secret",
		"FAKE_AGENT_STOP_DELAY":                  "1s",
		"FAKE_AGENT_PING_INTERVAL":               "2s",
		"BASTION_STOP_TIMEOUT":                   "20s",
		"BASTION_SSM_READY_TIMEOUT":              "60s",
	}
	for k, v := range extra {
		env[k] = v
	}
	return harness.BastionOptions{Env: env, Binds: e.binds, PathPrefix: e.agent}
}

// leaks counts what a stopped bastion must never leave behind.
func (e *ssmEnv) leaks() (activations, instances int) {
	return len(e.api.Activations()), len(e.api.Instances())
}

func (e *ssmEnv) assertNoLeaks(t *testing.T) {
	t.Helper()
	if a, i := e.leaks(); a != 0 || i != 0 {
		t.Fatalf("leaked %d activations and %d managed instances: %+v %+v", a, i, e.api.Activations(), e.api.Instances())
	}
}

func waitOnline(t *testing.T, b *harness.Bastion) string {
	t.Helper()
	line := b.Log.WaitFor(t, 90*time.Second, "ssm agent online", nil)
	return fmt.Sprint(line["instance_id"])
}

// nsProc finds a process by command name in the bastion's PID namespace.
func nsProc(t *testing.T, b *harness.Bastion, comm string) (procfs.Stat, bool) {
	for _, p := range nsProcs(t, b.Pid) {
		if p.Comm == comm && p.State != 'Z' {
			return p, true
		}
	}
	return procfs.Stat{}, false
}

func TestSSMLifecycle(t *testing.T) {
	t.Parallel()
	e := newSSMEnv(t, nil)
	b := e.start(t, nil)
	id := waitOnline(t, b)

	t.Run("registered with the task's name and tags", func(t *testing.T) {
		in, ok := e.api.Instance(id)
		if !ok || in.PingStatus != fakessm.PingOnline {
			t.Fatalf("instance %s: %+v", id, in)
		}
		task := fakeecs.DefaultTask()
		taskID := task.TaskARN[strings.LastIndex(task.TaskARN, "/")+1:]
		if in.Name != task.Family+"-"+taskID {
			t.Fatalf("name %q", in.Name)
		}
		tags := map[string]string{}
		for _, tg := range in.Tags {
			tags[tg.Key] = tg.Value
		}
		if tags[ssm.TagCluster] != "ops" || tags[ssm.TagFamily] != task.Family || tags[ssm.TagTaskARN] != task.TaskARN {
			t.Fatalf("tags %v", tags)
		}
		if a, _ := e.leaks(); a != 0 {
			t.Fatalf("activation not deleted after registration: %+v", e.api.Activations())
		}
		reg, err := os.ReadFile(e.path(ssm.RegistrationFile))
		if err != nil || !strings.Contains(string(reg), id) {
			t.Fatalf("registration file: %q %v", reg, err)
		}
		if fi, _ := os.Stat(e.path(ssm.RegistrationFile)); fi.Mode().Perm() != 0o600 {
			t.Fatalf("registration file mode %v", fi.Mode())
		}
	})

	t.Run("agent config rendered and hardened", func(t *testing.T) {
		seelog, err := os.ReadFile(e.path(ssm.SeelogPath))
		if err != nil {
			t.Fatal(err)
		}
		golden, _ := os.ReadFile(filepath.Join(harness.ModuleRoot(t), "ssm/testdata/seelog.xml"))
		if string(seelog) != string(golden) {
			t.Fatalf("seelog.xml differs from ssm/testdata/seelog.xml:\n%s", seelog)
		}
		raw, err := os.ReadFile(e.path(ssm.AgentConfigPath))
		if err != nil {
			t.Fatal(err)
		}
		want, _ := ssm.RenderAgentConfig(fakessm.DefaultRegion, e.api.URL())
		if string(raw) != string(want) {
			t.Fatalf("amazon-ssm-agent.json differs from the rendering:\n%s", raw)
		}
		var cfg struct {
			Profile  struct{ ShareCreds bool }
			Identity struct{ ConsumptionOrder []string }
			Mgs      struct{ DeniedPortForwardingRemoteIPs []string }
			Ssm      struct{ Endpoint, OrchestrationDirectoryCleanup string }
		}
		if err := json.Unmarshal(raw, &cfg); err != nil {
			t.Fatal(err)
		}
		denied := strings.Join(cfg.Mgs.DeniedPortForwardingRemoteIPs, ",")
		if cfg.Profile.ShareCreds || strings.Join(cfg.Identity.ConsumptionOrder, ",") != "OnPrem" ||
			!strings.Contains(denied, "169.254.170.2") || !strings.Contains(denied, "169.254.169.254") ||
			cfg.Ssm.Endpoint != e.api.URL() || cfg.Ssm.OrchestrationDirectoryCleanup != "clean-success-failed" {
			t.Fatalf("agent config not hardened: %+v", cfg)
		}
	})

	t.Run("agent child starts clean", func(t *testing.T) {
		agent, ok := nsProc(t, b, "amazon-ssm-agen")
		if !ok {
			t.Fatalf("agent not running: %+v", nsProcs(t, b.Pid))
		}
		if agent.PPID != b.Pid {
			t.Fatalf("agent parent %d, want bastion %d", agent.PPID, b.Pid)
		}
		// The agent (a Go program) reports the mask it was exec'd with;
		// its later /proc status shows its own runtime's thread masks.
		mask := b.Log.Find("agent output", map[string]string{"agent": "fake-agent exec state: SigBlk=0000000000000000 SigIgn=0000000000000000 fds=0,1,2"})
		if len(mask) == 0 {
			t.Fatalf("agent did not start with an empty signal mask, no ignored signals and only fds 0-2:\n%s", b.Log.String())
		}
		environ, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", agent.PID))
		for _, v := range []string{"SSH_PRIVATE_HOST_KEY_BASE64ENCODED", "SSH_PUBLIC_HOST_KEY_BASE64ENCODED", "ROOT_PUBLIC_SSH_KEY_BASE64ENCODED",
			"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "task-role-secret", "OPENSSH PRIVATE KEY"} {
			if strings.Contains(string(environ), v) {
				t.Fatalf("agent environment contains %s", v)
			}
		}
		worker, ok := nsProc(t, b, "ssm-agent-worke")
		if !ok {
			t.Fatalf("worker not running")
		}
		if pgid, _ := syscall.Getpgid(worker.PID); pgid != worker.PID {
			t.Fatalf("worker pgid %d, want its own group %d", pgid, worker.PID)
		}
		if pgid, _ := syscall.Getpgid(agent.PID); pgid != agent.PID {
			t.Fatalf("agent pgid %d, want its own group", pgid)
		}
	})

	t.Run("secrets never in the log", func(t *testing.T) {
		log := b.Log.String()
		for _, s := range []string{harness.B64(e.host.PEM(t)), "OPENSSH PRIVATE KEY", harness.B64(e.user.Pub)} {
			if strings.Contains(log, s) {
				t.Fatalf("log contains secret material")
			}
		}
		for _, a := range e.api.Requests() {
			_ = a
		}
		if strings.Contains(log, "-code ") {
			t.Fatalf("log contains the activation code argument")
		}
	})

	start := time.Now()
	b.Terminate()
	code := b.Wait(25 * time.Second)
	took := time.Since(start)
	if code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, b.Log.String())
	}
	e.assertNoLeaks(t)
	b.Log.WaitFor(t, time.Second, "instance deregistered", map[string]string{"instance_id": id})
	if _, err := os.Stat(e.path(ssm.RegistrationFile)); !os.IsNotExist(err) {
		t.Fatalf("registration file left: %v", err)
	}
	for _, step := range []string{"drain ssh tunnels", "stop ssm agent", "deregister managed instance", "sweep remaining processes"} {
		b.Log.WaitFor(t, time.Second, "shutdown step done", map[string]string{"step": step})
	}
	t.Logf("register → Online → SIGTERM → deregistered: exit 0, stop took %v, 0 leaks", took.Round(time.Millisecond))
}

func TestSSMStandardTier(t *testing.T) {
	t.Parallel()
	api := fakessm.NewTest(t, fakessm.Options{ActivationTier: "standard"})
	e := newSSMEnv(t, api)
	b := e.start(t, nil)
	code := b.Wait(30 * time.Second)
	if code != 4 {
		t.Fatalf("exit %d, want 4:\n%s", code, b.Log.String())
	}
	if !strings.Contains(b.Log.String(), "advanced-instances tier") && !strings.Contains(b.Log.String(), "advanced") {
		t.Fatalf("error does not explain the tier:\n%s", b.Log.String())
	}
	if n := api.Calls("CreateActivation"); n != 0 {
		t.Fatalf("CreateActivation called %d times", n)
	}
	e.assertNoLeaks(t)
}

func TestSSMRegistrationRefused(t *testing.T) {
	t.Parallel()
	e := newSSMEnv(t, nil)
	b := e.start(t, map[string]string{"FAKE_AGENT_MODE": "refuse-register"})
	if code := b.Wait(60 * time.Second); code != 4 {
		t.Fatalf("exit %d, want 4:\n%s", code, b.Log.String())
	}
	if e.api.Calls("DeleteActivation") == 0 {
		t.Fatalf("activation not deleted after refused registration")
	}
	e.assertNoLeaks(t)
}

func TestSSMActivationRejected(t *testing.T) {
	t.Parallel()
	e := newSSMEnv(t, nil)
	e.api.FailNext("RegisterManagedInstance", 1, "InvalidActivation")
	b := e.start(t, nil)
	if code := b.Wait(60 * time.Second); code != 4 {
		t.Fatalf("exit %d, want 4:\n%s", code, b.Log.String())
	}
	e.assertNoLeaks(t)
}

func TestSSMAgentIgnoresSIGTERM(t *testing.T) {
	t.Parallel()
	e := newSSMEnv(t, nil)
	b := e.start(t, map[string]string{
		"FAKE_AGENT_MODE":      "ignore-sigterm,worker-ignores-term",
		"BASTION_STOP_TIMEOUT": "12s",
	})
	id := waitOnline(t, b)
	start := time.Now()
	b.Terminate()
	code := b.Wait(15 * time.Second)
	took := time.Since(start)
	if code != 0 || took > 12*time.Second {
		t.Fatalf("exit %d after %v (budget 12s):\n%s", code, took, b.Log.String())
	}
	b.Log.WaitFor(t, time.Second, "agent stopped", map[string]string{"killed": "true"})
	b.Log.WaitFor(t, time.Second, "instance deregistered", map[string]string{"instance_id": id})
	e.assertNoLeaks(t)
	t.Logf("agent ignoring SIGTERM: killed at its share, deregistered, exit 0 after %v", took.Round(time.Millisecond))
}

func TestSSMAgentCrashRestarts(t *testing.T) {
	t.Parallel()
	e := newSSMEnv(t, nil)
	echo := harness.Serve(t, "tcp", "127.0.0.1:0", harness.Echo)
	b := e.start(t, map[string]string{
		"FAKE_AGENT_MODE":            "crash-after=1500ms",
		"BASTION_SSM_AGENT_RESTARTS": "2",
		"BASTION_ALLOW":              echo.Addr().String(),
	})
	id := waitOnline(t, b)
	// The SSH server keeps serving while the agent crashes and restarts.
	b.Log.WaitFor(t, 30*time.Second, "agent exited unexpectedly; restarting", nil)
	cfg := harness.ClientConfig(t, t.TempDir(), map[string]string{
		harness.KnownHostsPattern("127.0.0.1", b.Port): e.host.Pub,
	}, harness.Host{Alias: "bastion", HostName: "127.0.0.1", Port: b.Port, User: "root", Identity: e.user.Path})
	if r := run(t, strings.NewReader("still here\n"), 30*time.Second, "ssh", "-F", cfg, "-W", echo.Addr().String(), "bastion"); r.code != 0 || r.stdout != "still here\n" {
		t.Fatalf("tunnel during agent restarts: %+v", r)
	}
	code := b.Wait(60 * time.Second)
	if code != 4 {
		t.Fatalf("exit %d, want 4 after restarts ran out:\n%s", code, b.Log.String())
	}
	if n := len(b.Log.Find("agent exited unexpectedly; restarting", nil)); n != 2 {
		t.Fatalf("%d restarts logged, want 2", n)
	}
	b.Log.WaitFor(t, time.Second, "instance deregistered", map[string]string{"instance_id": id})
	e.assertNoLeaks(t)
}

// TestSSMRestartAfterSIGKILL: a bastion killed outright leaves its instance
// behind; the next start on the same filesystem deregisters it (stale
// registration file), and the orphan sweep removes another task's instance
// that has been ConnectionLost for longer than the threshold.
func TestSSMRestartAfterSIGKILL(t *testing.T) {
	t.Parallel()
	e := newSSMEnv(t, nil)
	b := e.start(t, nil)
	first := waitOnline(t, b)
	b.Kill(syscall.SIGKILL)
	b.Wait(10 * time.Second)
	if _, ok := e.api.Instance(first); !ok {
		t.Fatalf("SIGKILL should have left the instance behind")
	}
	// Another task of the same service, killed 20 minutes ago, and one of
	// another family that must not be touched.
	task := fakeecs.DefaultTask()
	orphan := e.api.AddInstance(fakessm.Instance{Tags: []fakessm.Tag{
		{Key: ssm.TagCluster, Value: "ops"}, {Key: ssm.TagFamily, Value: task.Family}, {Key: ssm.TagTaskARN, Value: "arn:aws:ecs:us-east-1:123456789012:task/ops/dead"},
	}})
	e.api.SetPing(orphan.InstanceID, time.Now().Add(-20*time.Minute))
	foreign := e.api.AddInstance(fakessm.Instance{Tags: []fakessm.Tag{{Key: ssm.TagCluster, Value: "ops"}, {Key: ssm.TagFamily, Value: "other"}}})
	e.api.SetPing(foreign.InstanceID, time.Now().Add(-20*time.Minute))
	recent := e.api.AddInstance(fakessm.Instance{Tags: []fakessm.Tag{{Key: ssm.TagCluster, Value: "ops"}, {Key: ssm.TagFamily, Value: task.Family}}})
	e.api.SetPing(recent.InstanceID, time.Now().Add(-2*time.Minute))

	b2 := e.start(t, nil)
	second := waitOnline(t, b2)
	b2.Log.WaitFor(t, time.Second, "previous instance deregistered", map[string]string{"instance_id": first})
	b2.Log.WaitFor(t, time.Second, "orphan deregistered", map[string]string{"instance_id": orphan.InstanceID})
	for _, keep := range []string{foreign.InstanceID, recent.InstanceID, second} {
		if _, ok := e.api.Instance(keep); !ok {
			t.Fatalf("instance %s removed, should stay", keep)
		}
	}
	for _, gone := range []string{first, orphan.InstanceID} {
		if _, ok := e.api.Instance(gone); ok {
			t.Fatalf("instance %s left behind", gone)
		}
	}
	b2.Terminate()
	if code := b2.Wait(25 * time.Second); code != 0 {
		t.Fatalf("exit %d:\n%s", code, b2.Log.String())
	}
	if _, ok := e.api.Instance(second); ok {
		t.Fatalf("second instance not deregistered")
	}
}

// TestSSMFaults: each API operation throttled, failing with 500, or timing
// out once is retried; the bastion registers and, at stop, leaves nothing.
func TestSSMFaults(t *testing.T) {
	t.Parallel()
	ops := []string{"GetServiceSetting", "DescribeInstanceInformation", "CreateActivation", "RegisterManagedInstance", "DeleteActivation", "DeregisterManagedInstance"}
	faults := []string{"ThrottlingException", "InternalServerError", "timeout"}
	for _, op := range ops {
		for _, f := range faults {
			t.Run(op+"/"+f, func(t *testing.T) {
				t.Parallel()
				e := newSSMEnv(t, nil)
				inject := func() {
					if f == "timeout" {
						e.api.DelayNext(op, 1, 60*time.Second)
					} else {
						e.api.FailNext(op, 1, f)
					}
				}
				if op != "DeregisterManagedInstance" {
					inject()
				}
				b := e.start(t, nil)
				waitOnline(t, b)
				if op == "DeregisterManagedInstance" {
					inject()
				}
				code, took := terminate(t, b, 20*time.Second)
				row(t, op+" "+f+" once, then SIGTERM when Online", code, took, e)
				if code != 0 {
					t.Fatalf("exit %d:\n%s", code, b.Log.String())
				}
				e.assertNoLeaks(t)
				if n := e.api.FaultsServed(op); n != 1 {
					t.Fatalf("%s: %d injected faults served, want 1: the fault never fired", op, n)
				}
			})
		}
	}
}

// TestSSMStopTimes measures stop times over several runs (STOP_RUNS,
// default 3; the closing note used 20): a normal stop with the agent's real
// ~7 s shutdown, and an agent that ignores SIGTERM.
func TestSSMStopTimes(t *testing.T) {
	t.Parallel()
	runs := 3
	if v, err := strconv.Atoi(os.Getenv("STOP_RUNS")); err == nil && v > 0 {
		runs = v
	}
	measure := func(name string, extra map[string]string, budget time.Duration) {
		var mu sync.Mutex
		var times []time.Duration
		var wg sync.WaitGroup
		for i := 0; i < runs; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				e := newSSMEnv(t, nil)
				b := e.start(t, extra)
				waitOnline(t, b)
				start := time.Now()
				b.Terminate()
				code := b.Wait(budget + 5*time.Second)
				d := time.Since(start)
				if code != 0 || d > budget {
					t.Errorf("%s: exit %d after %v (budget %v)", name, code, d, budget)
				}
				if a, in := e.leaks(); a+in != 0 {
					t.Errorf("%s: %d activations, %d instances leaked", name, a, in)
				}
				mu.Lock()
				times = append(times, d)
				mu.Unlock()
			}()
		}
		wg.Wait()
		sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
		if len(times) > 0 {
			t.Logf("%s: %d runs, median %v, worst %v (budget %v)", name, len(times),
				times[len(times)/2].Round(time.Millisecond), times[len(times)-1].Round(time.Millisecond), budget)
		}
	}
	measure("normal stop (agent stops in 7s)", map[string]string{"FAKE_AGENT_STOP_DELAY": "7s", "BASTION_STOP_TIMEOUT": "30s"}, 30*time.Second)
	measure("agent ignores SIGTERM", map[string]string{"FAKE_AGENT_MODE": "ignore-sigterm", "BASTION_STOP_TIMEOUT": "30s"}, 30*time.Second)
}

// TestSSMFiftyBastions: 50 bastions at once against an API throttled to a
// few requests per second all register and all deregister.
func TestSSMFiftyBastions(t *testing.T) {
	t.Parallel()
	api := fakessm.NewTest(t, fakessm.Options{})
	api.RateLimit(10)
	const n = 50
	bastions := make([]*harness.Bastion, n)
	envs := make([]*ssmEnv, n)
	for i := 0; i < n; i++ {
		envs[i] = newSSMEnv(t, api)
	}
	// Started one after another (each returns once it listens, in
	// milliseconds), so all 50 register concurrently.
	for i := 0; i < n; i++ {
		bastions[i] = envs[i].start(t, map[string]string{
			"BASTION_SSM_READY_TIMEOUT": "4m", "BASTION_STOP_TIMEOUT": "60s", "INSTANCE_NAME": fmt.Sprintf("bastion-%02d", i),
			"BASTION_SSM_ORPHAN_SWEEP": "false",
			// The real agent pings every 5 minutes; 50 agents pinging
			// every 2 s would be the whole rate limit on their own.
			"FAKE_AGENT_PING_INTERVAL": "30s",
		})
	}
	for _, b := range bastions {
		b.Log.WaitFor(t, 5*time.Minute, "ssm agent online", nil)
	}
	if got := len(api.Instances()); got != n {
		t.Fatalf("%d instances registered, want %d", got, n)
	}
	for _, b := range bastions {
		b.Terminate()
	}
	for i, b := range bastions {
		if code := b.Wait(70 * time.Second); code != 0 {
			t.Fatalf("bastion %d: exit %d:\n%s", i, code, b.Log.String())
		}
	}
	a, in := len(api.Activations()), len(api.Instances())
	var throttled int
	for _, r := range api.Requests() {
		if r.ErrorCode == "ThrottlingException" {
			throttled++
		}
	}
	t.Logf("50 bastions under 10 req/s: all registered and deregistered; %d requests throttled; leaks: %d activations, %d instances", throttled, a, in)
	if a != 0 || in != 0 {
		t.Fatalf("leaked %d activations and %d instances", a, in)
	}
	if throttled == 0 {
		t.Fatalf("no request was throttled: the test did not run under the rate limit it claims")
	}
}
