package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/test/fakessm"
	"github.com/bastion-dev/bastion/test/harness"
	"github.com/bastion-dev/bastion/test/webhook"
)

// sessionWorld is a bastion registered with the fake SSM, with the fake
// agent's stand-in ssm-session-worker beside it.
type sessionWorld struct {
	e      *ssmEnv
	b      *harness.Bastion
	worker string // <agent dir>/ssm-session-worker
}

func newSessionWorld(t *testing.T, extra map[string]string) *sessionWorld {
	t.Helper()
	harness.RequireTools(t, "ssh", "nsenter")
	e := newSSMEnv(t, nil)
	if extra == nil {
		extra = map[string]string{}
	}
	if _, ok := extra["BASTION_ALLOW"]; !ok {
		extra["BASTION_ALLOW"] = "127.0.0.1/32"
	}
	b := e.start(t, extra)
	waitOnline(t, b)
	return &sessionWorld{e: e, b: b, worker: filepath.Join(e.agent, "ssm-session-worker")}
}

// startSession opens a session in the fake SSM for owner.
func (w *sessionWorld) startSession(t *testing.T, owner string) string {
	t.Helper()
	s, err := w.e.api.StartSession(fakessm.Session{Owner: owner})
	if err != nil {
		t.Fatal(err)
	}
	return s.SessionID
}

// proxyCommand runs worker (argv [worker, sessionID]) inside the bastion's
// PID namespace, as the agent runs the real one; prefix adds nsenter
// options (e.g. a user to run as).
func (w *sessionWorld) proxyCommand(worker, sessionID string, prefix ...string) string {
	args := append([]string{"nsenter", "-t", fmt.Sprint(w.b.Pid), "-p"}, prefix...)
	args = append(args, "--", "env", fmt.Sprintf("FAKE_SESSION_PORT=%d", w.b.Port), worker, sessionID)
	return strings.Join(args, " ")
}

// sshVia runs ssh -W dest through the bastion with ProxyCommand proxy.
func (w *sessionWorld) sshVia(t *testing.T, proxy, dest, msg string) result {
	t.Helper()
	return run(t, strings.NewReader(msg), 30*time.Second, "ssh", "-F", "none", "-i", w.e.user.Path,
		"-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
		"-o", "UserKnownHostsFile=/dev/null", "-o", "ProxyCommand="+proxy, "-W", dest, "root@bastion")
}

// TestSSMSessionIdentity: a connection made by an SSM session worker
// carries ssm_session_id and the session's IAM principal (from
// ssm:DescribeSessions) on its auth, tunnel open, tunnel and closing
// lines; a look-alike binary elsewhere, a worker not running as root, or a
// plain connection get no identity; a denied lookup leaves the principal
// empty, is logged once, and breaks nothing.
func TestSSMSessionIdentity(t *testing.T) {
	t.Parallel()
	w := newSessionWorld(t, nil)
	echo := harness.Serve(t, "tcp", "127.0.0.1:0", harness.Echo)
	dest := echo.Addr().String()
	const alice = "arn:aws:sts::123456789012:assumed-role/Ops/alice"
	id := w.startSession(t, alice)

	// The first connection of a session starts the principal's lookup,
	// which never holds up the handshake: on a loaded machine it may only
	// be known from the tunnel lines on. A second connection of the same
	// session finds it cached at accept: every one of its lines has it.
	for i := 0; i < 2; i++ {
		if r := w.sshVia(t, w.proxyCommand(w.worker, id), dest, "through a session\n"); r.code != 0 || r.stdout != "through a session\n" {
			t.Fatalf("ssh through the session worker: %+v", r)
		}
	}
	want := map[string]string{"ssm_session_id": id, "principal": alice}
	w.b.Log.WaitFor(t, 10*time.Second, "connection closed", want)
	var second string
	for _, l := range w.b.Log.Find("auth", map[string]string{"ssm_session_id": id, "result": "accepted"}) {
		second = fmt.Sprint(l["conn"]) // the last one
	}
	if second == "" {
		t.Fatalf("no accepted auth line for session %s:\n%s", id, w.b.Log.String())
	}
	for _, msg := range []string{"auth", "tunnel open", "tunnel", "connection closed"} {
		match := map[string]string{"conn": second, "ssm_session_id": id, "principal": alice}
		w.b.Log.WaitFor(t, 10*time.Second, msg, match)
	}

	noIdentity := func(label string, r result) {
		t.Helper()
		if r.code != 0 {
			t.Fatalf("%s: %+v", label, r)
		}
	}
	// A look-alike: the same program, elsewhere.
	lookalike := filepath.Join(t.TempDir(), "ssm-session-worker")
	copyFile(t, w.worker, lookalike)
	other := w.startSession(t, "arn:aws:iam::123456789012:user/mallory")
	noIdentity("look-alike", w.sshVia(t, w.proxyCommand(lookalike, other), dest, "look-alike\n"))
	// The real worker, not as root (the build directory is root's own:
	// let nobody run what is in it).
	if err := os.Chmod(filepath.Dir(w.e.agent), 0o755); err != nil {
		t.Fatal(err)
	}
	noIdentity("not root", w.sshVia(t, w.proxyCommand(w.worker, other, "-S", "65534", "-G", "65534"), dest, "nobody\n"))
	// A plain connection.
	noIdentity("plain", run(t, strings.NewReader("plain\n"), 30*time.Second, "ssh", "-F", "none", "-i", w.e.user.Path,
		"-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-p", fmt.Sprint(w.b.Port), "-W", dest, "root@127.0.0.1"))
	w.b.Log.WaitFor(t, 10*time.Second, "tunnel", map[string]string{"bytes_up": "6"}) // "plain\n"
	for _, l := range w.b.Log.Find("auth", map[string]string{"result": "accepted"}) {
		if l["ssm_session_id"] != nil && l["ssm_session_id"] != id {
			t.Errorf("identity given to a connection that is not the real worker as root: %v", l)
		}
	}
	if n := len(w.b.Log.Find("auth", map[string]string{"result": "accepted"})); n != 5 {
		t.Errorf("%d accepted connections, want 5", n)
	}

	// The session ended before its lookup (its worker gone, as far as the
	// service knows): no principal, one warning saying so, the connection
	// works.
	ended := w.startSession(t, "arn:aws:iam::123456789012:user/carol")
	if err := w.e.api.EndSession(ended); err != nil {
		t.Fatal(err)
	}
	if r := w.sshVia(t, w.proxyCommand(w.worker, ended), dest, "ended session\n"); r.code != 0 || r.stdout != "ended session\n" {
		t.Fatalf("ssh for an ended session: %+v", r)
	}
	warn := w.b.Log.WaitFor(t, 10*time.Second, "ssm session principal unknown", map[string]string{"ssm_session_id": ended})
	if !strings.Contains(fmt.Sprint(warn["error"]), "no active session") {
		t.Errorf("lookup failure line: %v", warn)
	}
	w.b.Log.WaitFor(t, 10*time.Second, "connection closed", map[string]string{"ssm_session_id": ended})
	for _, l := range w.b.Log.Records() {
		if l["ssm_session_id"] == ended && l["principal"] != nil {
			t.Errorf("principal for an ended session: %v", l)
		}
	}

	// DescribeSessions denied: no principal, one warning, the connection works.
	denied := w.startSession(t, "arn:aws:iam::123456789012:user/bob")
	w.e.api.FailNext("DescribeSessions", 20, "AccessDeniedException")
	for i := 0; i < 2; i++ {
		if r := w.sshVia(t, w.proxyCommand(w.worker, denied), dest, "denied lookup\n"); r.code != 0 {
			t.Fatalf("ssh with the lookup denied: %+v", r)
		}
	}
	warn = w.b.Log.WaitFor(t, 10*time.Second, "ssm session principal unknown", map[string]string{"ssm_session_id": denied})
	if !strings.Contains(fmt.Sprint(warn["error"]), "AccessDenied") {
		t.Errorf("lookup failure line: %v", warn)
	}
	if n := len(w.b.Log.Find("ssm session principal unknown", map[string]string{"ssm_session_id": denied})); n != 1 {
		t.Errorf("lookup failure logged %d times, want once", n)
	}
	for _, l := range w.b.Log.Find("auth", map[string]string{"ssm_session_id": denied}) {
		if l["principal"] != nil {
			t.Errorf("principal on a denied lookup: %v", l)
		}
	}

}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestSSMSessionFlood: idle unauthenticated connections from one SSM
// session and from plain loopback, each source held at its full mark (48,
// more than the 40 of the figure, so that without per-session
// counting the others would be refused for certain); another session's
// ssh -W and `bastion healthcheck` both succeed.
func TestSSMSessionFlood(t *testing.T) {
	t.Parallel()
	w := newSessionWorld(t, nil)
	echo := harness.Serve(t, "tcp", "127.0.0.1:0", harness.Echo)
	flooder := w.startSession(t, "arn:aws:iam::123456789012:user/flood")
	const full = 48 // BASTION_MAX_STARTUPS_PER_SOURCE's full mark
	// held reports whether the bastion kept the connection: it sends its
	// identification, or closes at once when it refuses.
	held := func(r io.Reader) bool {
		line, err := bufio.NewReader(r).ReadString('\n')
		return err == nil && strings.HasPrefix(line, "SSH-2.0-bastion")
	}
	var workers []*exec.Cmd
	defer func() {
		for _, c := range workers {
			c.Process.Kill()
			c.Wait()
		}
	}()
	sessionHeld := 0
	for i := 0; i < 400 && sessionHeld < full; i++ {
		// A worker whose client never speaks: an idle unauthenticated
		// connection counted under the flooding session.
		cmd := exec.Command("nsenter", "-t", fmt.Sprint(w.b.Pid), "-p", "--", "env", fmt.Sprintf("FAKE_SESSION_PORT=%d", w.b.Port), w.worker, flooder)
		if _, err := cmd.StdinPipe(); err != nil { // held open, never written
			t.Fatal(err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		workers = append(workers, cmd)
		if held(out) {
			sessionHeld++
		}
	}
	var plain []net.Conn
	defer func() {
		for _, c := range plain {
			c.Close()
		}
	}()
	plainHeld := 0
	for i := 0; i < 400 && plainHeld < full; i++ {
		c, err := net.Dial("tcp", w.b.Addr)
		if err != nil {
			t.Fatal(err)
		}
		plain = append(plain, c)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if held(c) {
			plainHeld++
		}
	}
	if sessionHeld != full || plainHeld != full {
		t.Fatalf("held %d from the session and %d from loopback, want %d each", sessionHeld, plainHeld, full)
	}

	other := w.startSession(t, "arn:aws:sts::123456789012:assumed-role/Ops/carol")
	if r := w.sshVia(t, w.proxyCommand(w.worker, other), echo.Addr().String(), "during the flood\n"); r.code != 0 || r.stdout != "during the flood\n" {
		t.Errorf("another session during the flood: %+v", r)
	}
	if code, out := healthcheck(t, w.b); code != 0 {
		t.Errorf("healthcheck during the flood: exit %d\n%s", code, out)
	}
	w.b.Log.WaitFor(t, 30*time.Second, "connection refused", map[string]string{"source": "ssm-session " + flooder})
	w.b.Log.WaitFor(t, 30*time.Second, "connection refused", map[string]string{"source": "127.0.0.1"})
}

// TestSessionNotifications: a session start through an SSM session worker
// reaches an incoming webhook within 2 s, naming the principal, with the
// tunnels of that moment in the same message; a key without a session is
// named by its comment and fingerprint.
func TestSessionNotifications(t *testing.T) {
	t.Parallel()
	hook := webhook.Start(t)
	w := newSessionWorld(t, map[string]string{"BASTION_NOTIFY_URL": hook.URL})
	echo := harness.Serve(t, "tcp", "127.0.0.1:0", harness.Echo)
	const alice = "arn:aws:sts::123456789012:assumed-role/Ops/alice"
	id := w.startSession(t, alice)
	start := time.Now()
	if r := w.sshVia(t, w.proxyCommand(w.worker, id), echo.Addr().String(), "notify me\n"); r.code != 0 {
		t.Fatalf("ssh: %+v", r)
	}
	reqs := hook.Wait(t, 1, 10*time.Second)
	got := reqs[0]
	if got.At.Sub(start) > 2*time.Second+time.Second { // the ssh run itself is part of the interval
		t.Errorf("notification arrived %v after the session started", got.At.Sub(start))
	}
	if got.ContentType != "application/json" || !strings.Contains(got.Text, alice) || !strings.Contains(got.Text, id) ||
		!strings.Contains(got.Text, echo.Addr().String()) {
		t.Errorf("notification: %s %q", got.ContentType, got.Text)
	}
	if got.Event["principal"] != alice || got.Event["ssm_session_id"] != id || got.Event["kind"] != "session_start" {
		t.Errorf("event: %v", got.Event)
	}
	if strings.Contains(w.b.Log.String(), hook.Token) {
		t.Error("the webhook URL's secret appears in the log")
	}
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", w.b.Pid))
	if err != nil || !strings.Contains(string(environ), "BASTION_SSH_ADDR=") {
		t.Fatalf("read the bastion's environ: %v %q", err, environ)
	}
	if strings.Contains(string(environ), hook.Token) {
		t.Error("the webhook URL is in /proc/1/environ")
	}
}

// TestDeadWebhookCostsNothing: with a webhook that accepts and never
// answers, connecting and tunnelling take as long as without one.
func TestDeadWebhookCostsNothing(t *testing.T) {
	t.Parallel()
	hook := webhook.Start(t)
	hook.SetDefault(webhook.Reply{Hang: true})
	dir := t.TempDir()
	user := harness.Keygen(t, dir, "user")
	echo := harness.Serve(t, "tcp", "127.0.0.1:0", harness.Echo)
	eport := echo.Addr().(*net.TCPAddr).Port
	startWith := func(env map[string]string) *harness.Bastion {
		env["ROOT_PUBLIC_SSH_KEY_BASE64ENCODED"] = harness.B64(user.Pub + "\n")
		env["BASTION_ALLOW"] = fmt.Sprintf("127.0.0.1/32:%d", eport)
		return harness.StartBastion(t, dir, harness.BastionOptions{Env: env})
	}
	signer := mustSigner(t, user)
	timeConnect := func(b *harness.Bastion) time.Duration {
		start := time.Now()
		c, err := goDial(t, b, "root", signer)
		if err != nil {
			t.Fatal(err)
		}
		ch, err := c.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", eport))
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1)
		if _, err := ch.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(ch, buf); err != nil || buf[0] != 'x' {
			t.Fatalf("echo through the tunnel: %q %v", buf, err)
		}
		d := time.Since(start)
		c.Close()
		return d
	}
	// Interleaved, each first in turn, so that whatever else loads the
	// machine weighs on both the same.
	base, dead := startWith(map[string]string{}), startWith(map[string]string{"BASTION_NOTIFY_URL": hook.URL})
	var baseDs, deadDs []time.Duration
	for i := 0; i < 16; i++ {
		if i%2 == 0 {
			baseDs = append(baseDs, timeConnect(base))
			deadDs = append(deadDs, timeConnect(dead))
		} else {
			deadDs = append(deadDs, timeConnect(dead))
			baseDs = append(baseDs, timeConnect(base))
		}
	}
	base50, baseWorst := median(baseDs), slices.Max(baseDs)
	dead50, deadWorst := median(deadDs), slices.Max(deadDs)
	t.Logf("connect+auth+tunnel: p50 %v (worst %v) without a webhook, %v (worst %v) with a hanging one", base50, baseWorst, dead50, deadWorst)
	// A notification on the connection's path would cost at least the
	// webhook's 10 s request timeout; nothing close to that may show, and
	// the medians must agree within this machine's noise.
	if deadWorst > 3*time.Second || dead50 > 2*base50+50*time.Millisecond {
		t.Errorf("a hanging webhook slowed connections: p50 %v vs %v, worst %v", dead50, base50, deadWorst)
	}
	// The notifications were sent (and hang): they were on their way
	// while the connections above were timed.
	hook.Wait(t, 1, 10*time.Second)
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
