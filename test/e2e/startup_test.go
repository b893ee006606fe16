package e2e

import (
	"encoding/json"
	"net"
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

// runToExit runs the binary to its exit and returns the exit code and its
// output lines.
func runToExit(t *testing.T, cmd *exec.Cmd) (int, []string) {
	t.Helper()
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%s did not exit within 30 s:\n%s", cmd.Path, out)
	}
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("%s: %v", cmd.Path, err)
		}
	}
	return cmd.ProcessState.ExitCode(), strings.Split(strings.TrimSpace(string(out)), "\n")
}

// listenErrorLine finds the JSON "ssh server" error line.
func listenErrorLine(t *testing.T, lines []string) string {
	t.Helper()
	for _, l := range lines {
		var m struct{ Level, Msg, Error string }
		if json.Unmarshal([]byte(l), &m) == nil && m.Msg == "ssh server" && m.Level == "ERROR" {
			return m.Error
		}
	}
	t.Fatalf("no \"ssh server\" error line:\n%s", strings.Join(lines, "\n"))
	return ""
}

// TestListenErrors: a taken port and a privileged port without the right
// to bind it stop the bastion (exit 3) with a line that names
// BASTION_SSH_ADDR and says what to do.
func TestListenErrors(t *testing.T) {
	t.Parallel()
	bin, _ := harness.Build(t)
	user := harness.Keygen(t, t.TempDir(), "user")

	t.Run("address in use", func(t *testing.T) {
		t.Parallel()
		taken, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer taken.Close()
		cmd := exec.Command(bin)
		cmd.Env = harness.BaseEnv(map[string]string{
			"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": user.Pub,
			"BASTION_SSH_ADDR":                  taken.Addr().String(),
		})
		code, lines := runToExit(t, cmd)
		msg := listenErrorLine(t, lines)
		if code != 3 || !strings.Contains(msg, "BASTION_SSH_ADDR "+taken.Addr().String()+": address already in use: another process holds this port") ||
			!strings.Contains(msg, "choose another port") {
			t.Fatalf("exit %d, error %q", code, msg)
		}
	})

	t.Run("privileged port as an unprivileged user", func(t *testing.T) {
		t.Parallel()
		harness.RequireRoot(t)
		harness.RequireTools(t, "unshare", "setpriv", "ip")
		// A directory nobody may read, holding a copy of the binary.
		dir, err := os.MkdirTemp("", "bastion-nobody-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		nbin := filepath.Join(dir, "bastion")
		if err := os.WriteFile(nbin, b, 0o755); err != nil {
			t.Fatal(err)
		}
		// A network namespace of its own: port 22 there is free, and below
		// its net.ipv4.ip_unprivileged_port_start (1024 in a new namespace).
		cmd := exec.Command("unshare", "--net", "--", "sh", "-c",
			`ip link set lo up && exec setpriv --reuid=65534 --regid=65534 --clear-groups "$0"`, nbin)
		cmd.Env = harness.BaseEnv(map[string]string{
			"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": user.Pub,
			"BASTION_SSH_ADDR":                  "127.0.0.1:22",
		})
		code, lines := runToExit(t, cmd)
		msg := listenErrorLine(t, lines)
		if code != 3 || !strings.Contains(msg, "BASTION_SSH_ADDR 127.0.0.1:22: permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE") ||
			!strings.Contains(msg, "use a port of 1024 or more") {
			t.Fatalf("exit %d, error %q\n%s", code, msg, strings.Join(lines, "\n"))
		}
	})
}

// TestLogFormatText: BASTION_LOG_FORMAT=text gives key=value lines, for a
// terminal, from start to exit.
func TestLogFormatText(t *testing.T) {
	t.Parallel()
	bin, _ := harness.Build(t)
	dir := t.TempDir()
	user := harness.Keygen(t, dir, "user")
	cmd := exec.Command(bin)
	cmd.Env = harness.BaseEnv(map[string]string{
		"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": user.Pub,
		"BASTION_SSH_ADDR":                  "127.0.0.1:0",
		"BASTION_LOG_FORMAT":                "text",
		"BASTION_ALOW":                      "10.0.0.0/8",
	})
	// Stdout only: it must be all text lines. exec copies it into out
	// before Wait returns, so nothing written before the exit is lost.
	out := &logtest.Buffer{}
	cmd.Stdout = out
	p := harness.Start(t, cmd)
	waitUntil(t, "bastion started", 20*time.Second, func() bool {
		if strings.Contains(out.String(), `msg="bastion started"`) {
			return true
		}
		select {
		case <-p.Done():
			t.Fatalf("exited before starting:\n%s", out.String())
		default:
		}
		return false
	})
	p.Signal(syscall.SIGTERM)
	if code := p.Wait(20 * time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, out.String())
	}
	all := strings.Split(strings.TrimSpace(out.String()), "\n")
	text := strings.Join(all, "\n")
	for _, l := range all {
		if !strings.HasPrefix(l, "time=") || !strings.Contains(l, " level=") || !strings.Contains(l, " msg=") {
			t.Errorf("not a key=value line: %q", l)
		}
	}
	for _, want := range []string{
		`level=WARN msg="unknown variable ignored (typo?)" variable=BASTION_ALOW did_you_mean=BASTION_ALLOW`,
		`msg="bastion started"`, "ssh_addr=127.0.0.1:", `msg="bastion exiting" code=0`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("text log lacks %q:\n%s", want, text)
		}
	}
}
