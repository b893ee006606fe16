package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/test/harness"
)

// TestBadEnvironment: every bad input exits 78 (EX_CONFIG) at once with one line that
// names the variable (and line), before any AWS call, without echoing a
// secret.
func TestBadEnvironment(t *testing.T) {
	t.Parallel()
	bin, _ := harness.Build(t)
	dir := t.TempDir()
	user := harness.Keygen(t, dir, "user")
	host := harness.Keygen(t, dir, "host")
	other := harness.Keygen(t, dir, "other")
	rsa1024 := harness.Keygen(t, dir, "rsa1024", "-t", "rsa", "-b", "1024")
	locked := harness.Keygen(t, dir, "locked")
	if out, err := exec.Command("ssh-keygen", "-q", "-p", "-P", "", "-N", "hunter2", "-f", locked.Path).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen -p: %v %s", err, out)
	}

	// Any AWS call would land here; none may.
	var awsCalls atomic.Int32
	aws := harness.Serve(t, "tcp", "127.0.0.1:0", func(c net.Conn) { awsCalls.Add(1) })

	auth := harness.B64(user.Pub)
	hostPEM := harness.B64(host.PEM(t))
	cases := []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"no authorized keys", map[string]string{}, []string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED is not set"}},
		{"authorized keys not base64", map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": "%%%not-base64%%%"}, []string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED", "base64"}},
		{"unknown option on line 3", map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": harness.B64("# team keys\n" + user.Pub + "\nagent-fwd " + other.Pub + "\n")},
			[]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED line 3", `unknown option "agent-fwd"`}},
		{"garbage on line 2", map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": harness.B64(user.Pub + "\nnot a key\n")},
			[]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED line 2"}},
		{"short RSA user key", map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": harness.B64(user.Pub + "\n" + rsa1024.Pub)},
			[]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED line 2", "1024 bits"}},
		{"only comments", map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": harness.B64("# nobody yet\n\n")}, []string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED", "no keys"}},
		{"bad from pattern", map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": harness.B64(`from="10.0.0.0/99" ` + user.Pub)}, []string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED line 1", "from"}},
		{"host key garbage", map[string]string{"SSH_PRIVATE_HOST_KEY_BASE64ENCODED": harness.B64("hello world")}, []string{"SSH_PRIVATE_HOST_KEY_BASE64ENCODED"}},
		{"host key passphrase", map[string]string{"SSH_PRIVATE_HOST_KEY_BASE64ENCODED": harness.B64(locked.PEM(t))}, []string{"SSH_PRIVATE_HOST_KEY_BASE64ENCODED", "passphrase"}},
		{"host key RSA 1024", map[string]string{"SSH_PRIVATE_HOST_KEY_BASE64ENCODED": harness.B64(rsa1024.PEM(t))}, []string{"SSH_PRIVATE_HOST_KEY_BASE64ENCODED", "too short"}},
		{"host public key mismatch", map[string]string{"SSH_PRIVATE_HOST_KEY_BASE64ENCODED": hostPEM, "SSH_PUBLIC_HOST_KEY_BASE64ENCODED": harness.B64(other.Pub)},
			[]string{"SSH_PUBLIC_HOST_KEY_BASE64ENCODED does not match SSH_PRIVATE_HOST_KEY_BASE64ENCODED"}},
		{"public without private", map[string]string{"SSH_PUBLIC_HOST_KEY_BASE64ENCODED": harness.B64(host.Pub)},
			[]string{"SSH_PUBLIC_HOST_KEY_BASE64ENCODED is set but SSH_PRIVATE_HOST_KEY_BASE64ENCODED is not"}},
		{"listen address", map[string]string{"BASTION_SSH_ADDR": "twenty-two"}, []string{"BASTION_SSH_ADDR"}},
		{"allow bad CIDR", map[string]string{"BASTION_ALLOW": "10.0.0.0/8,10.1.0.0/33"}, []string{"BASTION_ALLOW", "entry 2"}},
		{"allow bad port", map[string]string{"BASTION_ALLOW": "db.internal:99999"}, []string{"BASTION_ALLOW", "entry 1"}},
		{"dial timeout not a duration", map[string]string{"BASTION_DIAL_TIMEOUT": "soon"}, []string{"BASTION_DIAL_TIMEOUT", "duration"}},
		{"max auth tries negative", map[string]string{"BASTION_MAX_AUTH_TRIES": "-1"}, []string{"BASTION_MAX_AUTH_TRIES"}},
		{"stop timeout over ECS max", map[string]string{"BASTION_STOP_TIMEOUT": "5m"}, []string{"BASTION_STOP_TIMEOUT", "120s"}},
		{"drain longer than stop", map[string]string{"BASTION_STOP_TIMEOUT": "30s", "BASTION_DRAIN_TIMEOUT": "40s"}, []string{"BASTION_DRAIN_TIMEOUT"}},
		{"log level", map[string]string{"BASTION_LOG_LEVEL": "loud"}, []string{"BASTION_LOG_LEVEL"}},
		{"ssm mode", map[string]string{"BASTION_SSM": "maybe"}, []string{"BASTION_SSM"}},
		{"ssm without region", map[string]string{"INSTANCE_IAM_ROLE": "bastion-agent", "SSH_PRIVATE_HOST_KEY_BASE64ENCODED": hostPEM}, []string{"AWS_REGION"}},
		{"ssm without host key", map[string]string{"INSTANCE_IAM_ROLE": "bastion-agent", "AWS_REGION": "us-east-1"}, []string{"SSH_PRIVATE_HOST_KEY_BASE64ENCODED", "required when SSM is on"}},
		{"ssm on without role", map[string]string{"BASTION_SSM": "on"}, []string{"INSTANCE_IAM_ROLE"}},
		{"role given as ARN", map[string]string{"INSTANCE_IAM_ROLE": "arn:aws:iam::123456789012:role/x", "AWS_REGION": "us-east-1", "SSH_PRIVATE_HOST_KEY_BASE64ENCODED": hostPEM}, []string{"INSTANCE_IAM_ROLE"}},
		{"ssm tags", map[string]string{"BASTION_SSM_TAGS": "team=ops,novalue"}, []string{"BASTION_SSM_TAGS", "entry 2"}},
		{"reserved tag", map[string]string{"BASTION_SSM_TAGS": "bastion:ecs-cluster=x"}, []string{"BASTION_SSM_TAGS", "reserved"}},
		{"keepalive negative", map[string]string{"BASTION_KEEPALIVE_INTERVAL": "-1s"}, []string{"BASTION_KEEPALIVE_INTERVAL"}},
		{"advanced tier not a bool", map[string]string{"BASTION_SSM_REQUIRE_ADVANCED_TIER": "maybe"}, []string{"BASTION_SSM_REQUIRE_ADVANCED_TIER", "boolean"}},
		// The usual mistakes are named with what to do.
		{"authorized keys given as a path", map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": "~/.ssh/id_ed25519.pub"},
			[]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED: looks like a file path: pass the file's contents", `"$(cat FILE)"`}},
		{"authorized_keys file path", map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": "/home/x/.ssh/authorized_keys"},
			[]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED: looks like a file path"}},
		{"host key given as a path", map[string]string{"SSH_PRIVATE_HOST_KEY_BASE64ENCODED": "./bastion_host_ed25519"},
			[]string{"SSH_PRIVATE_HOST_KEY_BASE64ENCODED: looks like a file path"}},
		{"private key as authorized keys", map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": harness.B64(user.PEM(t))},
			[]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED: holds a private key, where public keys belong"}},
		{"private key pasted plain as authorized keys", map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": user.PEM(t)},
			[]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED: holds a private key, where public keys belong"}},
		{"private key as the host public key", map[string]string{"SSH_PRIVATE_HOST_KEY_BASE64ENCODED": hostPEM, "SSH_PUBLIC_HOST_KEY_BASE64ENCODED": hostPEM},
			[]string{"SSH_PUBLIC_HOST_KEY_BASE64ENCODED: holds a private key, where public keys belong"}},
		{"public key as the host private key", map[string]string{"SSH_PRIVATE_HOST_KEY_BASE64ENCODED": harness.B64(host.Pub)},
			[]string{"SSH_PRIVATE_HOST_KEY_BASE64ENCODED: holds a public key, where the private host key belongs"}},
	}
	if len(cases) < 20 {
		t.Fatalf("want at least 20 cases")
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{
				"BASTION_SSH_ADDR":     fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t)),
				"AWS_ENDPOINT_URL_SSM": "http://" + aws.Addr().String(),
				"AWS_ACCESS_KEY_ID":    "AKIDFAKE", "AWS_SECRET_ACCESS_KEY": "fakesecret",
			}
			if _, ok := tc.env["ROOT_PUBLIC_SSH_KEY_BASE64ENCODED"]; !ok && tc.name != "no authorized keys" {
				env["ROOT_PUBLIC_SSH_KEY_BASE64ENCODED"] = auth
			}
			for k, v := range tc.env {
				env[k] = v
			}
			cmd := exec.Command(bin)
			cmd.Env = harness.BaseEnv(env)
			start := time.Now()
			out, err := cmd.CombinedOutput()
			elapsed := time.Since(start)
			code := cmd.ProcessState.ExitCode()
			if err == nil || code != 78 {
				t.Fatalf("exit %d (want 78, EX_CONFIG), output:\n%s", code, out)
			}
			if elapsed > 5*time.Second {
				t.Fatalf("took %v to fail", elapsed)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if len(lines) != 1 {
				t.Fatalf("want one line, got %d:\n%s", len(lines), out)
			}
			var line struct{ Msg, Error string }
			if err := json.Unmarshal([]byte(lines[0]), &line); err != nil || line.Msg != "bad configuration" {
				t.Fatalf("not a JSON log line: %q", lines[0])
			}
			for _, w := range tc.want {
				if !strings.Contains(line.Error, w) {
					t.Fatalf("output lacks %q:\n%s", w, out)
				}
			}
			for _, name := range []string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED", "SSH_PRIVATE_HOST_KEY_BASE64ENCODED", "SSH_PUBLIC_HOST_KEY_BASE64ENCODED"} {
				if v := env[name]; len(v) > 12 && strings.Contains(string(out), strings.TrimSpace(v)) {
					t.Fatalf("output echoes the value of %s", name)
				}
			}
			for _, pem := range []string{user.PEM(t), host.PEM(t)} {
				for _, line := range strings.Split(pem, "\n") {
					if len(line) > 16 && strings.Contains(string(out), line) {
						t.Fatalf("output carries a line of a private key:\n%s", out)
					}
				}
			}
			for _, secretish := range []string{"AAAAC3NzaC1lZDI1NTE5", "PRIVATE KEY", "hunter2"} {
				if strings.Contains(string(out), secretish) {
					t.Fatalf("output contains key material %q:\n%s", secretish, out)
				}
			}
		})
	}
	if n := awsCalls.Load(); n != 0 {
		t.Fatalf("%d connections reached the AWS endpoint during bad-config runs", n)
	}
}

// TestTypoWarning: an unknown BASTION_* variable is named in a warning
// with the known one closest to it; a host name in BASTION_ALLOW gets a
// warning that only an address entry opens a denied range.
func TestTypoWarning(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	user := harness.Keygen(t, dir, "user")
	b := harness.StartBastion(t, dir, harness.BastionOptions{Env: map[string]string{
		"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": user.Pub, // plain text is accepted too
		"BASTION_ALLOWW":                    "10.0.0.0/8",
		"BASTION_ALOW":                      "10.0.0.0/8",
		"BASTION_LOGLEVEL":                  "debug",
		"BASTION_ALLOW":                     "localhost:22,10.0.0.0/8",
	}})
	for typo, want := range map[string]string{"BASTION_ALLOWW": "BASTION_ALLOW", "BASTION_ALOW": "BASTION_ALLOW", "BASTION_LOGLEVEL": "BASTION_LOG_LEVEL"} {
		b.Log.WaitFor(t, 5*time.Second, "unknown variable ignored (typo?)", map[string]string{"variable": typo, "did_you_mean": want})
	}
	var hostWarning map[string]any
	for _, l := range b.Log.Records() {
		if strings.HasPrefix(fmt.Sprint(l["msg"]), "BASTION_ALLOW: host-name entries never open a denied range") {
			hostWarning = l
		}
	}
	if hostWarning == nil || hostWarning["level"] != "WARN" || hostWarning["host_entries"] != "localhost:22" ||
		!strings.Contains(fmt.Sprint(hostWarning["msg"]), "only an address entry inside the range opens it") {
		t.Fatalf("no warning about the host name in BASTION_ALLOW:\n%s", b.Log.String())
	}
}

func TestHandshakeDeadline(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	user := harness.Keygen(t, dir, "user")
	b := harness.StartBastion(t, dir, harness.BastionOptions{Env: map[string]string{
		"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": harness.B64(user.Pub),
		"BASTION_HANDSHAKE_TIMEOUT":         "1s",
	}})
	c, err := net.Dial("tcp", b.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	banner, _ := r.ReadString('\n')
	if !strings.HasPrefix(banner, "SSH-2.0-") {
		t.Fatalf("banner %q", banner)
	}
	// Send nothing more: the server must cut us at the deadline.
	for {
		if _, err := r.ReadByte(); err != nil {
			break
		}
	}
	if el := time.Since(start); el < 900*time.Millisecond || el > 3*time.Second {
		t.Fatalf("cut after %v, want about 1s", el)
	}
	b.Log.WaitFor(t, 2*time.Second, "connection closed", map[string]string{"reason": "handshake and authentication deadline exceeded"})
}

// TestUnauthenticatedCap: a burst of idle connections is held to the caps
// (refused before any banner), while a real client from another address
// still authenticates and tunnels.
func TestUnauthenticatedCap(t *testing.T) {
	t.Parallel()
	echo := harness.Serve(t, "tcp", "127.0.0.1:0", harness.Echo)
	eport := echo.Addr().(*net.TCPAddr).Port
	s := newJump(t, func(int) string { return fmt.Sprintf("127.0.0.1/32:%d", eport) }, "", harness.BastionOptions{Env: map[string]string{
		"BASTION_MAX_STARTUPS":            "64",
		"BASTION_MAX_STARTUPS_PER_SOURCE": "16",
	}})

	var mu sync.Mutex
	var conns []net.Conn
	var firstErr error // what went wrong first, for the failure message
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	burst := func(src string, n int) (held int) {
		var wg sync.WaitGroup
		var h atomic.Int32
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
				c, err := d.Dial("tcp", s.bastion.Addr)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				if err == nil {
					conns = append(conns, c)
				}
				mu.Unlock()
				if err != nil {
					return
				}
				c.SetReadDeadline(time.Now().Add(3 * time.Second))
				line, err := bufio.NewReader(c).ReadString('\n')
				if err == nil && strings.HasPrefix(line, "SSH-2.0-") {
					h.Add(1)
				}
			}()
		}
		wg.Wait()
		return int(h.Load())
	}
	held := burst("127.0.0.1", 300)
	if held > 16 || held == 0 {
		t.Fatalf("per-source cap: %d of 300 idle connections got a banner, want ≤ 16 (%d connected; first dial error: %v)", held, len(conns), firstErr)
	}
	// A real client from another address gets in while the burst holds.
	cfg := harness.ClientConfig(t, t.TempDir(), map[string]string{
		harness.KnownHostsPattern("127.0.0.1", s.bastion.Port): s.bastion.HostKey.Pub,
	}, harness.Host{Alias: "bastion", HostName: "127.0.0.1", Port: s.bastion.Port, User: "root", Identity: s.client.Path, BindAddress: "127.0.0.2"})
	r := run(t, strings.NewReader("through the burst\n"), 30*time.Second, "ssh", "-F", cfg, "-W", fmt.Sprintf("127.0.0.1:%d", eport), "bastion")
	if r.code != 0 || r.stdout != "through the burst\n" {
		t.Fatalf("real client during burst: %+v", r)
	}
	// The global cap: ten more sources of 16 each cannot exceed 64 in all.
	total := held
	for i := 3; i < 13; i++ {
		total += burst(fmt.Sprintf("127.0.0.%d", i), 16)
	}
	if total > 64 {
		t.Fatalf("global cap: %d unauthenticated connections held, want ≤ 64", total)
	}
	// Past a few lines per source, refusals are counted in a summary line
	// at the end of a 10 s window.
	summary := s.bastion.Log.WaitFor(t, 30*time.Second, "repeated lines suppressed",
		map[string]string{"suppressed_msg": "connection refused", "source": "127.0.0.1"})
	lines := len(s.bastion.Log.Find("connection refused", nil))
	counted := 0
	for _, l := range s.bastion.Log.Find("repeated lines suppressed", map[string]string{"suppressed_msg": "connection refused"}) {
		n, _ := l["count"].(float64)
		counted += int(n)
	}
	t.Logf("burst: %d held from one source, %d held in total, %d refusals logged and %d counted in summaries (127.0.0.1: %v)",
		held, total, lines, counted, summary["count"])
	if lines+counted < 284 {
		t.Fatalf("want ≥ 284 refusals logged or counted, got %d lines and %d counted", lines, counted)
	}
	if lines > 11*10 {
		t.Fatalf("%d refusal lines from 11 sources, want at most 10 each", lines)
	}
}
