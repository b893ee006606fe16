package ssm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/internal/awsconf"
	"github.com/bastion-dev/bastion/test/fakeecs"
	"github.com/bastion-dev/bastion/test/fakessm"
)

func TestStartHappyPath(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.Tags = map[string]string{"team": "db"}
		c.LogGroup = "/bastion/agent"
		c.Endpoint = "http://127.0.0.1:4566"
	})
	// Online at the third readiness poll.
	h.st.noPing = true
	var polls atomic.Int32
	h.srv.After("DescribeInstanceInformation", func(r fakessm.Request) {
		if strings.Contains(r.Body, `"InstanceIds"`) && polls.Add(1) == 2 {
			if reg, err := readRegistration(filepath.Join(h.root, RegistrationFile)); err == nil {
				h.srv.SetPing(reg.ManagedInstanceID, t0)
			}
		}
	})
	if err := os.MkdirAll(filepath.Join(h.root, IPCDir, "health"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := h.l.Start(ctx); err != nil {
		t.Fatalf("Start: %v\n%s", err, h.logs)
	}
	id := h.l.InstanceID()
	if !instanceIDPattern.MatchString(id) {
		t.Fatalf("InstanceID = %q", id)
	}
	act := argAfter(h.st.args[0], "-id")
	want := []string{
		"GetServiceSetting /ssm/managed-instance/activation-tier",
		"DescribeInstanceInformation tag:bastion:ecs-cluster", // orphan sweep
		"CreateActivation",
		"DeleteActivation " + act,
		"DescribeActivations DefaultInstanceName=bastion-0f1e2d3c4b5a69788796a5b4c3d2e1f0", // duplicates, once
		"DescribeInstanceInformation InstanceIds",
		"DescribeInstanceInformation InstanceIds",
		"DescribeInstanceInformation InstanceIds",
	}
	if got := calls(h.srv); !slices.Equal(got, want) {
		t.Errorf("calls:\n got %q\nwant %q", got, want)
	}

	in, ok := h.srv.Activation(act)
	if !ok || in.IamRole != "bastion-ssm" || in.RegistrationLimit != 1 || !in.Deleted {
		t.Errorf("activation %+v", in)
	}
	if in.DefaultInstanceName != "bastion-0f1e2d3c4b5a69788796a5b4c3d2e1f0" {
		t.Errorf("DefaultInstanceName = %q", in.DefaultInstanceName)
	}
	if !regexp.MustCompile(`^bastion arn:aws:ecs:us-east-1:123456789012:task/ops/0f1e2d3c4b5a69788796a5b4c3d2e1f0 run [0-9a-f]{16}$`).MatchString(in.Description) {
		t.Errorf("Description = %q", in.Description)
	}
	if !in.ExpirationDate.Equal(t0.Add(time.Hour)) {
		t.Errorf("ExpirationDate = %v", in.ExpirationDate)
	}
	tags := map[string]string{}
	for _, tg := range in.Tags {
		tags[tg.Key] = tg.Value
	}
	wantTags := map[string]string{
		TagCluster:   "ops",
		TagTaskARN:   "arn:aws:ecs:us-east-1:123456789012:task/ops/0f1e2d3c4b5a69788796a5b4c3d2e1f0",
		TagFamily:    "bastion",
		TagManagedBy: "bastion",
		"team":       "db",
	}
	if !mapsEqual(tags, wantTags) {
		t.Errorf("tags = %v, want %v", tags, wantTags)
	}

	// Registration command and agent start.
	wantArgs := []string{"-register", "-code", h.st.codes()[0], "-id", act, "-region", "us-east-1", "-y"}
	if len(h.st.args) != 2 || !slices.Equal(h.st.args[0], wantArgs) || len(h.st.args[1]) != 0 {
		t.Errorf("agent invocations = %q, want %q and none", h.st.args, wantArgs)
	}
	if h.exists(IPCDir) {
		t.Errorf("stale IPC directory not removed")
	}
	for _, p := range []string{SeelogPath, AgentConfigPath} {
		fi, err := os.Stat(filepath.Join(h.root, p))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o644 {
			t.Errorf("%s mode %v", p, fi.Mode())
		}
	}
	b, _ := os.ReadFile(filepath.Join(h.root, AgentConfigPath))
	if !strings.Contains(string(b), `"Endpoint": "http://127.0.0.1:4566"`) {
		t.Errorf("agent config without endpoint:\n%s", b)
	}
	b, _ = os.ReadFile(filepath.Join(h.root, SeelogPath))
	if !strings.Contains(string(b), `data-log-group="/bastion/agent"`) {
		t.Errorf("seelog without log group:\n%s", b)
	}
	if left := leftovers(h.srv); !slices.Equal(left, []string{"instance " + id}) {
		t.Errorf("state after Start = %v", left)
	}

	// Log records: the agent's lines, the ready record with ids.
	var sawAgentLine, sawReady bool
	for _, r := range h.logs.Records() {
		if r["agent"] != nil && strings.Contains(r["agent"].(string), "Successfully registered") {
			sawAgentLine = r["step"] == "register"
		}
		if r["step"] == "ready" && r["instance_id"] == id && r["ready_at"] != nil {
			sawReady = true
		}
	}
	if !sawAgentLine || !sawReady {
		t.Errorf("agent line logged %v, ready logged %v:\n%s", sawAgentLine, sawReady, h.logs)
	}

	// Shutdown.
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := h.l.StopAgent(sctx); err != nil {
		t.Errorf("StopAgent: %v", err)
	}
	if h.st.lastAgent().Stops() != 1 {
		t.Errorf("agent not stopped")
	}
	if err := h.l.Deregister(sctx); err != nil {
		t.Errorf("Deregister: %v", err)
	}
	if left := leftovers(h.srv); len(left) != 0 {
		t.Errorf("left after shutdown: %v", left)
	}
	if h.exists(RegistrationFile) {
		t.Errorf("registration file left")
	}
	if err := h.l.Deregister(sctx); err != nil { // idempotent
		t.Errorf("second Deregister: %v", err)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestStartNotOnECS(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.MetadataURI = ""
		c.InstanceName = "  jump host 1  "
	})
	if err := h.l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, c := range calls(h.srv) {
		if strings.Contains(c, "tag:") {
			t.Errorf("orphan sweep off ECS: %s", c)
		}
	}
	in, _ := h.srv.Activation(argAfter(h.st.args[0], "-id"))
	if in.DefaultInstanceName != "jump host 1" {
		t.Errorf("DefaultInstanceName = %q", in.DefaultInstanceName)
	}
	if len(in.Tags) != 1 || in.Tags[0].Key != TagManagedBy {
		t.Errorf("tags = %v", in.Tags)
	}
}

func TestStartPreflight(t *testing.T) {
	tierARN := "arn:aws:ssm:us-east-1:123456789012:servicesetting/ssm/managed-instance/activation-tier"
	tests := []struct {
		name       string
		optOut     bool
		tier       string
		errs       map[string]string // op → error code of every call
		wantErr    []string          // substrings; nil = success
		activation bool              // CreateActivation called
	}{
		{
			name: "standard tier", tier: "standard",
			wantErr: []string{`"standard"`, "advanced-instances tier",
				"aws ssm update-service-setting --setting-id " + tierARN + " --setting-value advanced",
				"BASTION_SSM_REQUIRE_ADVANCED_TIER=false"},
		},
		{name: "standard tier, opted out", tier: "standard", optOut: true, activation: true},
		{
			name: "get setting denied", errs: map[string]string{"GetServiceSetting": "AccessDeniedException"},
			wantErr: []string{"access denied", "ssm:GetServiceSetting"},
		},
		{
			name: "get setting denied, opted out", optOut: true, activation: true,
			errs: map[string]string{"GetServiceSetting": "AccessDeniedException"},
		},
		{
			name: "create activation denied", activation: true,
			errs:    map[string]string{"CreateActivation": "AccessDeniedException"},
			wantErr: []string{"ssm: create activation: access denied", "ssm:CreateActivation", `iam:PassRole on role "bastion-ssm"`},
		},
		{
			name: "sweep denied is not fatal", activation: true,
			errs: map[string]string{"DescribeInstanceInformation": "AccessDeniedException"},
			// Readiness is denied too: that is fatal.
			wantErr: []string{"wait for agent online", "ssm:DescribeInstanceInformation"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.RequireAdvancedTier = !tt.optOut })
			if tt.tier != "" {
				h.srv.SetServiceSetting(fakessm.ActivationTierSetting, tt.tier)
			}
			for op, code := range tt.errs {
				fail(h.srv, op, 0, code)
			}
			err := h.l.Start(context.Background())
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Start: %v", err)
				}
			} else {
				if err == nil {
					t.Fatal("Start succeeded")
				}
				for _, s := range tt.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q lacks %q", err, s)
					}
				}
				if err := h.shutdown(t); err != nil {
					t.Errorf("Deregister: %v", err)
				}
				if left := leftovers(h.srv); len(left) != 0 {
					t.Errorf("left behind: %v", left)
				}
			}
			if got := slices.Contains(calls(h.srv), "CreateActivation"); got != tt.activation {
				t.Errorf("CreateActivation called = %v, want %v", got, tt.activation)
			}
		})
	}
}

func TestStartRegistrationFailures(t *testing.T) {
	tests := []struct {
		name    string
		mode    string
		wantErr string
	}{
		{"refused", "refused", "exited with code 1: Registration failed due to error registering the instance with AWS SSM. InvalidActivation"},
		{"id mismatch", "mismatch", `but amazon-ssm-agent reported "mi-0123456789abcdef0"`},
		{"no success line", "noline", "did not report a managed instance id"},
		{"registered but not persisted", "persistfail", "Registration failed due to error persisting"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			h.st.regMode = tt.mode
			err := h.l.Start(context.Background())
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "ssm: register: ") {
				t.Fatalf("Start error = %v, want %q", err, tt.wantErr)
			}
			if !slices.Contains(calls(h.srv), "DeleteActivation "+argAfter(h.st.args[0], "-id")) {
				t.Errorf("DeleteActivation not called: %q", calls(h.srv))
			}
			if err := h.shutdown(t); err != nil {
				t.Errorf("Deregister: %v", err)
			}
			if left := leftovers(h.srv); len(left) != 0 {
				t.Errorf("left behind: %v", left)
			}
			if h.exists(RegistrationFile) {
				t.Errorf("registration file left")
			}
			if h.st.Starts() != 0 {
				t.Errorf("agent started after failed registration")
			}
			if h.l.InstanceID() != "" {
				t.Errorf("InstanceID = %q", h.l.InstanceID())
			}
		})
	}
}

func TestStartReadiness(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(h *harness) context.Context
		wantErr string
	}{
		{
			name: "timeout",
			setup: func(h *harness) context.Context {
				h.st.noPing = true
				h.l.cfg.ReadyTimeout = 50 * time.Millisecond
				return context.Background()
			},
			wantErr: "not Online after 50ms (PingStatus ConnectionLost)",
		},
		{
			name: "agent exits",
			setup: func(h *harness) context.Context {
				h.st.noPing = true
				h.st.agent = func(int) *fakeProc { p := newFakeProc(7); p.exit(0); return p }
				return context.Background()
			},
			wantErr: "amazon-ssm-agent exited with code 0",
		},
		{
			name: "context cancelled",
			setup: func(h *harness) context.Context {
				h.st.noPing = true
				ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
				h.l.cfg.ReadyTimeout = time.Hour
				_ = cancel
				return ctx
			},
			wantErr: "context deadline exceeded",
		},
		{
			name: "agent does not start",
			setup: func(h *harness) context.Context {
				h.st.err = errors.New("exec: permission denied")
				return context.Background()
			},
			wantErr: "ssm: start agent: exec: permission denied",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			ctx := tt.setup(h)
			err := h.l.Start(ctx)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Start error = %v, want %q", err, tt.wantErr)
			}
			if err := h.l.Run(context.Background()); err == nil {
				t.Errorf("Run after failed Start succeeded")
			}
			if len(leftovers(h.srv)) != 1 {
				t.Errorf("Start cleaned up itself (or did not register): %v", leftovers(h.srv))
			}
			if err := h.shutdown(t); err != nil {
				t.Errorf("Deregister: %v", err)
			}
			if left := leftovers(h.srv); len(left) != 0 {
				t.Errorf("left behind: %v", left)
			}
			if n := h.srv.Calls("DeregisterManagedInstance"); n != 1 {
				t.Errorf("%d deregistrations: %q", n, calls(h.srv))
			}
			if n := h.srv.Calls("DescribeInstanceInformation") - readinessPolls(h.srv); n != 1 {
				t.Errorf("instances listed %d times besides readiness: the confirmed id needs no lookup", n)
			}
			for _, c := range h.api.calledDone() {
				if c != "DescribeInstanceInformation" {
					t.Errorf("call with a done context: %v", c)
				}
			}
			if p := h.st.lastAgent(); p != nil {
				select {
				case <-p.Done():
				default:
					t.Errorf("agent not stopped")
				}
			}
			if h.exists(RegistrationFile) {
				t.Errorf("registration file left")
			}
		})
	}
}

// readinessPolls counts DescribeInstanceInformation calls by InstanceIds.
func readinessPolls(srv *fakessm.Server) int {
	n := 0
	for _, c := range calls(srv) {
		if c == "DescribeInstanceInformation InstanceIds" {
			n++
		}
	}
	return n
}

func TestStartStaleRegistration(t *testing.T) {
	const old = "mi-0aaaaaaaaaaaaaaaa"
	ourTask := fakeecs.DefaultTask().TaskARN
	tests := []struct {
		name   string
		file   string
		seed   *fakessm.Instance // the old instance at the service
		online bool
		dereg  bool // the old instance is deregistered
	}{
		{name: "ConnectionLost, any tags", seed: &fakessm.Instance{Tags: []fakessm.Tag{{Key: TagTaskARN, Value: "other"}}}, dereg: true},
		{name: "Online, tagged with this task", seed: &fakessm.Instance{Tags: []fakessm.Tag{{Key: TagTaskARN, Value: ourTask}}}, online: true, dereg: true},
		{name: "Online, another task's", online: true, seed: &fakessm.Instance{Tags: []fakessm.Tag{
			{Key: TagCluster, Value: "prod"}, {Key: TagTaskARN, Value: "arn:aws:ecs:us-east-1:123456789012:task/prod/1"}}}},
		{name: "Online, untagged", online: true, seed: &fakessm.Instance{}},
		{name: "gone"},
		{name: "another region", file: `{"ManagedInstanceID":"` + old + `","Region":"eu-west-1"}`, seed: &fakessm.Instance{}},
		{name: "garbage file", file: `{not json`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.OrphanSweep = false })
			if tt.seed != nil {
				in := *tt.seed
				in.InstanceID = old
				if tt.online {
					in.LastPing = t0
				}
				h.srv.AddInstance(in)
			}
			if tt.file == "" {
				tt.file = `{"ManagedInstanceID":"` + old + `","Region":"us-east-1"}`
			}
			p := h.writeRegistration(t, tt.file)
			if err := h.l.Start(context.Background()); err != nil {
				t.Fatalf("Start: %v", err)
			}
			before := calls(h.srv)
			dereg := slices.Index(before, "DeregisterManagedInstance "+old)
			if tt.dereg != (dereg >= 0) {
				t.Errorf("deregistered %v, want %v: %q", dereg >= 0, tt.dereg, before)
			}
			if dereg > slices.Index(before, "CreateActivation") {
				t.Errorf("stale instance deregistered after CreateActivation: %q", before)
			}
			want := []string{"instance " + h.l.InstanceID()}
			if tt.seed != nil && !tt.dereg {
				want = append(want, "instance "+old)
				slices.Sort(want)
			}
			if left := leftovers(h.srv); !slices.Equal(left, want) {
				t.Errorf("state = %v, want %v", left, want)
			}
			reg, err := readRegistration(p)
			if err != nil || reg.ManagedInstanceID != h.l.InstanceID() {
				t.Errorf("registration file = %+v, %v", reg, err)
			}
			// Deregister never touches the old instance: clearStale decided.
			if err := h.shutdown(t); err != nil {
				t.Fatal(err)
			}
			for _, c := range calls(h.srv)[len(before):] {
				if strings.Contains(c, old) {
					t.Errorf("old instance handled at shutdown: %s", c)
				}
			}
		})
	}
	t.Run("stopped while deregistering: file kept", func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.OrphanSweep = false })
		h.srv.AddInstance(fakessm.Instance{InstanceID: old})
		file := `{"ManagedInstanceID":"` + old + `","Region":"us-east-1"}`
		p := h.writeRegistration(t, file)
		h.srv.DelayNext("DeregisterManagedInstance", -1, time.Minute)
		// SIGTERM while the call hangs.
		ctx := cancelWhen(t, func() bool { return h.srv.Calls("DeregisterManagedInstance") > 0 })
		err := h.l.Start(ctx)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Start = %v", err)
		}
		if b, _ := os.ReadFile(p); string(b) != file {
			t.Errorf("registration file %q, want it kept", b)
		}
		if n := h.srv.Calls("CreateActivation"); n != 0 {
			t.Errorf("went on after SIGTERM")
		}
		if err := h.shutdown(t); err != nil {
			t.Errorf("Deregister: %v", err)
		}
		if b, _ := os.ReadFile(p); string(b) != file {
			t.Errorf("registration file %q after Deregister, want it kept for the next start", b)
		}
	})
}

func TestOrphanSweep(t *testing.T) {
	ago := func(d time.Duration) time.Time { return t0.Add(-d) }
	h := newHarness(t, nil)
	task := func(n int) string { return fmt.Sprintf("arn:aws:ecs:us-east-1:123456789012:task/ops/%032x", n) }
	stopped, running, forgotten := task(1), task(2), task(3)
	h.ecs.SetTaskStatus(stopped, fakeecs.StatusStopped)
	h.ecs.SetTaskStatus(running, fakeecs.StatusRunning)
	add := func(id string, ping time.Time, status string, registered time.Time, taskARN string) {
		tags := []fakessm.Tag{{Key: TagCluster, Value: "ops"}, {Key: TagFamily, Value: "bastion"}}
		if taskARN != "" {
			tags = append(tags, fakessm.Tag{Key: TagTaskARN, Value: taskARN})
		}
		h.srv.AddInstance(fakessm.Instance{InstanceID: id, LastPing: ping, PingStatus: status, RegistrationDate: registered, Tags: tags})
	}
	add("mi-00000000000000a01", time.Time{}, fakessm.PingOnline, ago(time.Hour), stopped)       // online: untouched
	add("mi-00000000000000a02", ago(time.Hour), "", time.Time{}, stopped)                       // orphan of a stopped task
	add("mi-00000000000000a03", ago(5*time.Minute), "", time.Time{}, stopped)                   // lost too recently
	add("mi-00000000000000a04", ago(15*time.Minute), "", time.Time{}, forgotten)                // at the threshold, task forgotten by ECS
	add("mi-00000000000000a05", ago(time.Hour), "", time.Time{}, running)                       // pings failing, task alive
	add("mi-00000000000000a06", ago(time.Hour), "", time.Time{}, "")                            // no task tag
	add("mi-00000000000000a07", ago(time.Hour), "", time.Time{}, fakeecs.DefaultTask().TaskARN) // this task's
	add("mi-00000000000000b01", time.Time{}, "", ago(2*time.Hour), stopped)                     // never pinged
	add("mi-00000000000000b02", time.Time{}, "", time.Time{}, stopped)                          // registered just now
	add("mi-00000000000000b03", time.Time{}, fakessm.PingInactive, ago(time.Hour), stopped)     // inactive
	h.srv.AddInstance(fakessm.Instance{InstanceID: "i-0123456789abcdef0", ResourceType: "EC2Instance", LastPing: ago(time.Hour),
		Tags: []fakessm.Tag{{Key: TagCluster, Value: "ops"}, {Key: TagFamily, Value: "bastion"}, {Key: TagTaskARN, Value: stopped}}})
	h.srv.AddInstance(fakessm.Instance{InstanceID: "mi-00000000000000c01", LastPing: ago(time.Hour),
		Tags: []fakessm.Tag{{Key: TagCluster, Value: "ops"}, {Key: TagFamily, Value: "other"}, {Key: TagTaskARN, Value: stopped}}})
	// Enough Online siblings for a second page.
	for i := 0; i < 50; i++ {
		add(fmt.Sprintf("mi-00000000000001%03d", i), time.Time{}, fakessm.PingOnline, ago(time.Hour), running)
	}
	h.l.task = &taskMeta{Cluster: "ops", Family: "bastion", TaskARN: fakeecs.DefaultTask().TaskARN}
	h.l.sweepOrphans(context.Background())

	var deregistered []string
	for _, c := range calls(h.srv) {
		if id, ok := strings.CutPrefix(c, "DeregisterManagedInstance "); ok {
			deregistered = append(deregistered, id)
		}
	}
	want := []string{"mi-00000000000000a02", "mi-00000000000000a04", "mi-00000000000000b01"}
	slices.Sort(deregistered)
	if !slices.Equal(deregistered, want) {
		t.Errorf("deregistered %q, want %q", deregistered, want)
	}
	if n := h.ecs.APICalls("DescribeTasks"); n != 1 {
		t.Errorf("%d DescribeTasks calls, want one for all candidates", n)
	}
	// One request per page; the SDK may retry a request whose answer it
	// did not get (a loaded machine), which is the same page again.
	var pages []fakessm.Request
	for _, r := range h.srv.Requests() {
		if r.Op == "DescribeInstanceInformation" && (len(pages) == 0 || pages[len(pages)-1].Body != r.Body) {
			pages = append(pages, r)
		}
	}
	if len(pages) != 2 || !strings.Contains(pages[1].Body, `"NextToken"`) {
		t.Fatalf("describe calls %+v, want 2 pages", pages)
	}
	var in struct {
		Filters []struct {
			Key    string
			Values []string
		}
		InstanceInformationFilterList any
	}
	if err := json.Unmarshal([]byte(pages[0].Body), &in); err != nil {
		t.Fatal(err)
	}
	if len(in.Filters) != 2 || in.Filters[0].Key != "tag:"+TagCluster || in.Filters[0].Values[0] != "ops" ||
		in.Filters[1].Key != "tag:"+TagFamily || in.Filters[1].Values[0] != "bastion" || in.InstanceInformationFilterList != nil {
		t.Errorf("request %s", pages[0].Body)
	}
	for _, r := range h.logs.Records() {
		if r["msg"] == "orphan candidate's task still runs; left alone" && r["instance_id"] != "mi-00000000000000a05" {
			t.Errorf("kept as alive: %v", r)
		}
	}
}

// TestOrphanSweepWithoutProof: when ECS cannot be asked, nothing is
// deregistered on time alone.
func TestOrphanSweepWithoutProof(t *testing.T) {
	for _, tt := range []struct {
		name  string
		setup func(h *harness)
	}{
		{"DescribeTasks denied", func(h *harness) { h.ecs.FailNext(1, "AccessDeniedException") }},
		{"no ECS client", func(h *harness) { h.l.tasks = nil }},
		{"tags not readable", func(h *harness) { fail(h.srv, "ListTagsForResource", 0, "AccessDeniedException") }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			h.srv.AddInstance(fakessm.Instance{InstanceID: "mi-00000000000000a02", LastPing: t0.Add(-time.Hour), Tags: []fakessm.Tag{
				{Key: TagCluster, Value: "ops"}, {Key: TagFamily, Value: "bastion"}, {Key: TagTaskARN, Value: "arn:aws:ecs:us-east-1:123456789012:task/ops/dead"}}})
			tt.setup(h)
			h.l.task = &taskMeta{Cluster: "ops", Family: "bastion", TaskARN: fakeecs.DefaultTask().TaskARN}
			h.l.sweepOrphans(context.Background())
			if n := h.srv.Calls("DeregisterManagedInstance"); n != 0 {
				t.Errorf("deregistered without proof of death")
			}
		})
	}
}

func TestRunRestarts(t *testing.T) {
	exitAt := func(code int) func(int) *fakeProc {
		return func(n int) *fakeProc {
			p := newFakeProc(300 + n)
			if n > 0 { // the first one is the one Start waits on
				p.exit(code)
			}
			return p
		}
	}
	t.Run("gives up after Restarts", func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.Restarts = 2 })
		h.st.agent = exitAt(1)
		if err := h.l.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		h.st.lastAgent().exit(0) // the agent also exits 0 when it fails
		err := h.l.Run(context.Background())
		if err == nil || !strings.Contains(err.Error(), "exited with code 1 after 2 restarts") {
			t.Fatalf("Run = %v", err)
		}
		if h.st.Starts() != 3 {
			t.Errorf("%d agent starts, want 3", h.st.Starts())
		}
		n := 0
		for _, r := range h.logs.Records() {
			if r["msg"] == "agent exited unexpectedly; restarting" {
				n++
			}
		}
		if n != 2 {
			t.Errorf("%d restart records, want 2", n)
		}
	})
	t.Run("no restarts", func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.Restarts = -1 })
		if err := h.l.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		h.st.lastAgent().exit(2)
		if err := h.l.Run(context.Background()); err == nil || h.st.Starts() != 1 {
			t.Fatalf("Run = %v, starts %d", err, h.st.Starts())
		}
	})
	t.Run("backoff bounded by ctx", func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.RestartBackoff = time.Hour })
		if err := h.l.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		h.st.lastAgent().exit(1)
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		start := time.Now()
		if err := h.l.Run(ctx); err != nil {
			t.Fatalf("Run = %v", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("Run took %v", d)
		}
		if h.st.Starts() != 1 {
			t.Errorf("restarted during shutdown")
		}
	})
	t.Run("restarted agent keeps running", func(t *testing.T) {
		h := newHarness(t, nil)
		h.st.agent = func(n int) *fakeProc { return newFakeProc(400 + n) }
		if err := h.l.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		h.st.lastAgent().exit(1)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- h.l.Run(ctx) }()
		for deadline := time.Now().Add(5 * time.Second); h.st.Starts() < 2; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the agent was not restarted within 5 s")
			}
		}
		if err := h.l.StopAgent(context.Background()); err != nil {
			t.Errorf("StopAgent: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("Run after StopAgent = %v", err)
		}
		cancel()
		if h.st.Starts() != 2 || h.st.lastAgent().Stops() != 1 {
			t.Errorf("starts %d, stops of the restarted agent %d", h.st.Starts(), h.st.lastAgent().Stops())
		}
	})
}

func TestStopAgentKilled(t *testing.T) {
	h := newHarness(t, nil)
	h.st.agent = func(n int) *fakeProc { p := newFakeProc(1); p.ignoreTerm = true; return p }
	if err := h.l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err := h.l.StopAgent(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("StopAgent = %v, want killed after deadline", err)
	}
}

func TestDeregister(t *testing.T) {
	tests := []struct {
		name    string
		exists  bool
		fails   int    // DeregisterManagedInstance calls that fail, -1 all
		code    string // their error
		wantErr string
		file    bool // registration file kept
	}{
		{name: "registered", exists: true},
		{name: "already gone", exists: false},
		{name: "denied", exists: true, fails: -1, code: "AccessDeniedException", wantErr: "ssm:DeregisterManagedInstance", file: true},
		{name: "throttled to the end", exists: true, fails: -1, code: "ThrottlingException", wantErr: "gave up after", file: true},
		// More failures than the SDK's own attempts: retried while time remains.
		{name: "throttled for a while", exists: true, fails: 3 * awsconf.MaxAttempts, code: "ThrottlingException"},
		{name: "server errors for a while", exists: true, fails: 3 * awsconf.MaxAttempts, code: "InternalServerError"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			const id = "mi-0bbbbbbbbbbbbbbbb"
			if tt.exists {
				h.srv.AddInstance(fakessm.Instance{InstanceID: id})
			}
			if tt.fails != 0 {
				h.srv.Inject("DeregisterManagedInstance", fakessm.Fault{Count: max(tt.fails, 0), Code: tt.code})
			}
			h.l.instanceID, h.l.ids, h.l.registering = id, []string{id}, true
			h.writeRegistration(t, `{"ManagedInstanceID":"`+id+`","Region":"us-east-1"}`)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			err := h.l.Deregister(ctx)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("Deregister = %v, want %q", err, tt.wantErr)
			}
			if h.exists(RegistrationFile) != tt.file {
				t.Errorf("registration file exists = %v", !tt.file)
			}
			if tt.fails > 0 && h.srv.FaultsServed("DeregisterManagedInstance") != tt.fails {
				t.Errorf("faults served %d, want %d", h.srv.FaultsServed("DeregisterManagedInstance"), tt.fails)
			}
			if tt.code == "AccessDeniedException" && h.srv.Calls("DeregisterManagedInstance") != 1 {
				t.Errorf("a refusal was retried")
			}
		})
	}
	t.Run("a stale file is not this run's", func(t *testing.T) {
		h := newHarness(t, nil)
		h.srv.AddInstance(fakessm.Instance{InstanceID: "mi-0cccccccccccccccc"})
		h.writeRegistration(t, `{"ManagedInstanceID":"mi-0cccccccccccccccc","Region":"us-east-1"}`)
		if err := h.l.Deregister(context.Background()); err != nil || len(calls(h.srv)) != 0 || !h.exists(RegistrationFile) {
			t.Errorf("Deregister = %v, calls %q, file kept %v", err, calls(h.srv), h.exists(RegistrationFile))
		}
	})
	t.Run("nothing registered", func(t *testing.T) {
		h := newHarness(t, nil)
		if err := h.l.Deregister(context.Background()); err != nil || len(calls(h.srv)) != 0 {
			t.Errorf("Deregister = %v, calls %q", err, calls(h.srv))
		}
	})
	t.Run("each instance gets its own share", func(t *testing.T) {
		h := newHarness(t, nil)
		const hung, second = "mi-0dddddddddddddddd", "mi-0eeeeeeeeeeeeeeee"
		h.srv.AddInstance(fakessm.Instance{InstanceID: hung})
		h.srv.AddInstance(fakessm.Instance{InstanceID: second})
		h.srv.DelayNext("DeregisterManagedInstance", 1, time.Minute) // the first call hangs
		h.l.ids, h.l.callTimeout = []string{hung, second}, time.Minute
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := h.l.Deregister(ctx); err != nil {
			t.Fatalf("Deregister = %v", err)
		}
		if left := leftovers(h.srv); len(left) != 0 {
			t.Errorf("left %v: the hung call ate the others' time", left)
		}
	})
}

func TestConfigValidate(t *testing.T) {
	long := strings.Repeat("x", 65)
	tests := []struct {
		name    string
		mut     func(*Config)
		wantErr string
	}{
		{"ok", func(*Config) {}, ""},
		{"role with path", func(c *Config) { c.IAMRole = "service-role/AmazonEC2RunCommandRoleForManagedInstances" }, ""},
		{"no region", func(c *Config) { c.Region = "" }, "AWS_REGION"},
		{"no role", func(c *Config) { c.IAMRole = "" }, "INSTANCE_IAM_ROLE is required"},
		{"role arn", func(c *Config) { c.IAMRole = "arn:aws:iam::1:role/x" }, "not an ARN"},
		{"role with a space", func(c *Config) { c.IAMRole = "my role" }, "role names have no spaces"},
		{"role too long", func(c *Config) { c.IAMRole = long }, "at most 64"},
		{"role of 64 characters", func(c *Config) { c.IAMRole = strings.Repeat("é", 64) }, ""},
		{"name", func(c *Config) { c.InstanceName = "踏み台 jump-1_a.b:c/d=e+f@g" }, ""},
		{"name of 256 characters", func(c *Config) { c.InstanceName = strings.Repeat("é", 256) }, ""},
		{"name too long", func(c *Config) { c.InstanceName = strings.Repeat("x", 257) }, "INSTANCE_NAME"},
		{"name with a bad character", func(c *Config) { c.InstanceName = "jump#1" }, "INSTANCE_NAME"},
		{"bad log group", func(c *Config) { c.LogGroup = `a"b` }, "CLOUDWATCH_RECEIVER_LOG_GROUP"},
		{"ttl too long", func(c *Config) { c.ActivationTTL = 31 * 24 * time.Hour }, "30 days"},
		{"reserved tag", func(c *Config) { c.Tags = map[string]string{TagCluster: "x"} }, "reserved"},
		{"aws tag", func(c *Config) { c.Tags = map[string]string{"AWS:x": "y"} }, `"aws:"`},
		{"bad tag key", func(c *Config) { c.Tags = map[string]string{"a*b": "y"} }, `tag key "a*b"`},
		{"bad tag value", func(c *Config) { c.Tags = map[string]string{"a": "<y>"} }, `tag "a": value`},
		{"unicode tag ok", func(c *Config) { c.Tags = map[string]string{"チーム": "データ基盤 1"} }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Region, c.IAMRole = "us-east-1", "r"
			tt.mut(&c)
			err := c.withDefaults().Validate()
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("validate = %v, want %q", err, tt.wantErr)
			}
			if err != nil && !strings.HasPrefix(err.Error(), "ssm: ") {
				t.Errorf("error without prefix: %v", err)
			}
		})
	}
}

func TestSanitizeName(t *testing.T) {
	tests := []struct{ in, want string }{
		{"bastion-0f1e", "bastion-0f1e"},
		{"ip-10-0-1-2.ec2.internal", "ip-10-0-1-2.ec2.internal"},
		{"a*b?c", "a-b-c"},
		{"  踏み台 ", "踏み台"},
		{strings.Repeat("é", 300), strings.Repeat("é", 256)},
	}
	for _, tt := range tests {
		if got := sanitizeName(tt.in); got != tt.want || !tagPattern.MatchString(got) {
			t.Errorf("sanitizeName(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestDefaults(t *testing.T) {
	c := Config{}.withDefaults()
	if c.Restarts != 3 || c.RestartBackoff != 2*time.Second || c.ReadyTimeout != 2*time.Minute ||
		c.OrphanAfter != 15*time.Minute || c.ActivationTTL != time.Hour || c.AgentPath != "amazon-ssm-agent" || c.Clock == nil {
		t.Errorf("defaults = %+v", c)
	}
	d := DefaultConfig()
	if !d.RequireAdvancedTier || !d.OrphanSweep {
		t.Errorf("DefaultConfig = %+v", d)
	}
}

func TestAgentNotFound(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.AgentPath = "no-such-amazon-ssm-agent" })
	err := h.l.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "ssm: agent executable") || len(calls(h.srv)) != 0 {
		t.Errorf("Start = %v, calls %q", err, calls(h.srv))
	}
}

func TestStartTaskMetadataFailure(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MetadataURI += "/missing" })
	err := h.l.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "ssm: ECS task metadata: GET /task: 404") || len(calls(h.srv)) != 0 {
		t.Errorf("Start = %v, calls %q", err, calls(h.srv))
	}
}
