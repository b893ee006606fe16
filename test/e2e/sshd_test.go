package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/test/harness"
)

// jumpSetup is a bastion with a pinned host key, an OpenSSH target and a
// client config that names both.
type jumpSetup struct {
	dir     string
	client  harness.Key
	bastion *harness.Bastion
	target  *harness.Target
	config  string
}

// newJump starts a target sshd and a bastion; allow computes BASTION_ALLOW
// from the target's port (nil = unset).
func newJump(t *testing.T, allow func(targetPort int) string, authorized string, o harness.BastionOptions) *jumpSetup {
	t.Helper()
	harness.RequireTools(t, "ssh", "ssh-keygen")
	s := &jumpSetup{dir: t.TempDir()}
	s.client = harness.Keygen(t, s.dir, "client")
	if authorized == "" {
		authorized = s.client.Pub
	}
	s.target = harness.StartTarget(t, s.dir, s.client.Pub)
	if o.Env == nil {
		o.Env = map[string]string{}
	}
	o.Env["ROOT_PUBLIC_SSH_KEY_BASE64ENCODED"] = harness.B64(authorized + "\n")
	if allow != nil {
		o.Env["BASTION_ALLOW"] = allow(s.target.Port)
	}
	s.bastion = harness.StartBastion(t, s.dir, o)
	s.config = harness.ClientConfig(t, s.dir, map[string]string{
		harness.KnownHostsPattern("127.0.0.1", s.bastion.Port): s.bastion.HostKey.Pub,
		harness.KnownHostsPattern("127.0.0.1", s.target.Port):  s.target.HostKey.Pub,
	},
		harness.Host{Alias: "bastion", HostName: "127.0.0.1", Port: s.bastion.Port, User: "root", Identity: s.client.Path},
		harness.Host{Alias: "target", HostName: "127.0.0.1", Port: s.target.Port, User: "root", Identity: s.client.Path},
	)
	return s
}

type result struct {
	stdout, stderr string
	code           int
}

func run(t *testing.T, stdin io.Reader, timeout time.Duration, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = stdin
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		code = -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
	}
	if ctx.Err() != nil {
		t.Fatalf("%s %v timed out after %v; stderr: %s", name, args, timeout, errb.String())
	}
	return result{out.String(), errb.String(), code}
}

func (s *jumpSetup) ssh(t *testing.T, stdin io.Reader, args ...string) result {
	t.Helper()
	return run(t, stdin, 60*time.Second, "ssh", append([]string{"-F", s.config}, args...)...)
}

func TestJumpToOpenSSHTarget(t *testing.T) {
	t.Parallel()
	harness.RequireTools(t, "scp", "rsync")
	closed := newJump(t, nil, "", harness.BastionOptions{})
	// Loopback is denied by default: the target only becomes reachable
	// once BASTION_ALLOW names it.
	r := closed.ssh(t, nil, "-J", "bastion", "target", "echo", "hello")
	if r.code == 0 || !strings.Contains(r.stderr, "administratively prohibited") {
		t.Fatalf("jump to loopback target without BASTION_ALLOW: code %d stderr %q", r.code, r.stderr)
	}

	s := newJump(t, func(p int) string { return fmt.Sprintf("127.0.0.1/32:%d", p) }, "", harness.BastionOptions{})
	dir, client, b, target, cfg := s.dir, s.client, s.bastion, s.target, s.config
	sshc := func(args ...string) result {
		return run(t, nil, 120*time.Second, "ssh", append([]string{"-F", cfg}, args...)...)
	}

	t.Run("ssh -J with pinned host keys", func(t *testing.T) {
		r := sshc("-J", "bastion", "target", "echo", "jumped")
		if r.code != 0 || strings.TrimSpace(r.stdout) != "jumped" {
			t.Fatalf("code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
		}
		line := b.Log.WaitFor(t, 5*time.Second, "tunnel", map[string]string{"requested": fmt.Sprintf("127.0.0.1:%d", target.Port)})
		if line["dialed"] != fmt.Sprintf("127.0.0.1:%d", target.Port) || line["user"] != "root" ||
			!strings.HasPrefix(fmt.Sprint(line["fingerprint"]), "SHA256:") || line["bytes_up"].(float64) <= 0 || line["bytes_down"].(float64) <= 0 {
			t.Fatalf("tunnel audit line incomplete: %v", line)
		}
	})

	t.Run("wrong pinned host key is refused by the client", func(t *testing.T) {
		other := harness.Keygen(t, t.TempDir(), "other")
		badCfg := harness.ClientConfig(t, t.TempDir(), map[string]string{
			harness.KnownHostsPattern("127.0.0.1", b.Port): other.Pub,
		}, harness.Host{Alias: "bastion", HostName: "127.0.0.1", Port: b.Port, User: "root", Identity: client.Path})
		r := run(t, nil, 30*time.Second, "ssh", "-F", badCfg, "-W", "127.0.0.1:1", "bastion")
		if r.code == 0 || !strings.Contains(r.stderr, "REMOTE HOST IDENTIFICATION HAS CHANGED") {
			t.Fatalf("code %d stderr %q", r.code, r.stderr)
		}
	})

	src := filepath.Join(dir, "random.bin")
	harness.RandomFile(t, src, 64<<20)
	want := harness.FileSHA256(t, src)

	t.Run("scp 64 MiB through the jump", func(t *testing.T) {
		dst := filepath.Join(dir, "scp-copy.bin")
		r := run(t, nil, 180*time.Second, "scp", "-F", cfg, "-J", "bastion", src, "target:"+dst)
		if r.code != 0 {
			t.Fatalf("scp: code %d stderr %q", r.code, r.stderr)
		}
		back := filepath.Join(dir, "scp-back.bin")
		r = run(t, nil, 180*time.Second, "scp", "-F", cfg, "-J", "bastion", "target:"+dst, back)
		if r.code != 0 {
			t.Fatalf("scp back: code %d stderr %q", r.code, r.stderr)
		}
		if got, got2 := harness.FileSHA256(t, dst), harness.FileSHA256(t, back); got != want || got2 != want {
			t.Fatalf("checksums differ: src %s remote %s back %s", want, got, got2)
		}
		t.Logf("scp 64 MiB there and back: sha256 %s equal", want)
	})

	t.Run("rsync 64 MiB through the jump", func(t *testing.T) {
		dst := filepath.Join(dir, "rsync-copy.bin")
		r := run(t, nil, 180*time.Second, "rsync", "-e", "ssh -F "+cfg+" -J bastion", src, "target:"+dst)
		if r.code != 0 {
			t.Fatalf("rsync: code %d stderr %q", r.code, r.stderr)
		}
		if got := harness.FileSHA256(t, dst); got != want {
			t.Fatalf("checksum differs: src %s dst %s", want, got)
		}
		t.Logf("rsync 64 MiB: sha256 %s equal", want)
	})
}

func TestStdioForwardHalfClose(t *testing.T) {
	t.Parallel()
	hash := harness.Serve(t, "tcp", "127.0.0.1:0", harness.HashAtEOF)
	port := hash.Addr().(*net.TCPAddr).Port
	s := newJump(t, func(int) string { return fmt.Sprintf("127.0.0.1:%d", port) }, "", harness.BastionOptions{})
	payload := make([]byte, 5<<20)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	// ssh -W with a stdin that ends: the EOF must reach the service as a
	// FIN, and its answer must still come back over the half-closed tunnel.
	r := s.ssh(t, bytes.NewReader(payload), "-W", fmt.Sprintf("127.0.0.1:%d", port), "bastion")
	sum := sha256Hex(payload)
	if r.code != 0 || strings.TrimSpace(r.stdout) != sum {
		t.Fatalf("code %d stdout %q want %s stderr %q", r.code, r.stdout, sum, r.stderr)
	}
	line := s.bastion.Log.WaitFor(t, 5*time.Second, "tunnel", nil)
	if line["bytes_up"].(float64) != float64(len(payload)) || line["bytes_down"].(float64) != float64(len(sum)+1) {
		t.Fatalf("byte counts wrong: %v", line)
	}
	if line["close_reason"] != "eof both ways" {
		t.Fatalf("close reason %v", line["close_reason"])
	}
}

// waitForwarding waits until ssh -L listens on lport, or exits: then it
// returns ssh's output.
func waitForwarding(t *testing.T, p *harness.Proc, lport int) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-p.Done():
			return p.Log.String()
		default:
		}
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", lport), time.Second); err == nil {
			c.Close()
			return ""
		}
		if time.Now().After(deadline) {
			t.Fatalf("ssh -L not listening on %d after 10 s:\n%s", lport, p.Log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// localForward runs ssh -N -L 127.0.0.1:LPORT:dest through the host
// "bastion" of config. The local port is picked before ssh binds it, after
// authenticating, so another process can take it in between: ssh then
// exits (ExitOnForwardFailure) and another port is tried.
func localForward(t *testing.T, config, dest string) *forwarder {
	t.Helper()
	for attempt := 1; ; attempt++ {
		lport := harness.FreePort(t)
		cmd := exec.Command("ssh", "-F", config, "-N", "-o", "ExitOnForwardFailure=yes",
			"-L", fmt.Sprintf("127.0.0.1:%d:%s", lport, dest), "bastion")
		p := harness.Start(t, cmd)
		out := waitForwarding(t, p, lport)
		if strings.Contains(out, "Address already in use") && attempt < 5 {
			continue
		}
		select {
		case <-p.Done():
			t.Fatalf("ssh -L %s exited:\n%s", dest, out)
		default:
		}
		return &forwarder{proc: p, lport: lport}
	}
}

func TestLocalForward(t *testing.T) {
	t.Parallel()
	echo := harness.Serve(t, "tcp", "127.0.0.1:0", harness.Echo)
	port := echo.Addr().(*net.TCPAddr).Port
	s := newJump(t, func(int) string { return fmt.Sprintf("127.0.0.1:%d", port) }, "", harness.BastionOptions{})
	f := localForward(t, s.config, fmt.Sprintf("127.0.0.1:%d", port))
	lport, p := f.lport, f.proc
	var wg sync.WaitGroup
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", lport))
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			msg := fmt.Sprintf("hello %d through -L\n", i)
			fmt.Fprint(c, msg)
			got, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || got != msg {
				t.Errorf("echo via -L: %q %v", got, err)
			}
		}(i)
	}
	wg.Wait()
	p.Signal(15)
	p.Wait(5 * time.Second)
}

func TestOnlyDirectTCPIP(t *testing.T) {
	t.Parallel()
	s := newJump(t, nil, "", harness.BastionOptions{})
	r := s.ssh(t, nil, "bastion", "true")
	if r.code == 0 {
		t.Fatalf("session/exec was served: %q", r.stdout)
	}
	r = s.ssh(t, nil, "-N", "-o", "ExitOnForwardFailure=yes", "-R", "127.0.0.1:0:127.0.0.1:22", "bastion")
	if r.code == 0 || !strings.Contains(r.stderr, "forwarding failed") {
		t.Fatalf("remote forward: code %d stderr %q", r.code, r.stderr)
	}
	r = s.ssh(t, nil, "-s", "bastion", "sftp")
	if r.code == 0 {
		t.Fatalf("subsystem served")
	}
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
