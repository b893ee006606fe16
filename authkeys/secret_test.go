package authkeys_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/authkeys"
	"github.com/bastion-dev/bastion/entrypoint"
	"github.com/bastion-dev/bastion/sshd"
	"github.com/bastion-dev/bastion/test/fakesecrets"
)

const (
	opDescribe = fakesecrets.OpDescribeSecret
	opGet      = fakesecrets.OpGetSecretValue
)

// newSecret starts a fake with one secret holding value.
func newSecret(t *testing.T, value string) (*fakesecrets.Server, fakesecrets.Secret) {
	t.Helper()
	srv := fakesecrets.NewTest(t, fakesecrets.Options{})
	useFake(t, srv)
	sec, err := srv.CreateSecret("bastion/authorized-keys", value)
	if err != nil {
		t.Fatal(err)
	}
	return srv, sec
}

func put(t *testing.T, srv *fakesecrets.Server, value string) string {
	t.Helper()
	id, err := srv.PutSecretString("bastion/authorized-keys", value)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestSecretAddAndRemove: without an initial set Start reads the secret;
// a new version (by ARN, in the ARN's region whatever AWS_REGION says) is
// applied whole on the next refresh, with the fingerprints added and
// removed in the log.
func TestSecretAddAndRemove(t *testing.T) {
	a, b := newKey(t, 1, "alice@laptop"), newKey(t, 2, "bob@ci")
	srv, sec := newSecret(t, keysFile(a.line))
	r, first := startWatcher(t, authkeys.Config{SecretID: sec.ARN, Region: "eu-west-1", Refresh: 50 * time.Millisecond})
	if first.version != sec.Current || fingerprints(first.keys) != a.fingerprint || r.w.Version() != sec.Current {
		t.Fatalf("Start = %s %s", first.version, fingerprints(first.keys))
	}
	if srv.Calls(opGet) != 1 {
		t.Fatalf("GetSecretValue calls %d", srv.Calls(opGet))
	}

	v2 := put(t, srv, keysFile(a.line, b.line))
	got := r.next(t)
	if got.version != v2 || fingerprints(got.keys) != a.fingerprint+","+b.fingerprint {
		t.Fatalf("applied %s %s, want %s with both keys", got.version, fingerprints(got.keys), v2)
	}
	line := r.log.next(t, "authorized keys applied") // Start's
	line = r.log.next(t, "authorized keys applied")
	if str(line["added"]) != "["+b.fingerprint+"]" || str(line["removed"]) != "[]" || str(line["previous_version"]) != sec.Current ||
		str(line["variable"]) != authkeys.EnvSecret || str(line["source"]) != sec.ARN {
		t.Fatalf("log %v", line)
	}

	v3 := put(t, srv, keysFile(b.line))
	got = r.next(t)
	if got.version != v3 || fingerprints(got.keys) != b.fingerprint || r.w.Version() != v3 {
		t.Fatalf("applied %s %s, want %s with bob only", got.version, fingerprints(got.keys), v3)
	}
	if line = r.log.next(t, "authorized keys applied"); str(line["removed"]) != "["+a.fingerprint+"]" {
		t.Fatalf("log %v", line)
	}
	r.log.noKeyText(t, a, b)
}

// TestSecretUnchangedIsDescribeOnly: while AWSCURRENT stays, checks call
// DescribeSecret only, even when LastChangedDate moves (a description
// edit); GetSecretValue runs once per new version.
func TestSecretUnchangedIsDescribeOnly(t *testing.T) {
	a := newKey(t, 1, "alice@laptop")
	srv, sec := newSecret(t, keysFile(a.line))
	r, _ := startWatcher(t, authkeys.Config{SecretID: sec.Name, Region: fakesecrets.DefaultRegion, Refresh: 20 * time.Millisecond})
	waitCalls(t, srv, opDescribe, 5)
	if err := srv.SetDescription(sec.Name, "edited"); err != nil {
		t.Fatal(err)
	}
	waitCalls(t, srv, opDescribe, 5)
	if n := srv.Calls(opGet); n != 1 {
		t.Fatalf("GetSecretValue called %d times for one version", n)
	}
	r.none(t)
	r.log.next(t, "authorized keys unchanged")
}

// TestSecretBadVersionsKeptOut: a version with a bad line, an empty one and
// a binary one change nothing but a log line naming the source, the
// version and the line (never the key text); each is fetched once, and
// the next good version applies.
func TestSecretBadVersionsKeptOut(t *testing.T) {
	a, b := newKey(t, 1, "alice@laptop"), newKey(t, 2, "bob@ci")
	srv, sec := newSecret(t, keysFile(a.line, b.line))
	r, first := startWatcher(t, authkeys.Config{SecretID: sec.Name, Region: fakesecrets.DefaultRegion, Refresh: 20 * time.Millisecond})

	bad := put(t, srv, keysFile(a.line, "# ok so far", `permitopen="db" `+b.line))
	line := r.log.next(t, "authorized keys version rejected; keeping the current set")
	if str(line["version"]) != bad || str(line["line"]) != "3" || str(line["source"]) != sec.Name ||
		str(line["variable"]) != authkeys.EnvSecret || str(line["version_in_force"]) != first.version ||
		!strings.Contains(str(line["error"]), `option "permitopen"`) || str(line["level"]) != "ERROR" {
		t.Fatalf("log %v", line)
	}
	gets := srv.Calls(opGet)
	waitCalls(t, srv, opDescribe, 3)
	if srv.Calls(opGet) != gets {
		t.Fatalf("the rejected version was fetched again")
	}

	empty := put(t, srv, "# everyone left\n")
	line = r.log.next(t, "authorized keys version rejected; keeping the current set")
	if str(line["version"]) != empty || line["line"] != nil || !strings.Contains(str(line["error"]), "no keys") {
		t.Fatalf("log %v", line)
	}

	binary, err := srv.PutSecretBinary(sec.Name, []byte(keysFile(a.line)))
	if err != nil {
		t.Fatal(err)
	}
	line = r.log.next(t, "authorized keys version rejected; keeping the current set")
	if str(line["version"]) != binary || !strings.Contains(str(line["error"]), "SecretBinary") {
		t.Fatalf("log %v", line)
	}
	r.none(t)
	if r.w.Version() != first.version {
		t.Fatalf("version in force %s, want %s", r.w.Version(), first.version)
	}

	good := put(t, srv, keysFile(b.line))
	if got := r.next(t); got.version != good || fingerprints(got.keys) != b.fingerprint {
		t.Fatalf("applied %s %s", got.version, fingerprints(got.keys))
	}
	r.log.noKeyText(t, a, b)
}

// TestSecretOutageAtStart: with an initial set, Start serves it without a
// call; while Secrets Manager fails, checks are retried with a doubling
// delay capped at the refresh interval and nothing is applied; the first
// good read applies the secret's set.
func TestSecretOutageAtStart(t *testing.T) {
	a, b := newKey(t, 1, "alice@laptop"), newKey(t, 2, "bob@ci")
	srv, sec := newSecret(t, keysFile(b.line))
	srv.Inject(opDescribe, fakesecrets.Fault{Code: "InternalServiceError"})
	initial, err := sshd.ParseAuthorizedKeys([]byte(keysFile(a.line)))
	if err != nil {
		t.Fatal(err)
	}
	r, first := startWatcher(t, authkeys.Config{SecretID: sec.Name, Region: fakesecrets.DefaultRegion, Initial: initial,
		Refresh: 800 * time.Millisecond, RetryMin: 100 * time.Millisecond, CallTimeout: 300 * time.Millisecond})
	if first.version != authkeys.InitialVersion || fingerprints(first.keys) != a.fingerprint {
		t.Fatalf("Start = %s %s", first.version, fingerprints(first.keys))
	}
	var retries []string
	for i := 0; i < 5; i++ {
		line := r.log.next(t, "authorized keys check failed; keeping the current set")
		retries = append(retries, str(line["retry_in"]))
		if i == 0 && (!strings.Contains(str(line["error"]), "DescribeSecret bastion/authorized-keys") || str(line["version"]) != authkeys.InitialVersion) {
			t.Fatalf("log %v", line)
		}
	}
	if got := strings.Join(retries, " "); got != "100ms 200ms 400ms 800ms 800ms" {
		t.Fatalf("retry delays %s", got)
	}
	r.none(t)
	srv.ClearFaults()
	got := r.next(t)
	if got.version != sec.Current || fingerprints(got.keys) != b.fingerprint {
		t.Fatalf("applied %s %s", got.version, fingerprints(got.keys))
	}
	if line := r.log.next(t, "authorized keys check recovered"); str(line["after_failures"]) == "" {
		t.Fatalf("log %v", line)
	}
	line := r.log.next(t, "authorized keys applied")
	if str(line["previous_version"]) != authkeys.InitialVersion || str(line["added"]) != "["+b.fingerprint+"]" || str(line["removed"]) != "["+a.fingerprint+"]" {
		t.Fatalf("log %v", line)
	}
}

// TestSecretOutageDuringRun: failures during a run keep the set in force;
// a version put during the outage is applied after it.
func TestSecretOutageDuringRun(t *testing.T) {
	a, b := newKey(t, 1, "alice@laptop"), newKey(t, 2, "bob@ci")
	srv, sec := newSecret(t, keysFile(a.line))
	r, first := startWatcher(t, authkeys.Config{SecretID: sec.Name, Region: fakesecrets.DefaultRegion,
		Refresh: 200 * time.Millisecond, RetryMin: 50 * time.Millisecond, CallTimeout: 300 * time.Millisecond})
	srv.Inject(fakesecrets.AnyOp, fakesecrets.Fault{Code: "ServiceUnavailable"})
	v2 := put(t, srv, keysFile(a.line, b.line))
	for i := 0; i < 3; i++ {
		line := r.log.next(t, "authorized keys check failed; keeping the current set")
		if str(line["version"]) != first.version {
			t.Fatalf("log %v", line)
		}
	}
	r.none(t)
	if r.w.Version() != first.version {
		t.Fatalf("version in force %s", r.w.Version())
	}
	srv.ClearFaults()
	if got := r.next(t); got.version != v2 || fingerprints(got.keys) != a.fingerprint+","+b.fingerprint {
		t.Fatalf("applied %s %s", got.version, fingerprints(got.keys))
	}
}

// TestSecretThrottlingRetried: throttling is retried inside the check by
// the SDK: no failed check, three DescribeSecret calls.
func TestSecretThrottlingRetried(t *testing.T) {
	a := newKey(t, 1, "alice@laptop")
	srv, sec := newSecret(t, keysFile(a.line))
	srv.FailNext(opDescribe, 2, "ThrottlingException")
	r, first := startWatcher(t, authkeys.Config{SecretID: sec.Name, Region: fakesecrets.DefaultRegion, Refresh: time.Hour})
	if first.version != sec.Current || srv.Calls(opDescribe) != 3 || srv.Calls(opGet) != 1 {
		t.Fatalf("Start = %s after %d DescribeSecret, %d GetSecretValue", first.version, srv.Calls(opDescribe), srv.Calls(opGet))
	}
	if strings.Contains(r.log.String(), "check failed") {
		t.Fatalf("a throttled call failed the check:\n%s", r.log.String())
	}
}

// TestSecretReload: with a refresh far away, Reload (SIGHUP) checks now.
func TestSecretReload(t *testing.T) {
	a, b := newKey(t, 1, "alice@laptop"), newKey(t, 2, "bob@ci")
	srv, sec := newSecret(t, keysFile(a.line))
	r, _ := startWatcher(t, authkeys.Config{SecretID: sec.Name, Region: fakesecrets.DefaultRegion, Refresh: time.Hour})
	v2 := put(t, srv, keysFile(b.line))
	r.w.Reload()
	if got := r.next(t); got.version != v2 {
		t.Fatalf("applied %s, want %s", got.version, v2)
	}
}

// TestSecretStartFailures: without an initial set, Start gives up after
// StartTimeout with an error naming the variable and what to fix; a
// version fixed within the wait is taken.
func TestSecretStartFailures(t *testing.T) {
	a := newKey(t, 1, "alice@laptop")
	tests := []struct {
		name   string
		op     string
		code   string
		secret string
		want   string
	}{
		{"access denied", opDescribe, "AccessDeniedException", "bastion/authorized-keys",
			"no usable authorized keys within 1s: authkeys: DescribeSecret bastion/authorized-keys: access denied: the ECS task role needs secretsmanager:DescribeSecret"},
		{"no KMS access", opGet, "DecryptionFailure", "bastion/authorized-keys", "kms:Decrypt"},
		{"no such secret", "", "", "bastion/other", "no such secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := newSecret(t, keysFile(a.line))
			if tt.code != "" {
				srv.Inject(tt.op, fakesecrets.Fault{Code: tt.code})
			}
			w, err := authkeys.New(context.Background(), authkeys.Config{SecretID: tt.secret, Region: fakesecrets.DefaultRegion,
				Decode: entrypoint.DecodeAuthorizedKeys, StartTimeout: time.Second, RetryMin: 100 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			_, _, err = w.Start(context.Background())
			if err == nil || !strings.HasPrefix(err.Error(), "authkeys: BASTION_AUTHORIZED_KEYS_SECRET: ") || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v", err)
			}
		})
	}
	t.Run("empty version fixed during the wait", func(t *testing.T) {
		srv, sec := newSecret(t, "\n")
		lc := newLogCapture()
		w, err := authkeys.New(context.Background(), authkeys.Config{SecretID: sec.Name, Region: fakesecrets.DefaultRegion,
			Decode: entrypoint.DecodeAuthorizedKeys, Logger: lc.logger(), RetryMin: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		type result struct {
			keys    []sshd.AuthorizedKey
			version string
			err     error
		}
		done := make(chan result, 1)
		go func() {
			k, v, err := w.Start(context.Background())
			done <- result{k, v, err}
		}()
		lc.next(t, "authorized keys version rejected; keeping the current set")
		v2 := put(t, srv, keysFile(a.line))
		res := <-done
		if res.err != nil || res.version != v2 || fingerprints(res.keys) != a.fingerprint {
			t.Fatalf("Start = %s %s %v", res.version, fingerprints(res.keys), res.err)
		}
	})
	t.Run("shutdown during the wait", func(t *testing.T) {
		srv, sec := newSecret(t, keysFile(a.line))
		srv.HangNext(opDescribe, -1)
		w, err := authkeys.New(context.Background(), authkeys.Config{SecretID: sec.Name, Region: fakesecrets.DefaultRegion,
			Decode: entrypoint.DecodeAuthorizedKeys})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		go func() { <-srv.NextRequest(); cancel() }()
		if _, _, err := w.Start(ctx); err == nil || !strings.Contains(err.Error(), "context canceled") {
			t.Fatalf("err = %v", err)
		}
	})
}
