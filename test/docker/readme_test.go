package docker

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/internal/logtest"
	"github.com/bastion-dev/bastion/test/harness"
)

// The README's Docker section names a container, an image and a host port
// of its own; test runs on this machine (other checkouts included) take
// turns through this lock.
const readmeDockerLock = "/tmp/bastion-readme-docker.lock"

// TestReadmeDocker runs the README's Docker section as written, with a
// fresh home directory holding only the user's key: it builds the FROM
// scratch image without a registry, makes the host key file and starts the
// container; then OpenSSH, pinning the key from that file, tunnels through
// the published port to a service in another container, and docker stop
// ends it in order with exit 0.
func TestReadmeDocker(t *testing.T) {
	t.Parallel()
	requireDocker(t)
	harness.RequireTools(t, "go", "ssh", "ssh-keygen", "sh")
	blocks := harness.ReadmeBlocks(t, "## Run it in Docker on your machine")
	if len(blocks) != 1 {
		t.Fatalf("README.md: the Docker section should have exactly one ```sh block, has %d", len(blocks))
	}
	block := blocks[0]

	lock, err := os.OpenFile(readmeDockerLock, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	// A container left by a killed run of this test would hold the name.
	docker("rm", "-f", "bastion-local")

	home := t.TempDir()
	if err := os.Mkdir(filepath.Join(home, ".ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	user := harness.Keygen(t, filepath.Join(home, ".ssh"), "id_ed25519")
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home}
	if h := os.Getenv("DOCKER_HOST"); h != "" {
		env = append(env, "DOCKER_HOST="+h)
	}
	env = append(env, harness.GoEnv(t)...)

	sh := exec.Command("sh", "-c", block)
	sh.Dir = harness.ModuleRoot(t)
	sh.Env = env
	out, err := sh.CombinedOutput()
	t.Cleanup(func() {
		docker("rm", "-f", "bastion-local")
		docker("rmi", "bastion-local")
	})
	if err != nil {
		t.Fatalf("the README's Docker block failed: %v\n%s", err, out)
	}

	// The host key the block made, which the container must present.
	raw, err := os.ReadFile(filepath.Join(home, ".ssh", "bastion_host_key.env"))
	if err != nil {
		t.Fatalf("the block made no host key file: %v", err)
	}
	hostPub := harness.HostKeyPub(t, raw)

	// Logs and the exit code are read while the container lives (--rm).
	ctx, cancel := context.WithCancel(context.Background())
	logs := exec.CommandContext(ctx, "docker", "logs", "-f", "bastion-local")
	logBuf := &logtest.Buffer{}
	logs.Stdout, logs.Stderr = logBuf, logBuf
	if err := logs.Start(); err != nil {
		t.Fatal(err)
	}
	wait := exec.CommandContext(ctx, "docker", "wait", "bastion-local")
	var waitOut bytes.Buffer
	wait.Stdout = &waitOut
	if err := wait.Start(); err != nil {
		cancel()
		logs.Wait()
		t.Fatal(err)
	}
	// On a failure the container still runs (it is removed by the cleanup,
	// after this): end both followers first, or waiting on them hangs.
	defer func() {
		cancel()
		logs.Wait()
		wait.Wait()
	}()
	logBuf.WaitFor(t, 30*time.Second, "bastion started", nil)

	// A tunnel destination in another container on the same default
	// network, as a user's service would be.
	pctx := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(pctx, "hashsvc"), "./test/docker/hashsvc")
	build.Dir = harness.ModuleRoot(t)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build hashsvc: %v\n%s", err, b)
	}
	os.WriteFile(filepath.Join(pctx, "Dockerfile"), []byte("FROM scratch\nCOPY hashsvc /\nENTRYPOINT [\"/hashsvc\"]\n"), 0o644)
	img := buildImage(t, pctx, fmt.Sprintf("bastion-readme-hashsvc:%d", os.Getpid()))
	svc := run(t, "--rm", img, "-addr", ":9000")
	svcIP, err := docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", svc)
	if err != nil || svcIP == "" {
		t.Fatalf("service container address %q: %v", svcIP, err)
	}

	cdir := t.TempDir()
	cfg := harness.ClientConfig(t, cdir, map[string]string{harness.KnownHostsPattern("127.0.0.1", 2222): hostPub},
		harness.Host{Alias: "bastion-local", HostName: "127.0.0.1", Port: 2222, User: "root", Identity: user.Path})
	payload := filepath.Join(cdir, "payload")
	harness.RandomFile(t, payload, 1<<20+17)
	in, err := os.Open(payload)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	ssh := exec.Command("ssh", "-F", cfg, "-W", svcIP+":9000", "bastion-local")
	ssh.Stdin = in
	var sshOut, sshErr bytes.Buffer
	ssh.Stdout, ssh.Stderr = &sshOut, &sshErr
	if err := ssh.Run(); err != nil {
		t.Fatalf("ssh -W %s:9000 through the README's container (its host key pinned): %v\n%s\n%s", svcIP, err, sshErr.String(), logBuf.String())
	}
	if got, want := strings.TrimSpace(sshOut.String()), harness.FileSHA256(t, payload); got != want {
		t.Fatalf("sha256 through the tunnel %q, want %q", got, want)
	}

	mustDocker(t, "stop", "bastion-local")
	if err := wait.Wait(); err != nil {
		t.Fatalf("docker wait: %v", err)
	}
	if code := strings.TrimSpace(waitOut.String()); code != "0" {
		t.Fatalf("exit code %s after docker stop, want 0:\n%s", code, logBuf.String())
	}
	for _, want := range []string{`"msg":"tunnel"`, `"msg":"shutdown requested"`, `"msg":"bastion exiting","code":0`, `"host_key_ephemeral":false`} {
		if !strings.Contains(logBuf.String(), want) {
			t.Errorf("container log lacks %s:\n%s", want, logBuf.String())
		}
	}
}
