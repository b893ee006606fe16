package ssm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
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
	awsssm "github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/ssm/types"
	"github.com/aws/smithy-go"
)

// apiErr is a service error with a code, as the SDK returns it.
func apiErr(code string) error {
	return &smithy.GenericAPIError{Code: code, Message: code + " from fake"}
}

// fakeAPI keeps the state a real SSM would (activations, managed instances)
// so tests can assert that nothing is left behind.
type fakeAPI struct {
	mu    sync.Mutex
	calls []string // "Op" or "Op arg"

	tier    string // activation tier; "" = advanced
	tierARN string
	errs    map[string]error // by op name: returned instead of acting

	activations map[string]bool // id → usable
	actMeta     map[string]*types.Activation
	nextAct     int
	// extraCreates: for each entry, CreateActivation first creates an
	// activation it does not report (an attempt whose response was lost),
	// from the same input, then adjusted by the func (nil: unchanged).
	extraCreates []func(*types.Activation)
	// lateCreate: an attempt still in flight lands when our activation is
	// deleted, creating one more unreported activation.
	lateCreate  bool
	deleteFails int // DeleteActivation calls that time out first
	// createErr is returned by CreateActivation after extraCreates.
	createErr error
	actPage   int                                   // DescribeActivations page size; 0 = MaxResults
	instances map[string]*types.InstanceInformation // managed instances
	nextMI    int

	onlineAfter int // readiness polls answered ConnectionLost before Online; <0 never
	polls       int

	sweepPages map[string]*awsssm.DescribeInstanceInformationOutput // by NextToken ("" first)

	createIn   *awsssm.CreateActivationInput
	describeIn []*awsssm.DescribeInstanceInformationInput
	noDeadline []string // ops called without a ctx deadline
	doneCtx    []string // ops called with a done ctx
}

func newFakeAPI() *fakeAPI {
	return &fakeAPI{
		errs:        map[string]error{},
		activations: map[string]bool{},
		actMeta:     map[string]*types.Activation{},
		instances:   map[string]*types.InstanceInformation{},
	}
}

func (f *fakeAPI) record(ctx context.Context, op, arg string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := op
	if arg != "" {
		c += " " + arg
	}
	f.calls = append(f.calls, c)
	if _, ok := ctx.Deadline(); !ok {
		f.noDeadline = append(f.noDeadline, c)
	}
	if ctx.Err() != nil {
		f.doneCtx = append(f.doneCtx, c)
		return ctx.Err()
	}
	return f.errs[op]
}

func (f *fakeAPI) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeAPI) GetServiceSetting(ctx context.Context, in *awsssm.GetServiceSettingInput, _ ...func(*awsssm.Options)) (*awsssm.GetServiceSettingOutput, error) {
	if err := f.record(ctx, "GetServiceSetting", aws.ToString(in.SettingId)); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	tier := f.tier
	if tier == "" {
		tier = "advanced"
	}
	return &awsssm.GetServiceSettingOutput{ServiceSetting: &types.ServiceSetting{
		SettingId: in.SettingId, SettingValue: aws.String(tier), ARN: aws.String(f.tierARN),
	}}, nil
}

func (f *fakeAPI) CreateActivation(ctx context.Context, in *awsssm.CreateActivationInput, _ ...func(*awsssm.Options)) (*awsssm.CreateActivationOutput, error) {
	if err := f.record(ctx, "CreateActivation", ""); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.createIn = in
	for _, mut := range f.extraCreates {
		a := f.newActivationLocked(in)
		if mut != nil {
			mut(a)
		}
	}
	if f.createErr != nil {
		return nil, f.createErr
	}
	a := f.newActivationLocked(in)
	return &awsssm.CreateActivationOutput{ActivationId: a.ActivationId, ActivationCode: aws.String(testCode)}, nil
}

// newActivationLocked stores an activation made from in, created at t0.
func (f *fakeAPI) newActivationLocked(in *awsssm.CreateActivationInput) *types.Activation {
	f.nextAct++
	id := fmt.Sprintf("00000000-0000-0000-0000-%012d", f.nextAct)
	f.activations[id] = true
	a := &types.Activation{
		ActivationId: aws.String(id), DefaultInstanceName: in.DefaultInstanceName, Description: in.Description,
		IamRole: in.IamRole, RegistrationLimit: in.RegistrationLimit, RegistrationsCount: aws.Int32(0),
		CreatedDate: aws.Time(t0), ExpirationDate: in.ExpirationDate, Tags: slices.Clone(in.Tags),
	}
	f.actMeta[id] = a
	return a
}

func (f *fakeAPI) DeleteActivation(ctx context.Context, in *awsssm.DeleteActivationInput, _ ...func(*awsssm.Options)) (*awsssm.DeleteActivationOutput, error) {
	id := aws.ToString(in.ActivationId)
	if err := f.record(ctx, "DeleteActivation", id); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.deleteFails > 0 {
		f.deleteFails--
		return nil, context.DeadlineExceeded
	}
	if _, ok := f.activations[id]; !ok {
		return nil, apiErr("InvalidActivationId")
	}
	delete(f.activations, id)
	delete(f.actMeta, id)
	if f.lateCreate {
		f.lateCreate = false
		f.newActivationLocked(f.createIn)
	}
	return &awsssm.DeleteActivationOutput{}, nil
}

// DescribeActivations supports the DefaultInstanceName and ActivationIds
// filters; pages hold actPage entries when set.
func (f *fakeAPI) DescribeActivations(ctx context.Context, in *awsssm.DescribeActivationsInput, _ ...func(*awsssm.Options)) (*awsssm.DescribeActivationsOutput, error) {
	arg := ""
	for _, fl := range in.Filters {
		arg += string(fl.FilterKey) + "=" + strings.Join(fl.FilterValues, ",")
	}
	if err := f.record(ctx, "DescribeActivations", arg); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []string
	for id, a := range f.actMeta {
		ok := true
		for _, fl := range in.Filters {
			switch fl.FilterKey {
			case types.DescribeActivationsFilterKeysDefaultInstanceName:
				ok = ok && slices.Contains(fl.FilterValues, aws.ToString(a.DefaultInstanceName))
			case types.DescribeActivationsFilterKeysActivationIds:
				ok = ok && slices.Contains(fl.FilterValues, id)
			default:
				return nil, apiErr("InvalidFilter")
			}
		}
		if ok {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	start := 0
	if tok := aws.ToString(in.NextToken); tok != "" {
		start = len(ids)
		for i, id := range ids {
			if id > tok {
				start = i
				break
			}
		}
	}
	size := int(aws.ToInt32(in.MaxResults))
	if f.actPage > 0 {
		size = f.actPage
	}
	if size <= 0 {
		size = 10
	}
	end := min(start+size, len(ids))
	out := &awsssm.DescribeActivationsOutput{}
	for _, id := range ids[start:end] {
		c := *f.actMeta[id]
		c.Tags = slices.Clone(c.Tags)
		out.ActivationList = append(out.ActivationList, c)
	}
	if end < len(ids) {
		out.NextToken = aws.String(ids[end-1])
	}
	return out, nil
}

// seedActivation stores an activation created by someone else.
func (f *fakeAPI) seedActivation(a types.Activation) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := fmt.Sprintf("11111111-0000-0000-0000-%012d", len(f.actMeta)+1)
	a.ActivationId = aws.String(id)
	f.activations[id] = aws.ToInt32(a.RegistrationsCount) == 0
	f.actMeta[id] = &a
	return id
}

func (f *fakeAPI) DeregisterManagedInstance(ctx context.Context, in *awsssm.DeregisterManagedInstanceInput, _ ...func(*awsssm.Options)) (*awsssm.DeregisterManagedInstanceOutput, error) {
	id := aws.ToString(in.InstanceId)
	if err := f.record(ctx, "DeregisterManagedInstance", id); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.instances[id]; !ok {
		return nil, apiErr("InvalidInstanceId")
	}
	delete(f.instances, id)
	return &awsssm.DeregisterManagedInstanceOutput{}, nil
}

func (f *fakeAPI) DescribeInstanceInformation(ctx context.Context, in *awsssm.DescribeInstanceInformationInput, _ ...func(*awsssm.Options)) (*awsssm.DescribeInstanceInformationOutput, error) {
	key := ""
	if len(in.Filters) > 0 {
		key = aws.ToString(in.Filters[0].Key)
	}
	if err := f.record(ctx, "DescribeInstanceInformation", key); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.describeIn = append(f.describeIn, in)
	out := &awsssm.DescribeInstanceInformationOutput{}
	switch {
	case key == "InstanceIds":
		f.polls++
		for _, id := range in.Filters[0].Values {
			ii, ok := f.instances[id]
			if !ok {
				continue
			}
			c := *ii
			c.PingStatus = types.PingStatusConnectionLost
			if f.onlineAfter >= 0 && f.polls > f.onlineAfter {
				c.PingStatus = types.PingStatusOnline
			}
			out.InstanceInformationList = append(out.InstanceInformationList, c)
		}
	case key == "ActivationIds":
		for _, ii := range f.instances {
			if slices.Contains(in.Filters[0].Values, aws.ToString(ii.ActivationId)) {
				out.InstanceInformationList = append(out.InstanceInformationList, *ii)
			}
		}
	case strings.HasPrefix(key, "tag:"):
		if p := f.sweepPages[aws.ToString(in.NextToken)]; p != nil {
			return p, nil
		}
	}
	return out, nil
}

// registerInstance is what RegisterManagedInstance does when the fake agent
// registers with an activation.
func (f *fakeAPI) registerInstance(activationID string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.activations[activationID] {
		return "", errors.New("InvalidActivation: Not existing activation ID")
	}
	f.activations[activationID] = false // RegistrationLimit 1
	f.actMeta[activationID].RegistrationsCount = aws.Int32(1)
	f.nextMI++
	id := fmt.Sprintf("mi-%017x", f.nextMI)
	f.instances[id] = &types.InstanceInformation{InstanceId: aws.String(id), ActivationId: aws.String(activationID)}
	return id, nil
}

func (f *fakeAPI) addInstance(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.instances[id] = &types.InstanceInformation{InstanceId: aws.String(id)}
}

// leftovers lists activations and instances that still exist.
func (f *fakeAPI) leftovers() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var l []string
	for id := range f.activations {
		l = append(l, "activation "+id)
	}
	for id := range f.instances {
		l = append(l, "instance "+id)
	}
	slices.Sort(l)
	return l
}

const testCode = "SECRETCODE0123456789abcdef"

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

// fakeStarter plays amazon-ssm-agent: "-register" registers with the fake
// API, writes the registration file under root and prints what the real
// agent prints; without flags it is the long-running agent.
type fakeStarter struct {
	t    *testing.T
	api  *fakeAPI
	root string

	regMode string // "" ok, "refused", "mismatch", "noline", "persistfail", "hang"
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
		p.exit(s.register(cmd))
		s.procs = append(s.procs, p)
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
	if argAfter(cmd.Args, "-code") != testCode || !slices.Contains(cmd.Args, "-y") {
		logf("ERROR", "Registration failed due to bad arguments %q", cmd.Args)
		return 1
	}
	fmt.Fprintln(w, "Initializing new seelog logger")
	if s.regMode == "refused" {
		logf("ERROR", "Registration failed due to error registering the instance with AWS SSM. InvalidActivation: Not existing activation ID")
		return 1
	}
	id, err := s.api.registerInstance(argAfter(cmd.Args, "-id"))
	if err != nil {
		logf("ERROR", "Registration failed due to error registering the instance with AWS SSM. %v", err)
		return 1
	}
	if s.regMode == "persistfail" {
		logf("ERROR", "Registration failed due to error persisting the instance registration information. disk full")
		return 1
	}
	reg, _ := json.Marshal(map[string]string{"ManagedInstanceID": id, "Region": argAfter(cmd.Args, "-region")})
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
		logf("INFO", "Successfully registered the instance with AWS SSM using Managed instance-id: %s", id)
	}
	return 0
}

func (s *fakeStarter) Starts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.starts
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

// syncBuffer collects log output from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// records returns the JSON log records.
func (b *syncBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	var recs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		recs = append(recs, m)
	}
	return recs
}

var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

const taskJSON = `{"Cluster":"arn:aws:ecs:us-east-1:123456789012:cluster/ops","TaskARN":"arn:aws:ecs:us-east-1:123456789012:task/ops/0f1e2d3c4b5a69788796a5b4c3d2e1f0",
 "Family":"bastion","Revision":"7","AvailabilityZone":"us-east-1a","LaunchType":"FARGATE",
 "Containers":[{"Name":"bastion","DockerId":"0f1e2d3c4b5a69788796a5b4c3d2e1f0-1234567890","Type":"NORMAL"}]}`

type harness struct {
	l     *Lifecycle
	api   *fakeAPI
	st    *fakeStarter
	logs  *syncBuffer
	root  string
	agent string // path of the stub agent executable
}

// newHarness returns a Lifecycle on ECS (metadata from an httptest server)
// with fakes, a temporary root and fast timings; mut adjusts the Config.
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
	meta := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v4/abc/task" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte(taskJSON))
	}))
	t.Cleanup(meta.Close)

	cfg := DefaultConfig()
	cfg.Region = "us-east-1"
	cfg.IAMRole = "bastion-ssm"
	cfg.MetadataURI = meta.URL + "/v4/abc"
	cfg.AgentPath = agent
	cfg.ReadyTimeout = 2 * time.Second
	cfg.RestartBackoff = time.Millisecond
	cfg.Clock = func() time.Time { return t0 }
	if mut != nil {
		mut(&cfg)
	}
	api := newFakeAPI()
	st := &fakeStarter{t: t, api: api, root: root}
	logs := &syncBuffer{}
	l := New(cfg, api, st, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	l.root = root
	l.callTimeout = 2 * time.Second
	l.cleanupTimeout = 2 * time.Second
	l.pollMin, l.pollMax = time.Millisecond, 5*time.Millisecond
	l.drainDelay = 10 * time.Millisecond
	t.Cleanup(func() {
		if strings.Contains(logs.String(), testCode) {
			t.Errorf("activation code logged:\n%s", logs.String())
		}
		if api.noDeadline != nil {
			t.Errorf("SDK calls without a deadline: %v", api.noDeadline)
		}
	})
	return &harness{l: l, api: api, st: st, logs: logs, root: root, agent: agent}
}

func (h *harness) exists(p string) bool {
	_, err := os.Lstat(filepath.Join(h.root, p))
	return err == nil
}
