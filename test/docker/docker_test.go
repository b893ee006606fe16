// Package docker runs the bastion as a container: the image built FROM
// scratch (test/docker/Dockerfile.scratch, the production Dockerfile's
// runtime contract without a registry), real `docker run` / `docker stop` /
// `docker kill`, a tunnel from the host's OpenSSH client to a service in a
// second container, the HEALTHCHECK, `docker run --init`, and the SSM
// lifecycle against the fake SSM API in a third container.
//
// Needs the docker CLI and a reachable engine; without them the tests fail
// (never skip): run them as root on the CI machine.
package docker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/internal/logtest"
	"github.com/bastion-dev/bastion/test/fakessm"
	"github.com/bastion-dev/bastion/test/harness"
)

// env is what the subtests share: images and a network, all removed at the
// end by ID.
type env struct {
	image   string // bastion + fake agent, FROM scratch
	peers   string // hashsvc + fakessm, FROM scratch
	network string // ID
	netName string
	subnet  string
	dir     string
	user    harness.Key
	host    harness.Key
	unique  string
}

func TestDocker(t *testing.T) {
	start := time.Now()
	requireDocker(t)
	harness.RequireTools(t, "ssh", "ssh-keygen")
	e := setup(t)
	t.Logf("setup (build binaries and images, network) took %v", time.Since(start).Round(time.Millisecond))

	t.Run("tunnel, healthcheck and stop", func(t *testing.T) { t.Parallel(); testTunnelAndStop(t, e, false) })
	t.Run("under docker run --init", func(t *testing.T) { t.Parallel(); testTunnelAndStop(t, e, true) })
	t.Run("bad variable", func(t *testing.T) { t.Parallel(); testBadVariable(t, e) })
	t.Run("ssm lifecycle", func(t *testing.T) { t.Parallel(); testSSM(t, e) })
}

// requireDocker fails loudly, with the reason, when docker cannot be used.
func requireDocker(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("docker"); err != nil {
		t.Fatalf("the docker CLI is not on PATH: the Docker tests cannot run (install docker and run as a user who may use the engine): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", "version", "--format", "{{.Server.Version}}").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) == "" {
		t.Fatalf("the Docker engine is not reachable (docker version: %v): %s\nstart dockerd, or set DOCKER_HOST; these tests never skip", err, bytes.TrimSpace(out))
	}
}

// docker runs the CLI and returns its trimmed stdout; stderr goes into the
// error.
func docker(args ...string) (string, error) {
	return dockerIn(nil, args...)
}

func dockerIn(stdin io.Reader, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Stdin = stdin
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return strings.TrimSpace(out.String()), fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

func mustDocker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := docker(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func setup(t *testing.T) *env {
	t.Helper()
	e := &env{dir: t.TempDir(), unique: fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano()%1e9)}
	root := harness.ModuleRoot(t)

	// Static binaries, as the production build makes them.
	bin := filepath.Join(e.dir, "bin")
	build := exec.Command("go", "build", "-o", bin+"/",
		"./cmd/bastion", "./test/fakeagent", "./test/fakessm/cmd/fakessm", "./test/docker/hashsvc")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	// Bastion image: Dockerfile.scratch with its documented context.
	ctx := filepath.Join(e.dir, "ctx")
	for _, d := range []string{"rootfs/var/lib/amazon/ssm", "rootfs/etc/amazon/ssm", "rootfs/var/log/amazon/ssm", "rootfs/tmp"} {
		if err := os.MkdirAll(filepath.Join(ctx, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(ctx, "rootfs/tmp"), 0o1777)
	copyFile(t, filepath.Join(bin, "bastion"), filepath.Join(ctx, "bastion"))
	copyFile(t, filepath.Join(bin, "fakeagent"), filepath.Join(ctx, "amazon-ssm-agent"))
	copyFile(t, filepath.Join(root, "test/docker/Dockerfile.scratch"), filepath.Join(ctx, "Dockerfile"))
	e.image = buildImage(t, ctx, "bastion-test:"+e.unique)

	// Peers: the tunnel destination and the fake SSM API.
	pctx := filepath.Join(e.dir, "peers")
	os.MkdirAll(pctx, 0o755)
	copyFile(t, filepath.Join(bin, "hashsvc"), filepath.Join(pctx, "hashsvc"))
	copyFile(t, filepath.Join(bin, "fakessm"), filepath.Join(pctx, "fakessm"))
	os.WriteFile(filepath.Join(pctx, "Dockerfile"), []byte("FROM scratch\nCOPY hashsvc fakessm /\n"), 0o644)
	e.peers = buildImage(t, pctx, "bastion-test-peers:"+e.unique)

	// A network of our own: its subnet is what BASTION_ALLOW opens.
	name := "bastion-test-" + e.unique
	e.netName = name
	e.network = mustDocker(t, "network", "create", name)
	t.Cleanup(func() { docker("network", "rm", e.network) })
	e.subnet = mustDocker(t, "network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", e.network)
	if !strings.Contains(e.subnet, "/") {
		t.Fatalf("network %s: no subnet (%q)", name, e.subnet)
	}

	e.user = harness.Keygen(t, e.dir, "user")
	e.host = harness.Keygen(t, e.dir, "host")
	return e
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(from)
	if err := os.WriteFile(to, b, fi.Mode().Perm()); err != nil {
		t.Fatal(err)
	}
}

// buildImage builds ctx/Dockerfile and returns the image ID, removed at the
// end of the test.
func buildImage(t *testing.T, ctx, tag string) string {
	t.Helper()
	id, err := docker("build", "-q", "--no-cache", "-t", tag, ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The legacy builder prints a deprecation notice on stderr only; the ID
	// is the last line of stdout.
	lines := strings.Split(id, "\n")
	id = strings.TrimSpace(lines[len(lines)-1])
	if !strings.HasPrefix(id, "sha256:") {
		t.Fatalf("docker build %s: unexpected output %q", ctx, id)
	}
	t.Cleanup(func() {
		if _, err := docker("rmi", "-f", id); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
	return id
}

// run starts a detached container and removes it (and its anonymous
// volumes) at the end of the test.
func run(t *testing.T, args ...string) string {
	t.Helper()
	id, err := docker(append([]string{"run", "-d"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := docker("logs", "--tail", "60", id)
			t.Logf("container %.12s logs (tail):\n%s", id, logs)
		}
		docker("rm", "-f", "-v", id)
	})
	return id
}

func (e *env) keyEnv(t *testing.T) []string {
	return []string{
		"-e", "ROOT_PUBLIC_SSH_KEY_BASE64ENCODED=" + harness.B64(e.user.Pub),
		"-e", "SSH_PRIVATE_HOST_KEY_BASE64ENCODED=" + harness.B64(e.host.PEM(t)),
		"-e", "SSH_PUBLIC_HOST_KEY_BASE64ENCODED=" + harness.B64(e.host.Pub),
	}
}

// healthFlags make the image's HEALTHCHECK run every second.
var healthFlags = []string{"--health-interval", "1s", "--health-timeout", "3s", "--health-retries", "3", "--health-start-period", "0s"}

func ipOf(t *testing.T, e *env, id string) string {
	t.Helper()
	return mustDocker(t, "inspect", "-f", fmt.Sprintf("{{(index .NetworkSettings.Networks %q).IPAddress}}", e.netName), id)
}

func waitHealthy(t *testing.T, id string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		st := mustDocker(t, "inspect", "-f", "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}", id)
		if strings.HasSuffix(st, " healthy") {
			return time.Since(start)
		}
		if !strings.HasPrefix(st, "running") {
			t.Fatalf("container %.12s is %q, not running", id, st)
		}
		if time.Since(start) > timeout {
			log := mustDocker(t, "inspect", "-f", "{{json .State.Health}}", id)
			t.Fatalf("container %.12s not healthy after %v: %s\n%s", id, timeout, st, log)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// containerLog reads the container's output (one JSON object per line).
func containerLog(t *testing.T, id string) *logtest.Buffer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out := &logtest.Buffer{}
	cmd := exec.CommandContext(ctx, "docker", "logs", id)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		t.Fatalf("docker logs: %v", err)
	}
	return out
}

func waitLog(t *testing.T, id string, timeout time.Duration, msg string, match map[string]string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		log := containerLog(t, id)
		if found := log.Find(msg, match); len(found) > 0 {
			return found[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %.12s: no log line %q %v within %v:\n%s", id, msg, match, timeout, log.String())
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// stop runs docker stop and returns how long it took and the exit code.
func stop(t *testing.T, id string) (time.Duration, int) {
	t.Helper()
	start := time.Now()
	mustDocker(t, "stop", id)
	took := time.Since(start)
	code, err := strconv.Atoi(mustDocker(t, "inspect", "-f", "{{.State.ExitCode}}", id))
	if err != nil {
		t.Fatal(err)
	}
	return took, code
}

// checkShutdown asserts the ordered shutdown in the logs.
func checkShutdown(t *testing.T, id string, steps ...string) {
	t.Helper()
	log := containerLog(t, id)
	lines, raw := log.Records(), log.String()
	last := -1
	idx := func(msg string, match map[string]string) int {
		for i, m := range lines {
			if m["msg"] == msg && logtest.Matches(m, match) {
				return i
			}
		}
		return -1
	}
	want := []struct {
		msg   string
		match map[string]string
	}{{"shutdown requested", nil}}
	for _, s := range steps {
		want = append(want, struct {
			msg   string
			match map[string]string
		}{"shutdown step done", map[string]string{"step": s}})
	}
	want = append(want, struct {
		msg   string
		match map[string]string
	}{"bastion exiting", map[string]string{"code": "0"}})
	for _, w := range want {
		i := idx(w.msg, w.match)
		if i < 0 || i < last {
			t.Fatalf("shutdown not in order: %q %v at line %d (previous at %d):\n%s", w.msg, w.match, i, last, raw)
		}
		last = i
	}
}

func testTunnelAndStop(t *testing.T, e *env, init bool) {
	target := run(t, "--network", e.network, "--entrypoint", "/hashsvc", e.peers, "-addr", ":9000")
	targetIP := ipOf(t, e, target)

	args := []string{"--network", e.network, "-p", "127.0.0.1::22", "--stop-timeout", "30",
		"-e", "BASTION_ALLOW=" + e.subnet + ":9000", "-e", "BASTION_STOP_TIMEOUT=30s"}
	if init {
		args = append(args, "--init")
	}
	args = append(args, healthFlags...)
	args = append(args, e.keyEnv(t)...)
	b := run(t, append(args, e.image)...)
	took := waitHealthy(t, b, 30*time.Second)
	t.Logf("healthy after %v", took.Round(time.Millisecond))

	started := waitLog(t, b, 10*time.Second, "bastion started", nil)
	pid := fmt.Sprint(started["pid"])
	if init && pid == "1" {
		t.Fatalf("under --init bastion should not be PID 1 (tini is): %v", started)
	}
	if !init && pid != "1" {
		t.Fatalf("bastion is PID %s in its container, want 1", pid)
	}

	hostPort := mustDocker(t, "port", b, "22/tcp")
	hostPort = strings.Split(hostPort, "\n")[0]
	i := strings.LastIndex(hostPort, ":")
	port, err := strconv.Atoi(hostPort[i+1:])
	if err != nil {
		t.Fatalf("docker port: %q", hostPort)
	}
	cdir := t.TempDir()
	cfg := harness.ClientConfig(t, cdir, map[string]string{harness.KnownHostsPattern("127.0.0.1", port): e.host.Pub},
		harness.Host{Alias: "bastion", HostName: "127.0.0.1", Port: port, User: "root", Identity: e.user.Path})

	file := filepath.Join(cdir, "payload")
	harness.RandomFile(t, file, 8<<20+12345)
	want := harness.FileSHA256(t, file)
	in, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ssh := exec.CommandContext(ctx, "ssh", "-F", cfg, "-W", targetIP+":9000", "bastion")
	ssh.Stdin = in
	var out, errb bytes.Buffer
	ssh.Stdout, ssh.Stderr = &out, &errb
	tstart := time.Now()
	if err := ssh.Run(); err != nil {
		t.Fatalf("ssh -W %s:9000 through the container: %v\n%s", targetIP, err, errb.String())
	}
	if got := strings.TrimSpace(out.String()); got != want {
		t.Fatalf("sha256 through the tunnel %q, want %q\n%s", got, want, errb.String())
	}
	t.Logf("8 MiB through the container to %s:9000 in %v", targetIP, time.Since(tstart).Round(time.Millisecond))
	waitLog(t, b, 10*time.Second, "tunnel", map[string]string{"user": "root"})

	// Not allowed: the host network outside BASTION_ALLOW.
	deny := exec.Command("ssh", "-F", cfg, "-W", targetIP+":9001", "bastion")
	deny.Stdin = strings.NewReader("x")
	if out, err := deny.CombinedOutput(); err == nil || !strings.Contains(string(out), "administratively prohibited") {
		t.Fatalf("port 9001 is outside BASTION_ALLOW and must be refused: %v\n%s", err, out)
	}

	stopTook, code := stop(t, b)
	t.Logf("docker stop took %v, exit code %d", stopTook.Round(time.Millisecond), code)
	if code != 0 {
		t.Fatalf("exit code after docker stop %d, want 0", code)
	}
	if stopTook > 25*time.Second {
		t.Fatalf("docker stop took %v: not inside the 30s stop timeout margin", stopTook)
	}
	checkShutdown(t, b, "drain ssh tunnels", "sweep remaining processes")
}

func testBadVariable(t *testing.T, e *env) {
	id := run(t, append(e.keyEnv(t), "-e", "BASTION_STOP_TIMEOUT=soon", e.image)...)
	code := mustDocker(t, "wait", id)
	if code == "0" {
		t.Fatalf("bastion with BASTION_STOP_TIMEOUT=soon exited 0")
	}
	raw := containerLog(t, id).String()
	var nonEmpty []string
	for _, l := range strings.Split(raw, "\n") {
		if strings.TrimSpace(l) != "" {
			nonEmpty = append(nonEmpty, l)
		}
	}
	if len(nonEmpty) != 1 || !strings.Contains(nonEmpty[0], "BASTION_STOP_TIMEOUT") || strings.Contains(nonEmpty[0], "soon") {
		t.Fatalf("want exactly one line naming BASTION_STOP_TIMEOUT (without the value), got exit %s and:\n%s", code, raw)
	}
	t.Logf("exit %s: %s", code, nonEmpty[0])
}

// fakeState reads the fake SSM API's /_fake/state.
func fakeState(t *testing.T, url string) fakessm.State {
	t.Helper()
	resp, err := http.Get(url + "/_fake/state")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st fakessm.State
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

func hasInstance(st fakessm.State, id string) bool {
	for _, in := range st.Instances {
		if in.InstanceID == id {
			return true
		}
	}
	return false
}

func testSSM(t *testing.T, e *env) {
	api := run(t, "--network", e.network, "--entrypoint", "/fakessm", e.peers, "-addr", "0.0.0.0:8080")
	apiURL := "http://" + ipOf(t, e, api) + ":8080"
	deadline := time.Now().Add(20 * time.Second)
	for {
		if resp, err := http.Get(apiURL + "/_fake/state"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fake SSM API at %s not answering", apiURL)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// /var/lib/amazon on a named volume: what a restarted container of
	// the same task would find.
	vol := mustDocker(t, "volume", "create", "bastion-test-"+e.unique)
	t.Cleanup(func() { docker("volume", "rm", "-f", vol) })

	ssmArgs := func(name string) []string {
		a := []string{"--network", e.network, "--stop-timeout", "30", "--hostname", name,
			"-v", vol + ":/var/lib/amazon",
			"-e", "INSTANCE_IAM_ROLE=bastion-agent",
			"-e", "AWS_REGION=" + fakessm.DefaultRegion,
			"-e", "AWS_ACCESS_KEY_ID=" + fakessm.DefaultAccessKeyID,
			"-e", "AWS_SECRET_ACCESS_KEY=" + fakessm.DefaultSecretAccessKey,
			"-e", "AWS_ENDPOINT_URL_SSM=" + apiURL,
			"-e", "FAKE_AGENT_STOP_DELAY=1s",
			"-e", "FAKE_AGENT_PING_INTERVAL=2s",
			"-e", "BASTION_SSM_READY_TIMEOUT=60s",
			"-e", "BASTION_STOP_TIMEOUT=30s",
		}
		a = append(a, healthFlags...)
		a = append(a, e.keyEnv(t)...)
		return append(a, e.image)
	}
	online := func(id string) string {
		t.Helper()
		line := waitLog(t, id, 90*time.Second, "ssm agent online", nil)
		return fmt.Sprint(line["instance_id"])
	}

	// 1. Registered on start, healthy, deregistered on docker stop.
	a := run(t, ssmArgs("bastion-a")...)
	idA := online(a)
	st := fakeState(t, apiURL)
	if !hasInstance(st, idA) || len(st.Activations) != 0 {
		t.Fatalf("after start: want instance %s and no activation left: %+v", idA, st)
	}
	waitHealthy(t, a, 30*time.Second)
	took, code := stop(t, a)
	t.Logf("ssm: docker stop took %v, exit %d", took.Round(time.Millisecond), code)
	if code != 0 {
		t.Fatalf("exit code %d after docker stop, want 0", code)
	}
	checkShutdown(t, a, "drain ssh tunnels", "stop ssm agent", "deregister managed instance", "sweep remaining processes")
	if st := fakeState(t, apiURL); hasInstance(st, idA) {
		t.Fatalf("instance %s still registered after docker stop", idA)
	}

	// 2. docker kill -s KILL leaves the instance behind.
	b := run(t, ssmArgs("bastion-b")...)
	idB := online(b)
	mustDocker(t, "kill", "-s", "KILL", b)
	mustDocker(t, "wait", b)
	if st := fakeState(t, apiURL); !hasInstance(st, idB) {
		t.Fatalf("killed container's instance %s vanished: the fake is not what it seems", idB)
	}
	body := strings.NewReader(fmt.Sprintf(`{"instanceId":%q,"ago":"20m"}`, idB))
	resp, err := http.Post(apiURL+"/_fake/ping", "application/json", body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/_fake/ping: %v %v", err, resp)
	}
	resp.Body.Close()
	for _, in := range fakeState(t, apiURL).Instances {
		if in.InstanceID == idB && in.PingStatus != fakessm.PingConnectionLost {
			t.Fatalf("instance %s is %s, want ConnectionLost", idB, in.PingStatus)
		}
	}

	// 3. The next container on the same volume finds the stale
	// registration and deregisters it before registering itself.
	c := run(t, ssmArgs("bastion-c")...)
	idC := online(c)
	waitLog(t, c, 10*time.Second, "previous instance deregistered", map[string]string{"instance_id": idB})
	st = fakeState(t, apiURL)
	if hasInstance(st, idB) || !hasInstance(st, idC) || idC == idB {
		t.Fatalf("after restart: want only %s, got %+v", idC, st.Instances)
	}
	if _, code := stop(t, c); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	st = fakeState(t, apiURL)
	if len(st.Instances) != 0 || len(st.Activations) != 0 {
		t.Fatalf("leaked: %d instances, %d activations: %+v", len(st.Instances), len(st.Activations), st)
	}
}
