package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/test/fakessm"
)

// agentBin is the fake agent built once for all tests.
var agentBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fakeagent-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin = filepath.Join(dir, "amazon-ssm-agent")
	build := exec.Command("go", "build", "-o", agentBin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build fake agent:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is one isolated "container": host temp dirs bind-mounted over the
// agent's real fixed paths inside a private mount namespace, so state
// persists across invocations and the test can inspect it from outside.
type env struct {
	t             *testing.T
	lib, etc, log string // host dirs seen as /var/lib/amazon, /etc/amazon, /var/log/amazon
	srv           *fakessm.Server
}

var realMounts = []string{"/var/lib/amazon", "/etc/amazon", "/var/log/amazon"}

func newEnv(t *testing.T) *env {
	t.Helper()
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Fatalf("these tests need util-linux unshare (and root) to isolate the agent's fixed paths: %v", err)
	}
	for _, p := range realMounts {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatalf("create mount point %s (needs root): %v", p, err)
		}
	}
	root := t.TempDir()
	e := &env{t: t, lib: filepath.Join(root, "lib"), etc: filepath.Join(root, "etc"), log: filepath.Join(root, "log")}
	for _, d := range []string{e.lib, e.etc, filepath.Join(e.etc, "ssm"), e.log} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	e.srv = fakessm.NewTest(t, fakessm.Options{})
	e.writeConfig(fmt.Sprintf(`{"Ssm":{"Endpoint":%q},"Identity":{"ConsumptionOrder":["OnPrem"]},"Profile":{"ShareCreds":false}}`, e.srv.URL()))
	return e
}

func (e *env) writeConfig(s string) {
	e.t.Helper()
	if err := os.WriteFile(filepath.Join(e.etc, "ssm", "amazon-ssm-agent.json"), []byte(s), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// agent is one started agent process.
type agent struct {
	cmd  *exec.Cmd
	out  string // file holding stdout+stderr
	done chan struct{}
	err  error
}

// start runs the agent inside the namespace. The sh wrapper execs the agent,
// so cmd.Process.Pid is the agent's pid.
func (e *env) start(stdin string, extraEnv []string, args ...string) *agent {
	e.t.Helper()
	script := `set -e; mount --bind "$1" /var/lib/amazon; mount --bind "$2" /etc/amazon; mount --bind "$3" /var/log/amazon; shift 3; exec "$@"`
	argv := append([]string{"--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", e.lib, e.etc, e.log, agentBin}, args...)
	cmd := exec.Command("unshare", argv...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FAKE_AGENT_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, extraEnv...)
	outPath := filepath.Join(e.t.TempDir(), "out")
	// A file, not a pipe: the worker inherits it and may outlive the agent.
	f, err := os.Create(outPath)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	cmd.Stdout, cmd.Stderr = f, f
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	} // nil stdin = /dev/null
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("start agent: %v", err)
	}
	a := &agent{cmd: cmd, out: outPath, done: make(chan struct{})}
	go func() { a.err = cmd.Wait(); close(a.done) }()
	e.t.Cleanup(func() {
		select {
		case <-a.done:
		default:
			_ = cmd.Process.Kill()
			<-a.done
		}
	})
	return a
}

func (a *agent) output() string {
	b, _ := os.ReadFile(a.out)
	return string(b)
}

// wait returns the exit code, failing the test after timeout.
func (a *agent) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-a.done:
	case <-time.After(timeout):
		t.Fatalf("agent still running after %v; output:\n%s", timeout, a.output())
	}
	var ee *exec.ExitError
	if errors.As(a.err, &ee) {
		return ee.ExitCode()
	}
	if a.err != nil {
		t.Fatalf("agent: %v", a.err)
	}
	return 0
}

func (a *agent) exited() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

// run starts the agent and waits for it.
func (e *env) run(stdin string, extraEnv []string, args ...string) (int, string) {
	e.t.Helper()
	a := e.start(stdin, extraEnv, args...)
	code := a.wait(e.t, 20*time.Second)
	return code, a.output()
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) activation(limit int) (string, string) {
	e.t.Helper()
	a := e.srv.AddActivation(fakessm.Activation{IamRole: "bastion-ssm", RegistrationLimit: limit})
	return a.ActivationID, a.ActivationCode
}

var successRe = regexp.MustCompile(`^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{4} INFO Successfully registered the instance with AWS SSM using Managed instance-id: (mi-[0-9a-f]{17})$`)

func registeredID(t *testing.T, out string) string {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if m := successRe.FindStringSubmatch(line); m != nil {
			return m[1]
		}
	}
	t.Fatalf("no success line in output:\n%s", out)
	return ""
}

func mode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatalf("stat: %v", err)
	}
	return st.Mode().Perm()
}

func readJSON(t *testing.T, path string) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]string
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return m
}

func TestRegister(t *testing.T) {
	e := newEnv(t)
	id, code := e.activation(100)
	regArgs := func(id, code string, extra ...string) []string {
		return append([]string{"-register", "-code", code, "-id", id, "-region", "us-east-1"}, extra...)
	}

	exit, out := e.run("", nil, regArgs(id, code, "-y")...)
	if exit != 0 {
		t.Fatalf("register exit %d:\n%s", exit, out)
	}
	mi := registeredID(t, out)
	for _, want := range []string{"Initializing new seelog logger\n", "New Seelog Logger Creation Complete\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("missing plain line %q in:\n%s", want, out)
		}
	}
	reg := readJSON(t, filepath.Join(e.lib, "ssm", "registration"))
	if reg["ManagedInstanceID"] != mi || reg["Region"] != "us-east-1" || len(reg) != 2 {
		t.Errorf("registration file = %v", reg)
	}
	vault := readJSON(t, filepath.Join(e.lib, "ssm", "Vault", "Store", "RegistrationKey"))
	if vault["instanceID"] != mi || vault["region"] != "us-east-1" || vault["privateKeyType"] != "Rsa" || vault["privateKey"] == "" {
		t.Errorf("vault = %v", vault)
	}
	for _, p := range []string{"registration", "Vault", "Vault/Manifest", "Vault/Store", "Vault/Store/RegistrationKey"} {
		if m := mode(t, filepath.Join(e.lib, "ssm", p)); m != 0o600 {
			t.Errorf("%s mode %o, want 600", p, m)
		}
	}
	if logged, _ := os.ReadFile(filepath.Join(e.log, "ssm", "amazon-ssm-agent.log")); !strings.Contains(string(logged), "Successfully registered") {
		t.Errorf("log file lacks the success line: %q", logged)
	}
	inst, ok := e.srv.Instance(mi)
	if !ok || inst.PublicKeyType != "Rsa" || inst.PublicKey == "" || inst.Fingerprint == "" {
		t.Fatalf("server instance = %+v %v", inst, ok)
	}

	// The identity is stored now: every re-registration path.
	tests := []struct {
		name     string
		stdin    string
		env      []string
		args     []string
		exit     int
		want     string
		newID    bool // a new identity replaced the old one
		apiCalls int  // RegisterManagedInstance calls made
	}{
		{"no -y, no stdin", "", nil, regArgs(id, code), 1, "ERROR Registration failed due to EOF", false, 0},
		{"no -y, empty line", "\n", nil, regArgs(id, code), 1, "Registration failed due to unexpected newline", false, 0},
		{"no -y, answer no", "no\n", nil, regArgs(id, code), 1, "INFO Registration canceled by user", false, 0},
		{"no -y, bad answer", "maybe\n", nil, regArgs(id, code), 1, "Registration failed due to Invalid response received.", false, 0},
		{"no -y, answer yes", "Yes\n", nil, regArgs(id, code), 0, "Successfully registered", true, 1},
		{"-y", "", nil, regArgs(id, code, "-y"), 0, "Successfully registered", true, 1},
		{"wrong code", "", nil, regArgs(id, "nope", "-y"), 1,
			"ERROR Registration failed due to error registering the instance with AWS SSM. InvalidActivation: ", false, 1},
		{"refused", "", []string{"FAKE_AGENT_MODE=refuse-register"}, regArgs(id, code, "-y"), 1,
			"Registration failed due to error registering the instance with AWS SSM. RequestError: send request failed", false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Start each case from a registered state.
			exit, out := e.run("", nil, regArgs(id, code, "-y")...)
			if exit != 0 {
				t.Fatalf("setup register: %d\n%s", exit, out)
			}
			before := registeredID(t, out)
			calls := e.srv.Calls("RegisterManagedInstance")

			exit, out = e.run(tt.stdin, tt.env, tt.args...)
			if exit != tt.exit || !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d, want %d with %q; output:\n%s", exit, tt.exit, tt.want, out)
			}
			if tt.stdin != "" || (tt.exit == 1 && tt.apiCalls == 0 && tt.env == nil) {
				if !strings.Contains(out, "Instance already registered. Would you like to override existing with new registration information? [Yes/No]: ") {
					t.Errorf("no prompt in:\n%s", out)
				}
			}
			if n := e.srv.Calls("RegisterManagedInstance") - calls; n != tt.apiCalls {
				t.Errorf("RegisterManagedInstance calls = %d, want %d", n, tt.apiCalls)
			}
			vaultID := readJSON(t, filepath.Join(e.lib, "ssm", "Vault", "Store", "RegistrationKey"))["instanceID"]
			regID := readJSON(t, filepath.Join(e.lib, "ssm", "registration"))["ManagedInstanceID"]
			switch {
			case tt.newID:
				if vaultID == before || vaultID != regID || registeredID(t, out) != vaultID {
					t.Errorf("vault %s registration %s (before %s)", vaultID, regID, before)
				}
			case tt.apiCalls == 0 && tt.env == nil: // stopped at the prompt: nothing touched
				if vaultID != before || regID != before {
					t.Errorf("identity changed: vault %s registration %s, before %s", vaultID, regID, before)
				}
			default: // failed after the key step: the vault lost the id, the registration file is stale
				if vaultID != "" || regID != before {
					t.Errorf("vault %q registration %q, before %s", vaultID, regID, before)
				}
			}
		})
	}
}

func TestCLI(t *testing.T) {
	e := newEnv(t)
	id, code := e.activation(5)
	if exit, out := e.run("", nil, "-register", "-code", code, "-id", id, "-region", "us-east-1", "-y"); exit != 0 {
		t.Fatalf("register: %d\n%s", exit, out)
	}
	tests := []struct {
		name string
		args []string
		exit int
		want string
	}{
		{"unknown flag", []string{"-bogus"}, 2, "flag provided but not defined: -bogus"},
		{"double dash flags work like Go's flag", []string{"--version"}, 0, "SSM Agent version: 3.3.987.0"},
		{"version", []string{"-version"}, 0, "SSM Agent version: 3.3.987.0"},
		{"missing region", []string{"-register", "-code", "c", "-id", "i"}, 1, "Command-line Usage:"},
		{"clear alone is usage", []string{"-clear"}, 1, "Command-line Usage:"},
		{"register -clear", []string{"-register", "-clear"}, 0, "INFO Registration information has been removed from the instance."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			exit, out := e.run("", nil, tt.args...)
			if exit != tt.exit || !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d (want %d), output lacks %q:\n%s", exit, tt.exit, tt.want, out)
			}
		})
	}
	if v := readJSON(t, filepath.Join(e.lib, "ssm", "Vault", "Store", "RegistrationKey"))["instanceID"]; v != "" {
		t.Errorf("vault still holds %q after -clear", v)
	}
}

func (e *env) register() string {
	e.t.Helper()
	id, code := e.activation(1)
	exit, out := e.run("", nil, "-register", "-code", code, "-id", id, "-region", "us-east-1", "-y")
	if exit != 0 {
		e.t.Fatalf("register: %d\n%s", exit, out)
	}
	return registeredID(e.t, out)
}

var workerRe = regexp.MustCompile(`Worker ssm-agent-worker \(pid:(\d+)\) started`)

// workerPID waits for the agent's "worker started" line.
func workerPID(t *testing.T, a *agent) int {
	t.Helper()
	var pid int
	waitFor(t, "worker start lines", 10*time.Second, func() bool {
		out := a.output()
		m := workerRe.FindStringSubmatch(out)
		if m != nil {
			pid, _ = strconv.Atoi(m[1])
		}
		// The worker prints its own banner once its signal handling is set.
		return m != nil && strings.Contains(out, "[ssm-agent-worker] ssm-agent-worker - v")
	})
	t.Cleanup(func() { killPID(pid) })
	return pid
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}

func killPID(pid int) {
	if pid > 0 && alive(pid) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func TestRunMode(t *testing.T) {
	for _, ignoresIPC := range []bool{false, true} {
		t.Run(fmt.Sprintf("worker ignores IPC=%v", ignoresIPC), func(t *testing.T) {
			e := newEnv(t)
			mi := e.register()
			extra := []string{"FAKE_AGENT_PING_INTERVAL=200ms", "FAKE_AGENT_STOP_DELAY=1s"}
			if ignoresIPC {
				extra = append(extra, "FAKE_AGENT_WORKER_IGNORES_IPC=1")
			}
			a := e.start("", extra)
			waitFor(t, "two pings and Online", 10*time.Second, func() bool {
				in, ok := e.srv.Instance(mi)
				return ok && in.Pings >= 2 && in.PingStatus == fakessm.PingOnline
			})
			in, _ := e.srv.Instance(mi)
			if in.AgentVersion != "3.3.987.0" || in.PlatformType != "Linux" || in.AgentName != "amazon-ssm-agent" {
				t.Errorf("ping fields = %+v", in)
			}
			wpid := workerPID(t, a)
			if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", wpid)); strings.TrimSpace(string(comm)) != "ssm-agent-worke" {
				t.Errorf("worker comm = %q", comm)
			}
			if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", wpid)); !strings.HasPrefix(string(cmdline), "ssm-agent-worker\x00") {
				t.Errorf("worker cmdline = %q", cmdline)
			}
			pgid, err := syscall.Getpgid(wpid)
			apgid, _ := syscall.Getpgid(a.cmd.Process.Pid)
			if err != nil || pgid != wpid || pgid == apgid {
				t.Errorf("worker pgid %d (agent's %d), want own group %d: %v", pgid, apgid, wpid, err)
			}
			out := a.output()
			for _, want := range []string{"INFO [amazon-ssm-agent] amazon-ssm-agent - v3.3.987.0", "INFO [amazon-ssm-agent] OS: linux, Arch: amd64",
				"INFO [amazon-ssm-agent] Starting Core Agent", "Agent will take identity from OnPrem"} {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q", want)
				}
			}

			start := time.Now()
			if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if code := a.wait(t, 10*time.Second); code != 0 {
				t.Fatalf("exit %d after SIGTERM:\n%s", code, a.output())
			}
			if took := time.Since(start); took < time.Second {
				t.Errorf("stopped after %v, before the stop delay", took)
			}
			out = a.output()
			for _, want := range []string{"amazon-ssm-agent got signal:terminated", "Stopping Core Agent", "Bye."} {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
			if ignoresIPC {
				if !alive(wpid) {
					t.Fatal("worker died although it ignored the IPC stop")
				}
				killPID(wpid) // what a PID 1 sweep must do
				waitFor(t, "worker gone", 5*time.Second, func() bool { return !alive(wpid) })
			} else {
				waitFor(t, "worker stopped over IPC", 5*time.Second, func() bool { return !alive(wpid) })
			}
		})
	}
}

func TestRunStartFailures(t *testing.T) {
	tests := []struct {
		name   string
		setup  func(e *env)
		want   []string
		nopeID bool
	}{
		{"not registered", func(e *env) {}, []string{"Error occurred when starting amazon-ssm-agent: failed to get identity: failed to find agent identity"}, true},
		{"invalid config", func(e *env) { e.register(); e.writeConfig(`{"Ssm":`) },
			[]string{"Failed to unmarshal config override. Fall back to default.", "Error occurred when starting amazon-ssm-agent: app config could not be loaded"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			tt.setup(e)
			exit, out := e.run("", nil)
			if exit != 0 {
				t.Fatalf("exit %d, want 0 like the real agent:\n%s", exit, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if strings.Contains(out, "Starting Core Agent") {
				t.Errorf("agent started anyway")
			}
		})
	}
}

func TestFaultModes(t *testing.T) {
	t.Run("crash-after leaves the worker", func(t *testing.T) {
		e := newEnv(t)
		e.register()
		a := e.start("", []string{"FAKE_AGENT_MODE=crash-after=300ms"})
		wpid := workerPID(t, a)
		if code := a.wait(t, 10*time.Second); code != 1 {
			t.Fatalf("exit %d, want 1", code)
		}
		if !alive(wpid) {
			t.Fatal("worker died with the agent")
		}
	})
	t.Run("hang never pings but stops", func(t *testing.T) {
		e := newEnv(t)
		mi := e.register()
		a := e.start("", []string{"FAKE_AGENT_MODE=hang", "FAKE_AGENT_PING_INTERVAL=50ms", "FAKE_AGENT_STOP_DELAY=100ms"})
		workerPID(t, a)
		time.Sleep(300 * time.Millisecond)
		if in, _ := e.srv.Instance(mi); in.Pings != 0 || in.PingStatus == fakessm.PingOnline {
			t.Fatalf("hung agent pinged: %+v", in)
		}
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		if code := a.wait(t, 5*time.Second); code != 0 {
			t.Fatalf("exit %d", code)
		}
	})
	t.Run("ignore-sigterm needs KILL; worker-ignores-term too", func(t *testing.T) {
		e := newEnv(t)
		e.register()
		a := e.start("", []string{"FAKE_AGENT_MODE=ignore-sigterm,worker-ignores-term", "FAKE_AGENT_STOP_DELAY=100ms"})
		wpid := workerPID(t, a)
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		_ = syscall.Kill(wpid, syscall.SIGTERM)
		time.Sleep(700 * time.Millisecond)
		if a.exited() || !alive(wpid) {
			t.Fatalf("SIGTERM stopped agent=%v worker=%v", a.exited(), !alive(wpid))
		}
		_ = a.cmd.Process.Kill()
		a.wait(t, 5*time.Second)
		killPID(wpid)
		waitFor(t, "worker killed", 5*time.Second, func() bool { return !alive(wpid) })
	})
	t.Run("register-hang", func(t *testing.T) {
		e := newEnv(t)
		id, code := e.activation(1)
		a := e.start("", []string{"FAKE_AGENT_MODE=register-hang"}, "-register", "-code", code, "-id", id, "-region", "us-east-1", "-y")
		waitFor(t, "the hang to begin", 20*time.Second, func() bool {
			return strings.Contains(a.output(), "registration hangs") || a.exited()
		})
		// Killed while hanging: the exit is SIGKILL's, not the agent's own,
		// and the call never reached the API.
		_ = a.cmd.Process.Kill()
		<-a.done
		if ws, ok := a.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("register-hang exited on its own (%v):\n%s", a.cmd.ProcessState, a.output())
		}
		if n := e.srv.Calls("RegisterManagedInstance"); n != 0 {
			t.Errorf("hung registration reached the API %d times", n)
		}
	})
}
