package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/sshd"
	"github.com/bastion-dev/bastion/test/harness"
	gossh "golang.org/x/crypto/ssh"
)

// serveBanner listens on loopback and writes banner to every client, then
// holds the connection until the client goes; "" writes nothing.
func serveBanner(t *testing.T, banner string) string {
	t.Helper()
	ln := harness.Serve(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		if banner != "" {
			c.Write([]byte(banner))
		}
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		io.Copy(io.Discard, c)
	})
	return ln.Addr().String()
}

// closedAddr is a loopback address nobody listens on.
func closedAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func runHealth(t *testing.T) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	code := healthcheck(nil)
	return code, time.Since(start)
}

// sshServer serves the real SSH server with a fresh host key on loopback
// and returns its address and host key.
func sshServer(t *testing.T) (string, gossh.PublicKey) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	host, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := sshd.ParseAuthorizedKeys(gossh.MarshalAuthorizedKey(host.PublicKey()))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := sshd.New(sshd.Config{HostSigners: []gossh.Signer{host}, AuthorizedKeys: keys})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return ln.Addr().String(), host.PublicKey()
}

// publish writes a run state naming addr and key where the healthcheck
// looks, for this test.
func publish(t *testing.T, addr string, key gossh.PublicKey) {
	t.Helper()
	old := runStateFiles
	runStateFiles = []string{filepath.Join(t.TempDir(), "ssh.json")}
	t.Cleanup(func() { runStateFiles = old })
	if _, err := writeRunState(runState{PID: os.Getpid(), SSHAddr: addr, HostKey: string(gossh.MarshalAuthorizedKey(key))}); err != nil {
		t.Fatal(err)
	}
}

func TestHealthcheckSSH(t *testing.T) {
	t.Setenv("INSTANCE_IAM_ROLE", "")
	t.Setenv("BASTION_SSM", "")
	addr, key := sshServer(t)
	other, _ := sshServer(t) // another SSH server: same software, another host key
	_, port, _ := net.SplitHostPort(addr)
	publish(t, addr, key)
	tests := []struct {
		name string
		addr string
		want int
	}{
		{"this bastion", addr, 0},
		{"wildcard address checked on loopback", ":" + port, 0},
		{"0.0.0.0 checked on loopback", "0.0.0.0:" + port, 0},
		{"port 0: the one in the run state", "127.0.0.1:0", 0},
		{"another SSH server", other, 1},
		{"not ssh", serveBanner(t, "HTTP/1.1 400 Bad Request\r\n\r\n"), 1},
		{"ssh 1 only", serveBanner(t, "SSH-1.5-old\r\n"), 1},
		{"silent listener", serveBanner(t, ""), 1},
		{"nothing listening", closedAddr(t), 1},
		{"bad address", "nonsense", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("BASTION_SSH_ADDR", tt.addr)
			code, took := runHealth(t)
			if code != tt.want {
				t.Fatalf("healthcheck on %q = %d, want %d", tt.addr, code, tt.want)
			}
			if took >= time.Second {
				t.Fatalf("healthcheck took %v, must finish within 1s", took)
			}
		})
	}
	t.Run("no run state: no bastion here", func(t *testing.T) {
		runStateFiles = []string{filepath.Join(t.TempDir(), "absent.json")}
		t.Setenv("BASTION_SSH_ADDR", addr)
		if code, _ := runHealth(t); code != 1 {
			t.Fatalf("healthcheck without a run state = %d, want 1", code)
		}
	})
}

func TestHealthcheckUsage(t *testing.T) {
	if code := healthcheck([]string{"extra"}); code != 2 {
		t.Fatalf("healthcheck with an argument = %d, want 2", code)
	}
}

// fakeAgent starts a copy of sleep under a unique name, standing in for the
// agent process (found by its command name as the real one is).
func fakeAgent(t *testing.T, dir, name string) *exec.Cmd {
	t.Helper()
	src, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatalf("sleep not found: %v", err)
	}
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, name)
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

func TestHealthcheckSSM(t *testing.T) {
	dir := t.TempDir()
	oldFile, oldName := registrationFile, agentName
	t.Cleanup(func() { registrationFile, agentName = oldFile, oldName })
	registrationFile = filepath.Join(dir, "registration")
	// Longer than the 15 bytes the kernel keeps, as amazon-ssm-agent is.
	agentName = fmt.Sprintf("hc%d-ssm-agent-x", os.Getpid()%100000)
	addr, key := sshServer(t)
	publish(t, addr, key)
	t.Setenv("BASTION_SSH_ADDR", addr)
	t.Setenv("INSTANCE_IAM_ROLE", "bastion-agent")
	t.Setenv("AWS_REGION", "eu-west-1")
	t.Setenv("BASTION_SSM", "")

	check := func(t *testing.T, want int) {
		t.Helper()
		code, took := runHealth(t)
		if code != want {
			t.Fatalf("healthcheck = %d, want %d", code, want)
		}
		if took >= time.Second {
			t.Fatalf("healthcheck took %v", took)
		}
	}

	t.Run("not registered, no agent", func(t *testing.T) { check(t, 1) })
	if err := os.WriteFile(registrationFile, []byte(`{"ManagedInstanceID":"mi-0123456789abcdef0","Region":"us-east-1"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Run("registered, no agent", func(t *testing.T) { check(t, 1) })

	agent := fakeAgent(t, dir, agentName)
	t.Run("registered, agent running", func(t *testing.T) { check(t, 0) })

	os.Remove(registrationFile)
	t.Run("agent running, registration file gone", func(t *testing.T) { check(t, 1) })
	os.WriteFile(registrationFile, []byte("{}"), 0o600)

	// Killed but not reaped: a zombie is not a running agent.
	agent.Process.Kill()
	deadline := time.Now().Add(5 * time.Second)
	for processRunning(agentName) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	t.Run("agent is a zombie", func(t *testing.T) { check(t, 1) })
	agent.Wait()

	// BASTION_SSM as the entrypoint reads it: the agent is gone now, so
	// every spelling of "on" must fail and every spelling of "off" pass.
	for _, tc := range []struct {
		ssm, role string
		want      int
	}{
		{"off", "bastion-agent", 0},
		{"OFF", "bastion-agent", 0},
		{"false", "bastion-agent", 0},
		{"0", "bastion-agent", 0},
		{"auto", "", 0},
		{"", "", 0},
		{"auto", "bastion-agent", 1},
		{"on", "bastion-agent", 1},
		{"true", "bastion-agent", 1},
		{"1", "bastion-agent", 1},
		// Configurations the entrypoint refuses: no bastion runs with them.
		{"on", "", 1},
		{"maybe", "bastion-agent", 1},
	} {
		t.Run(fmt.Sprintf("BASTION_SSM=%q INSTANCE_IAM_ROLE=%q", tc.ssm, tc.role), func(t *testing.T) {
			t.Setenv("BASTION_SSM", tc.ssm)
			t.Setenv("INSTANCE_IAM_ROLE", tc.role)
			check(t, tc.want)
		})
	}
	t.Run("BASTION_SSM=on with the agent running", func(t *testing.T) {
		fakeAgent(t, dir, agentName)
		t.Setenv("BASTION_SSM", "on")
		check(t, 0)
	})
	t.Run("ssh down fails even with ssm healthy", func(t *testing.T) {
		fakeAgent(t, dir, agentName)
		t.Setenv("BASTION_SSH_ADDR", closedAddr(t))
		check(t, 1)
	})
}
