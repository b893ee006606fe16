package ssm

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ecs"
	awsssm "github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/bastion-dev/bastion/internal/logtest"
	"github.com/bastion-dev/bastion/test/fakeecs"
	"github.com/bastion-dev/bastion/test/fakessm"
)

// The unit tests run the real SDK client against test/fakessm, the one model
// of the SSM service in this repository, started in process.

// testAttempts is the SDK's attempts per call here: a fault must be
// injected this many times to fail one call.
const testAttempts = 2

// newTestAPI is the real SSM client aimed at srv, retrying fast, wrapped so
// that calls made without a deadline are reported.
func newTestAPI(t *testing.T, srv *fakessm.Server) *checkedAPI {
	t.Helper()
	client := awsssm.New(awsssm.Options{
		Region:       srv.Region(),
		BaseEndpoint: aws.String(srv.URL()),
		Credentials:  credentials.NewStaticCredentialsProvider(fakessm.DefaultAccessKeyID, fakessm.DefaultSecretAccessKey, ""),
		Retryer: retry.NewStandard(func(o *retry.StandardOptions) {
			o.MaxAttempts = testAttempts
			o.Backoff = retry.NewExponentialJitterBackoff(5 * time.Millisecond)
			o.RateLimiter = ratelimit.None
		}),
	})
	api := &checkedAPI{API: client}
	t.Cleanup(func() {
		if len(api.noDeadline) > 0 {
			t.Errorf("SDK calls without a deadline: %v", api.noDeadline)
		}
	})
	return api
}

// checkedAPI records the operations called without a context deadline,
// and those called with a context already done.
type checkedAPI struct {
	API
	mu         sync.Mutex
	noDeadline []string
	doneCtx    []string
}

func (c *checkedAPI) check(ctx context.Context, op string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := ctx.Deadline(); !ok {
		c.noDeadline = append(c.noDeadline, op)
	}
	if ctx.Err() != nil {
		c.doneCtx = append(c.doneCtx, op)
	}
}

func (c *checkedAPI) calledDone() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.doneCtx)
}

func (c *checkedAPI) GetServiceSetting(ctx context.Context, in *awsssm.GetServiceSettingInput, o ...func(*awsssm.Options)) (*awsssm.GetServiceSettingOutput, error) {
	c.check(ctx, "GetServiceSetting")
	return c.API.GetServiceSetting(ctx, in, o...)
}

func (c *checkedAPI) CreateActivation(ctx context.Context, in *awsssm.CreateActivationInput, o ...func(*awsssm.Options)) (*awsssm.CreateActivationOutput, error) {
	c.check(ctx, "CreateActivation")
	return c.API.CreateActivation(ctx, in, o...)
}

func (c *checkedAPI) DeleteActivation(ctx context.Context, in *awsssm.DeleteActivationInput, o ...func(*awsssm.Options)) (*awsssm.DeleteActivationOutput, error) {
	c.check(ctx, "DeleteActivation")
	return c.API.DeleteActivation(ctx, in, o...)
}

func (c *checkedAPI) DescribeActivations(ctx context.Context, in *awsssm.DescribeActivationsInput, o ...func(*awsssm.Options)) (*awsssm.DescribeActivationsOutput, error) {
	c.check(ctx, "DescribeActivations")
	return c.API.DescribeActivations(ctx, in, o...)
}

func (c *checkedAPI) DescribeInstanceInformation(ctx context.Context, in *awsssm.DescribeInstanceInformationInput, o ...func(*awsssm.Options)) (*awsssm.DescribeInstanceInformationOutput, error) {
	c.check(ctx, "DescribeInstanceInformation")
	return c.API.DescribeInstanceInformation(ctx, in, o...)
}

func (c *checkedAPI) ListTagsForResource(ctx context.Context, in *awsssm.ListTagsForResourceInput, o ...func(*awsssm.Options)) (*awsssm.ListTagsForResourceOutput, error) {
	c.check(ctx, "ListTagsForResource")
	return c.API.ListTagsForResource(ctx, in, o...)
}

func (c *checkedAPI) DescribeSessions(ctx context.Context, in *awsssm.DescribeSessionsInput, o ...func(*awsssm.Options)) (*awsssm.DescribeSessionsOutput, error) {
	c.check(ctx, "DescribeSessions")
	return c.API.DescribeSessions(ctx, in, o...)
}

func (c *checkedAPI) DeregisterManagedInstance(ctx context.Context, in *awsssm.DeregisterManagedInstanceInput, o ...func(*awsssm.Options)) (*awsssm.DeregisterManagedInstanceOutput, error) {
	c.check(ctx, "DeregisterManagedInstance")
	return c.API.DeregisterManagedInstance(ctx, in, o...)
}

// fail makes op fail with code for n calls of the lifecycle (each retried
// testAttempts times by the SDK); n <= 0: every call.
func fail(srv *fakessm.Server, op string, n int, code string) {
	srv.Inject(op, fakessm.Fault{Count: n * testAttempts, Code: code})
}

// calls lists the API requests as "Op" or "Op arg", arg being what tells
// calls of one operation apart (setting, first filter key, id).
func calls(srv *fakessm.Server) []string {
	var out []string
	for _, r := range srv.Requests() {
		var in struct {
			SettingId, ActivationId, InstanceId string
			Filters                             []struct {
				Key, FilterKey       string
				Values, FilterValues []string
			}
		}
		_ = json.Unmarshal([]byte(r.Body), &in)
		arg := in.SettingId + in.ActivationId + in.InstanceId
		if len(in.Filters) > 0 {
			f := in.Filters[0]
			arg = f.Key
			if f.FilterKey != "" {
				arg = f.FilterKey + "=" + strings.Join(f.FilterValues, ",")
			}
		}
		out = append(out, strings.TrimSpace(r.Op+" "+arg))
	}
	return out
}

// leftovers lists the activations and instances that still exist.
func leftovers(srv *fakessm.Server) []string {
	var l []string
	for _, a := range srv.Activations() {
		l = append(l, "activation "+a.ActivationID)
	}
	for _, in := range srv.Instances() {
		l = append(l, "instance "+in.InstanceID)
	}
	slices.Sort(l)
	return l
}

// fakeProc is a pure-Go Process.
type fakeProc struct {
	pid        int
	done       chan struct{}
	once       sync.Once
	mu         sync.Mutex
	code       int
	stops      int
	signals    []syscall.Signal
	ignoreTerm bool
}

func newFakeProc(pid int) *fakeProc { return &fakeProc{pid: pid, done: make(chan struct{})} }

func (p *fakeProc) exit(code int) {
	p.once.Do(func() {
		p.mu.Lock()
		p.code = code
		p.mu.Unlock()
		close(p.done)
	})
}
func (p *fakeProc) Pid() int              { return p.pid }
func (p *fakeProc) Done() <-chan struct{} { return p.done }
func (p *fakeProc) ExitCode() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.code
}
func (p *fakeProc) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	p.signals = append(p.signals, sig)
	p.mu.Unlock()
	return nil
}
func (p *fakeProc) Stop(ctx context.Context) (bool, error) {
	p.mu.Lock()
	p.stops++
	ignore := p.ignoreTerm
	p.mu.Unlock()
	select {
	case <-p.done:
		return false, nil
	default:
	}
	if !ignore {
		p.exit(0)
		return false, nil
	}
	<-ctx.Done()
	p.exit(128 + int(syscall.SIGKILL))
	return true, nil
}
func (p *fakeProc) Stops() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stops
}

// fakeStarter plays amazon-ssm-agent in process: "-register" registers with
// the fake API, writes the registration file under root and prints what the
// real agent prints; without flags it is the long-running agent, which pings
// once at start as the real one does (unless noPing).
type fakeStarter struct {
	t    *testing.T
	srv  *fakessm.Server
	root string

	// regMode: "" ok, "refused", "mismatch", "noline", "persistfail";
	// "hang": the process never ends (until stopped); "hang-registered": it
	// registers at the API, then hangs before reporting anything.
	regMode string
	noPing  bool
	// agent returns the Process of the n-th long-running start (0-based);
	// nil: one that runs until stopped.
	agent func(n int) *fakeProc
	err   error // returned by Start for the long-running agent

	mu     sync.Mutex
	args   [][]string
	procs  []*fakeProc
	starts int // long-running starts
}

func (s *fakeStarter) Start(cmd *exec.Cmd) (Process, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cmd.SysProcAttr == nil || !cmd.SysProcAttr.Setpgid {
		s.t.Errorf("agent started without its own process group: %v", cmd.Args[1:])
	}
	if _, ok := cmd.Stdout.(*os.File); !ok || cmd.Stdout != cmd.Stderr {
		s.t.Errorf("stdout/stderr not the lifecycle's pipe")
	}
	s.args = append(s.args, slices.Clone(cmd.Args[1:]))
	if slices.Contains(cmd.Args, "-register") {
		p := newFakeProc(100 + len(s.args))
		s.procs = append(s.procs, p)
		switch s.regMode {
		case "hang":
		case "hang-registered":
			if _, err := s.srv.RegisterInstance(argAfter(cmd.Args, "-id"), argAfter(cmd.Args, "-code")); err != nil {
				s.t.Error(err)
			}
		default:
			p.exit(s.register(cmd))
		}
		return p, nil
	}
	if s.err != nil {
		return nil, s.err
	}
	var p *fakeProc
	if s.agent != nil {
		p = s.agent(s.starts)
	}
	if p == nil {
		p = newFakeProc(200 + s.starts)
	}
	s.starts++
	s.procs = append(s.procs, p)
	if !s.noPing {
		if reg, err := readRegistration(filepath.Join(s.root, RegistrationFile)); err == nil {
			s.srv.SetPing(reg.ManagedInstanceID, t0)
		}
	}
	return p, nil
}

func argAfter(args []string, flag string) string {
	if i := slices.Index(args, flag); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return ""
}

func (s *fakeStarter) register(cmd *exec.Cmd) int {
	w := cmd.Stdout.(*os.File)
	logf := func(level, format string, a ...any) {
		fmt.Fprintf(w, "2025-01-02 03:04:05.0000 %s %s\n", level, fmt.Sprintf(format, a...))
	}
	if !slices.Contains(cmd.Args, "-y") {
		logf("ERROR", "Registration failed due to EOF")
		return 1
	}
	fmt.Fprintln(w, "Initializing new seelog logger")
	if s.regMode == "refused" {
		logf("ERROR", "Registration failed due to error registering the instance with AWS SSM. InvalidActivation: Not existing activation ID")
		return 1
	}
	in, err := s.srv.RegisterInstance(argAfter(cmd.Args, "-id"), argAfter(cmd.Args, "-code"))
	if err != nil {
		logf("ERROR", "Registration failed due to error registering the instance with AWS SSM. %v", err)
		return 1
	}
	if s.regMode == "persistfail" {
		logf("ERROR", "Registration failed due to error persisting the instance registration information. disk full")
		return 1
	}
	reg, _ := json.Marshal(map[string]string{"ManagedInstanceID": in.InstanceID, "Region": argAfter(cmd.Args, "-region")})
	path := filepath.Join(s.root, RegistrationFile)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		s.t.Error(err)
	}
	if err := os.WriteFile(path, reg, 0o600); err != nil {
		s.t.Error(err)
	}
	switch s.regMode {
	case "noline":
	case "mismatch":
		logf("INFO", "Successfully registered the instance with AWS SSM using Managed instance-id: %s", "mi-0123456789abcdef0")
	default:
		logf("INFO", "Successfully registered the instance with AWS SSM using Managed instance-id: %s", in.InstanceID)
	}
	return 0
}

func (s *fakeStarter) Starts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.starts
}

// codes returns the activation codes the agent was given.
func (s *fakeStarter) codes() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, a := range s.args {
		if c := argAfter(a, "-code"); c != "" {
			out = append(out, c)
		}
	}
	return out
}

func (s *fakeStarter) lastAgent() *fakeProc {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.procs) - 1; i >= 0; i-- {
		if !slices.Contains(s.args[i], "-register") {
			return s.procs[i]
		}
	}
	return nil
}

// t0 is the clock of the lifecycle and of the fake service alike.
var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

type harness struct {
	l     *Lifecycle
	srv   *fakessm.Server
	api   *checkedAPI
	ecs   *fakeecs.Server
	st    *fakeStarter
	logs  *logtest.Buffer
	root  string
	agent string // path of the stub agent executable
}

// newHarness returns a Lifecycle on ECS (metadata from test/fakeecs) with the
// fake SSM service, an in-process agent, a temporary root and fast timings;
// mut adjusts the Config.
func newHarness(t *testing.T, mut func(*Config)) *harness {
	t.Helper()
	root := t.TempDir()
	agent := filepath.Join(root, "bin", "amazon-ssm-agent")
	if err := os.MkdirAll(filepath.Dir(agent), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(agent, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ecsSrv := fakeecs.NewTest(t, fakeecs.DefaultTask())
	srv := fakessm.NewTest(t, fakessm.Options{Clock: func() time.Time { return t0 }})

	cfg := DefaultConfig()
	cfg.Region = srv.Region()
	cfg.IAMRole = "bastion-ssm"
	cfg.MetadataURI = ecsSrv.URI()
	cfg.AgentPath = agent
	cfg.ReadyTimeout = 2 * time.Second
	cfg.RestartBackoff = time.Millisecond
	cfg.Clock = func() time.Time { return t0 }
	if mut != nil {
		mut(&cfg)
	}
	api := newTestAPI(t, srv)
	tasks := ecs.New(ecs.Options{
		Region:       fakeecs.DefaultRegion,
		BaseEndpoint: aws.String(ecsSrv.URL()),
		Credentials:  credentials.NewStaticCredentialsProvider(fakeecs.DefaultAccessKeyID, fakeecs.DefaultSecretAccessKey, ""),
		Retryer:      retry.NewStandard(func(o *retry.StandardOptions) { o.MaxAttempts = 1 }),
	})
	st := &fakeStarter{t: t, srv: srv, root: root}
	log, logs := logtest.New(slog.LevelDebug)
	l := New(cfg, Clients{SSM: api, ECS: tasks}, st, log)
	l.root = root
	l.callTimeout = 2 * time.Second
	l.pollMin, l.pollMax = time.Millisecond, 5*time.Millisecond
	l.retryMin, l.retryMax = time.Millisecond, 5*time.Millisecond
	l.drainDelay = 10 * time.Millisecond
	t.Cleanup(func() {
		for _, code := range st.codes() {
			if strings.Contains(logs.String(), code) {
				t.Errorf("activation code logged:\n%s", logs.String())
			}
		}
	})
	return &harness{l: l, srv: srv, api: api, ecs: ecsSrv, st: st, logs: logs, root: root, agent: agent}
}

// shutdown is what the caller of Start runs at stop, after a successful
// Start as after a failed or abandoned one: StopAgent, then Deregister.
// writeRegistration writes the agent's registration file, as a previous
// run left it, and returns its path.
func (h *harness) writeRegistration(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(h.root, RegistrationFile)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func (h *harness) shutdown(t *testing.T) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.l.StopAgent(ctx); err != nil {
		t.Errorf("StopAgent: %v", err)
	}
	return h.l.Deregister(ctx)
}

// waitLog waits for a log record with message msg.
func (h *harness) waitLog(t *testing.T, msg string) map[string]any {
	t.Helper()
	return h.logs.WaitFor(t, 10*time.Second, msg, nil)
}

func (h *harness) exists(p string) bool {
	_, err := os.Lstat(filepath.Join(h.root, p))
	return err == nil
}
