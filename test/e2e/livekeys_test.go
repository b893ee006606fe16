package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/test/fakesecrets"
	"github.com/bastion-dev/bastion/test/harness"
)

// forwarder is an OpenSSH client holding `ssh -N -L` through the bastion,
// as a user with a database GUI does.
type forwarder struct {
	proc  *harness.Proc
	lport int
}

// startForward runs ssh -N -L 127.0.0.1:LPORT:dest through the bastion
// with key, retrying when the local port was taken in between.
func startForward(t *testing.T, b *harness.Bastion, dir string, key harness.Key, dest string) *forwarder {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := harness.ClientConfig(t, dir, map[string]string{
		harness.KnownHostsPattern("127.0.0.1", b.Port): b.HostKey.Pub,
	}, harness.Host{Alias: "bastion", HostName: "127.0.0.1", Port: b.Port, User: "root", Identity: key.Path})
	return localForward(t, cfg, dest)
}

// open makes a connection through the forward that stays open: a live
// tunnel.
func (f *forwarder) open(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", f.lport))
	if err != nil {
		t.Fatalf("dial the forward: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// echo sends a line through c and checks it comes back.
func echoLine(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := fmt.Fprintln(c, msg); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if got != msg+"\n" {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// waitClosed waits until c's far end closes (the tunnel was cut).
func waitClosed(t *testing.T, c net.Conn, within time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(within))
	if _, err := io.Copy(io.Discard, c); err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("tunnel still open after %v", within)
		}
	}
}

func fakeSecretsEnv(fs *fakesecrets.Server, secret string) map[string]string {
	return map[string]string{
		"BASTION_AUTHORIZED_KEYS_SECRET":   secret,
		"AWS_REGION":                       fs.Region(),
		"AWS_ENDPOINT_URL_SECRETS_MANAGER": fs.URL(),
		"AWS_ACCESS_KEY_ID":                fakesecrets.DefaultAccessKeyID,
		"AWS_SECRET_ACCESS_KEY":            fakesecrets.DefaultSecretAccessKey,
		"BASTION_KEYS_REFRESH":             "1s",
	}
}

// TestLiveKeysFromSecretsManager: the authorized keys come from a secret.
// Removing a key cuts its holder's open -L tunnel within refresh + 5 s and
// refuses its new connections, while the other key keeps working; an added
// key gets in; a broken or an empty version changes nothing but a log line;
// an outage keeps the set in force.
func TestLiveKeysFromSecretsManager(t *testing.T) {
	t.Parallel()
	harness.RequireTools(t, "ssh", "ssh-keygen")
	dir := t.TempDir()
	alice := harness.Keygen(t, dir, "alice")
	bob := harness.Keygen(t, dir, "bob")
	carol := harness.Keygen(t, dir, "carol")
	fs := fakesecrets.NewTest(t, fakesecrets.Options{})
	if _, err := fs.CreateSecret("bastion/keys", alice.Pub+"\n"+bob.Pub+"\n"); err != nil {
		t.Fatal(err)
	}
	echo := harness.Serve(t, "tcp", "127.0.0.1:0", harness.Echo)
	env := fakeSecretsEnv(fs, "bastion/keys")
	env["BASTION_ALLOW"] = "127.0.0.1/32"
	b := harness.StartBastion(t, dir, harness.BastionOptions{Env: env})
	b.Log.WaitFor(t, 10*time.Second, "authorized keys applied", nil)

	fa := startForward(t, b, filepath.Join(dir, "a"), alice, echo.Addr().String())
	fb := startForward(t, b, filepath.Join(dir, "b"), bob, echo.Addr().String())
	ca, cb := fa.open(t), fb.open(t)
	if err := echoLine(ca, "alice before"); err != nil {
		t.Fatal(err)
	}
	if err := echoLine(cb, "bob before"); err != nil {
		t.Fatal(err)
	}

	// Remove alice.
	removedAt := time.Now()
	if _, err := fs.PutSecretString("bastion/keys", bob.Pub+"\n"); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, ca, 1*time.Second+5*time.Second+2*time.Second)
	t.Logf("alice's tunnel cut %v after her key left the secret", time.Since(removedAt).Round(10*time.Millisecond))
	aliceFP := fingerprintOf(t, alice.Pub)
	b.Log.WaitFor(t, 5*time.Second, "tunnel", map[string]string{"fingerprint": aliceFP, "close_reason": "key removed"})
	b.Log.WaitFor(t, 5*time.Second, "connection closed", map[string]string{"fingerprint": aliceFP, "reason": "key removed"})
	if code := fa.proc.Wait(10 * time.Second); code == -1 {
		t.Error("alice's ssh -L still running after her connection was closed")
	}
	os.MkdirAll(filepath.Join(dir, "a2"), 0o700)
	if r := run(t, strings.NewReader("x\n"), 30*time.Second, "ssh", "-F", harness.ClientConfig(t, filepath.Join(dir, "a2"),
		map[string]string{harness.KnownHostsPattern("127.0.0.1", b.Port): b.HostKey.Pub},
		harness.Host{Alias: "bastion", HostName: "127.0.0.1", Port: b.Port, User: "root", Identity: alice.Path}),
		"-W", echo.Addr().String(), "bastion"); r.code == 0 || !strings.Contains(r.stderr, "Permission denied") {
		t.Errorf("alice connected again: %+v", r)
	}
	if err := echoLine(cb, "bob after alice left"); err != nil {
		t.Fatalf("bob's tunnel: %v", err)
	}

	// Add carol.
	withCarol, err := fs.PutSecretString("bastion/keys", bob.Pub+"\n"+carol.Pub+"\n")
	if err != nil {
		t.Fatal(err)
	}
	b.Log.WaitFor(t, 10*time.Second, "authorized keys applied", map[string]string{"version": withCarol})
	fc := startForward(t, b, filepath.Join(dir, "c"), carol, echo.Addr().String())
	if err := echoLine(fc.open(t), "carol"); err != nil {
		t.Fatal(err)
	}

	// A broken version and an empty one are kept out.
	badVersion, err := fs.PutSecretString("bastion/keys", bob.Pub+"\nthis line is not a key\n"+carol.Pub+"\n")
	if err != nil {
		t.Fatal(err)
	}
	l := b.Log.WaitFor(t, 10*time.Second, "authorized keys version rejected; keeping the current set", map[string]string{"version": badVersion, "line": "2"})
	if strings.Contains(b.Log.String(), "this line is not a key") || strings.Contains(b.Log.String(), "AAAA") {
		t.Errorf("the log carries key text: %v", l)
	}
	emptyVersion, err := fs.PutSecretString("bastion/keys", "# everyone left\n")
	if err != nil {
		t.Fatal(err)
	}
	b.Log.WaitFor(t, 10*time.Second, "authorized keys version rejected; keeping the current set", map[string]string{"version": emptyVersion})
	if err := echoLine(cb, "bob after two bad versions"); err != nil {
		t.Fatalf("bob's tunnel after the bad versions: %v", err)
	}

	// An outage keeps the set; service comes back.
	fs.FailNext("DescribeSecret", 3, "AccessDeniedException") // not retried inside the SDK: each check fails at once
	b.Log.WaitFor(t, 30*time.Second, "authorized keys check failed; keeping the current set", nil)
	if err := echoLine(cb, "bob during the outage"); err != nil {
		t.Fatalf("bob's tunnel during the outage: %v", err)
	}
	fs.ClearFaults()
	b.Log.WaitFor(t, 30*time.Second, "authorized keys check recovered", nil)
}

// TestLiveKeysOutageAtStart: with Secrets Manager down at start, the keys
// in ROOT_PUBLIC_SSH_KEY_BASE64ENCODED serve until the first good read,
// which then replaces them.
func TestLiveKeysOutageAtStart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	alice := harness.Keygen(t, dir, "alice")
	bob := harness.Keygen(t, dir, "bob")
	fs := fakesecrets.NewTest(t, fakesecrets.Options{})
	if _, err := fs.CreateSecret("bastion/keys", bob.Pub+"\n"); err != nil {
		t.Fatal(err)
	}
	fs.FailNext("DescribeSecret", 4, "InternalServiceError")
	env := fakeSecretsEnv(fs, "bastion/keys")
	env["ROOT_PUBLIC_SSH_KEY_BASE64ENCODED"] = harness.B64(alice.Pub + "\n")
	b := harness.StartBastion(t, dir, harness.BastionOptions{Env: env})
	c, err := goDial(t, b, "root", mustSigner(t, alice))
	if err != nil {
		t.Fatalf("the start set was not served during the outage: %v", err)
	}
	b.Log.WaitFor(t, 60*time.Second, "authorized keys applied", map[string]string{"previous_version": "initial"})
	if err := c.Wait(); err == nil {
		t.Error("alice's connection survived the first good read")
	}
	if _, err := goDial(t, b, "root", mustSigner(t, bob)); err != nil {
		t.Errorf("bob refused after the first good read: %v", err)
	}
}

// TestLiveKeysFileAndSIGHUP: a file source is re-read at once on SIGHUP.
func TestLiveKeysFileAndSIGHUP(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	alice := harness.Keygen(t, dir, "alice")
	bob := harness.Keygen(t, dir, "bob")
	file := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(file, []byte(alice.Pub+"\n"+bob.Pub+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b := harness.StartBastion(t, dir, harness.BastionOptions{Env: map[string]string{
		"BASTION_AUTHORIZED_KEYS_FILE": file,
		"BASTION_KEYS_REFRESH":         "1h",
	}})
	ca, err := goDial(t, b, "root", mustSigner(t, alice))
	if err != nil {
		t.Fatal(err)
	}
	// Replace the file by rename, then SIGHUP.
	tmp := file + ".new"
	if err := os.WriteFile(tmp, []byte(bob.Pub+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
	hupAt := time.Now()
	b.Kill(syscall.SIGHUP)
	if err := ca.Wait(); err == nil {
		t.Fatal("alice's connection ended without an error")
	}
	t.Logf("alice cut %v after SIGHUP", time.Since(hupAt).Round(time.Millisecond))
	if time.Since(hupAt) > 5*time.Second {
		t.Errorf("SIGHUP took %v to apply (refresh is 1h)", time.Since(hupAt))
	}
	b.Log.WaitFor(t, 5*time.Second, "connection closed", map[string]string{"reason": "key removed"})
	if _, err := goDial(t, b, "root", mustSigner(t, bob)); err != nil {
		t.Errorf("bob refused: %v", err)
	}
}

// TestSIGHUPWhileWaitingForKeys: with no keys yet (the file is missing), a
// SIGHUP reads the source at once instead of when the backoff says.
func TestSIGHUPWhileWaitingForKeys(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	alice := harness.Keygen(t, dir, "alice")
	file := filepath.Join(dir, "authorized_keys")
	b := harness.StartBastion(t, dir, harness.BastionOptions{NoWait: true, Env: map[string]string{
		"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": "",
		"BASTION_AUTHORIZED_KEYS_FILE":      file,
		"BASTION_KEYS_REFRESH":              "1h",
	}})
	// The third failure waits 4 s for the next try: long enough that a
	// read at once is told apart from one on schedule.
	failed := b.Log.WaitFor(t, 15*time.Second, "authorized keys check failed; keeping the current set", map[string]string{"failures": "3"})
	retryIn, err := time.ParseDuration(fmt.Sprint(failed["retry_in"]))
	if err != nil || retryIn < 4*time.Second {
		t.Fatalf("third failure: retry_in %v (%v), want 4s or more", failed["retry_in"], err)
	}
	if err := os.WriteFile(file, []byte(alice.Pub+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b.Kill(syscall.SIGHUP)
	inForce := b.Log.WaitFor(t, 15*time.Second, "authorized keys in force", nil)
	failedAt, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(failed["time"]))
	inForceAt, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(inForce["time"]))
	if took := inForceAt.Sub(failedAt); took >= retryIn {
		t.Errorf("keys read %v after the failure, not before its retry in %v: SIGHUP was not taken", took, retryIn)
	}
	b.WaitStarted(t)
	if _, err := goDial(t, b, "root", mustSigner(t, alice)); err != nil {
		t.Errorf("alice refused: %v", err)
	}
}

// TestExpiryIdleAndAgeEndToEnd: a key whose expiry-time passes and a
// certificate whose validity ends while connected are cut; the idle
// timeout spares a connection that moves bytes and closes one that does
// not; the age limit closes even a busy one.
func TestExpiryIdleAndAgeEndToEnd(t *testing.T) {
	t.Parallel()
	harness.RequireTools(t, "ssh", "ssh-keygen")
	echo := harness.Serve(t, "tcp", "127.0.0.1:0", harness.Echo)
	t.Run("expiry", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		alice := harness.Keygen(t, dir, "alice")
		ca := harness.Keygen(t, dir, "ca")
		bob := harness.Keygen(t, dir, "bob")
		harness.SignCert(t, ca, bob, "bob-cert", "-n", "root", "-V", "-1m:+4s")
		expiry := time.Now().UTC().Add(4 * time.Second).Format("20060102150405Z")
		b := harness.StartBastion(t, dir, harness.BastionOptions{Env: map[string]string{
			"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": harness.B64(`expiry-time="` + expiry + `" ` + alice.Pub + "\ncert-authority " + ca.Pub + "\n"),
			"BASTION_ALLOW":                     "127.0.0.1/32",
		}})
		fa := startForward(t, b, filepath.Join(dir, "a"), alice, echo.Addr().String())
		fb := startForward(t, b, filepath.Join(dir, "b"), bob, echo.Addr().String())
		ta, tb := fa.open(t), fb.open(t)
		if err := echoLine(ta, "alice"); err != nil {
			t.Fatal(err)
		}
		if err := echoLine(tb, "bob"); err != nil {
			t.Fatal(err)
		}
		waitClosed(t, ta, 15*time.Second)
		waitClosed(t, tb, 15*time.Second)
		b.Log.WaitFor(t, 5*time.Second, "connection closed", map[string]string{"reason": "key expired"})
		b.Log.WaitFor(t, 5*time.Second, "connection closed", map[string]string{"reason": "certificate expired"})
	})
	t.Run("idle and age", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		user := harness.Keygen(t, dir, "user")
		b := harness.StartBastion(t, dir, harness.BastionOptions{Env: map[string]string{
			"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": harness.B64(user.Pub + "\n"),
			"BASTION_ALLOW":                     "127.0.0.1/32",
			"BASTION_IDLE_TIMEOUT":              "3s",
			"BASTION_MAX_CONNECTION_AGE":        "12s",
		}})
		busyFwd := startForward(t, b, filepath.Join(dir, "busy"), user, echo.Addr().String())
		idleFwd := startForward(t, b, filepath.Join(dir, "idle"), user, echo.Addr().String())
		busy, idle := busyFwd.open(t), idleFwd.open(t)
		if err := echoLine(idle, "once"); err != nil {
			t.Fatal(err)
		}
		idleDone := make(chan struct{})
		go func() { io.Copy(io.Discard, idle); close(idleDone) }()
		start := time.Now()
		idleCut := time.Duration(0)
		for {
			if err := echoLine(busy, "tick"); err != nil {
				break // the age limit
			}
			select {
			case <-idleDone:
				if idleCut == 0 {
					idleCut = time.Since(start)
				}
			case <-time.After(500 * time.Millisecond):
			}
			if time.Since(start) > 30*time.Second {
				t.Fatal("the busy connection outlived its maximum age")
			}
		}
		busyCut := time.Since(start)
		if idleCut == 0 || idleCut > 8*time.Second {
			t.Errorf("idle connection cut after %v, want about 3 s", idleCut)
		}
		if busyCut < 6*time.Second {
			t.Errorf("busy connection cut after %v, before its maximum age", busyCut)
		}
		b.Log.WaitFor(t, 5*time.Second, "connection closed", map[string]string{"reason": "idle timeout"})
		b.Log.WaitFor(t, 5*time.Second, "connection closed", map[string]string{"reason": "maximum connection age"})
		t.Logf("idle cut after %v, busy cut after %v (age limit)", idleCut.Round(100*time.Millisecond), busyCut.Round(100*time.Millisecond))
	})
}
