package authkeys_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-dev/bastion/authkeys"
	"github.com/bastion-dev/bastion/entrypoint"
	"github.com/bastion-dev/bastion/internal/logtest"
	"github.com/bastion-dev/bastion/sshd"
	"github.com/bastion-dev/bastion/test/fakesecrets"
)

// waitFor bounds every wait for an event; generous, for a loaded machine.
const waitFor = 20 * time.Second

// testKey is a fixed ed25519 key (from a seed) with a comment that marks
// its line, so a test can assert the line never reaches a log.
type testKey struct {
	line        string // authorized_keys line
	blob        string // the base64 part
	fingerprint string
}

func newKey(t testing.TB, seed byte, comment string) testKey {
	t.Helper()
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
	pub, err := gossh.NewPublicKey(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	text := strings.TrimSpace(string(gossh.MarshalAuthorizedKey(pub)))
	return testKey{line: text + " " + comment, blob: strings.Fields(text)[1], fingerprint: gossh.FingerprintSHA256(pub)}
}

// keysFile joins lines into an authorized_keys file.
func keysFile(lines ...string) string { return strings.Join(lines, "\n") + "\n" }

func fingerprints(keys []sshd.AuthorizedKey) string {
	var fps []string
	for _, k := range keys {
		fps = append(fps, k.Fingerprint)
	}
	return strings.Join(fps, ",")
}

// logCapture is the watcher's JSON log, read line after line.
type logCapture struct {
	*logtest.Buffer
	follow *logtest.Follower
	log    *slog.Logger
}

func newLogCapture() *logCapture {
	log, buf := logtest.New(slog.LevelDebug)
	return &logCapture{Buffer: buf, follow: buf.Follow(), log: log}
}

func (l *logCapture) logger() *slog.Logger { return l.log }

// next returns the next line with message msg, skipping others.
func (l *logCapture) next(t testing.TB, msg string) map[string]any {
	t.Helper()
	return l.follow.Next(t, waitFor, msg)
}

// nextAfter returns the next line with message msg logged after since.
func (l *logCapture) nextAfter(t testing.TB, msg string, since time.Time) map[string]any {
	t.Helper()
	for {
		m := l.next(t, msg)
		at, err := time.Parse(time.RFC3339Nano, str(m["time"]))
		if err != nil {
			t.Fatalf("log time %v: %v", m["time"], err)
		}
		if at.After(since) {
			return m
		}
	}
}

// noKeyText fails when any of keys' base64 or comment appears in the log.
func (l *logCapture) noKeyText(t testing.TB, keys ...testKey) {
	t.Helper()
	out := l.String()
	for _, k := range keys {
		if strings.Contains(out, k.blob) || strings.Contains(out, k.line[len(k.line)-8:]) {
			t.Fatalf("key text in the log:\n%s", out)
		}
	}
}

// applied is what the apply callback received.
type applied struct {
	keys    []sshd.AuthorizedKey
	version string
}

// running is a Watcher whose Run is going, with its callbacks on a channel.
type running struct {
	w       *authkeys.Watcher
	applied chan applied
	log     *logCapture
}

// startWatcher builds a watcher for cfg, calls Start, and runs it until the
// test ends. It returns what Start returned too.
func startWatcher(t *testing.T, cfg authkeys.Config) (*running, applied) {
	t.Helper()
	r := &running{applied: make(chan applied, 100), log: newLogCapture()}
	cfg.Decode = entrypoint.DecodeAuthorizedKeys
	cfg.Logger = r.log.logger()
	ctx, cancel := context.WithCancel(context.Background())
	w, err := authkeys.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.w = w
	keys, version, err := w.Start(ctx)
	if err != nil {
		t.Fatalf("Start: %v\nlog:\n%s", err, r.log.String())
	}
	done := make(chan error, 1)
	go func() {
		done <- w.Run(ctx, func(keys []sshd.AuthorizedKey, version string) { r.applied <- applied{keys, version} })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return r, applied{keys, version}
}

// next waits for the next callback.
func (r *running) next(t testing.TB) applied {
	t.Helper()
	select {
	case a := <-r.applied:
		return a
	case <-time.After(waitFor):
		t.Fatalf("no version applied within %v; log:\n%s", waitFor, r.log.String())
	}
	return applied{}
}

// none fails if a callback is pending.
func (r *running) none(t testing.TB) {
	t.Helper()
	select {
	case a := <-r.applied:
		t.Fatalf("version %s applied (%s); log:\n%s", a.version, fingerprints(a.keys), r.log.String())
	default:
	}
}

// useFake points the real SDK at srv through the standard variables only.
func useFake(t *testing.T, srv *fakesecrets.Server) {
	t.Setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", srv.URL())
	t.Setenv("AWS_ACCESS_KEY_ID", fakesecrets.DefaultAccessKeyID)
	t.Setenv("AWS_SECRET_ACCESS_KEY", fakesecrets.DefaultSecretAccessKey)
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_CONFIG_FILE", "/dev/null")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "")
	t.Setenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "")
	t.Setenv("AWS_ENDPOINT_URL", "")
	t.Setenv("AWS_PROFILE", "")
}

// waitCalls waits until srv has served n more calls of op than before.
func waitCalls(t testing.TB, srv *fakesecrets.Server, op string, n int) {
	t.Helper()
	target := srv.Calls(op) + n
	deadline := time.After(waitFor)
	for srv.Calls(op) < target {
		next := srv.NextRequest()
		if srv.Calls(op) >= target {
			return
		}
		select {
		case <-next:
		case <-deadline:
			t.Fatalf("%s calls %d, want %d within %v", op, srv.Calls(op), target, waitFor)
		}
	}
}

func str(v any) string { return fmt.Sprint(v) }
