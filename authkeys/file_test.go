package authkeys_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/authkeys"
	"github.com/bastion-dev/bastion/sshd"
)

// writeAtomic replaces path by rename, as a sidecar updates a file.
func writeAtomic(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestFileChangeDetected: a changed file is applied on the next refresh
// (version = its content hash); the same content written again, even with
// a new modification time, is not applied again.
func TestFileChangeDetected(t *testing.T) {
	a, b := newKey(t, 1, "alice@laptop"), newKey(t, 2, "bob@ci")
	path := filepath.Join(t.TempDir(), "authorized_keys")
	writeAtomic(t, path, keysFile(a.line))
	r, first := startWatcher(t, authkeys.Config{File: path, Refresh: 20 * time.Millisecond})
	if !strings.HasPrefix(first.version, "sha256:") || len(first.version) != len("sha256:")+16 || fingerprints(first.keys) != a.fingerprint {
		t.Fatalf("Start = %s %s", first.version, fingerprints(first.keys))
	}

	writeAtomic(t, path, keysFile(a.line, b.line))
	got := r.next(t)
	if got.version == first.version || fingerprints(got.keys) != a.fingerprint+","+b.fingerprint {
		t.Fatalf("applied %s %s", got.version, fingerprints(got.keys))
	}
	line := r.log.next(t, "authorized keys applied") // Start's
	line = r.log.next(t, "authorized keys applied")
	if str(line["variable"]) != authkeys.EnvFile || str(line["source"]) != path || str(line["version"]) != got.version {
		t.Fatalf("log %v", line)
	}

	writeAtomic(t, path, keysFile(a.line, b.line))
	future := time.Now().Add(time.Hour)
	if err := os.Chtimes(path, future, future); err != nil {
		t.Fatal(err)
	}
	rewritten := time.Now()
	// Checks run one after another: the second to log after the rewrite
	// began after it.
	for range 2 {
		r.log.nextAfter(t, "authorized keys unchanged", rewritten)
	}
	r.none(t)
}

// TestFileReloadAtOnce: with a refresh an hour away, Reload (SIGHUP)
// applies an edited file at once, in-place edits included.
func TestFileReloadAtOnce(t *testing.T) {
	a, b := newKey(t, 1, "alice@laptop"), newKey(t, 2, "bob@ci")
	path := filepath.Join(t.TempDir(), "authorized_keys")
	writeAtomic(t, path, keysFile(a.line))
	r, _ := startWatcher(t, authkeys.Config{File: path, Refresh: time.Hour})
	if err := os.WriteFile(path, []byte(keysFile(b.line)), 0o600); err != nil {
		t.Fatal(err)
	}
	r.w.Reload()
	if got := r.next(t); fingerprints(got.keys) != b.fingerprint {
		t.Fatalf("applied %s", fingerprints(got.keys))
	}
}

// TestFileBrokenMissingAndBack: a broken file and a missing one keep the
// set in force (the rejection names the path, its version and the line,
// not the key text); putting the version in force back applies nothing;
// an initial set is replaced by the file's at the first read.
func TestFileBrokenMissingAndBack(t *testing.T) {
	a, b := newKey(t, 1, "alice@laptop"), newKey(t, 2, "bob@ci")
	initial, err := sshd.ParseAuthorizedKeys([]byte(keysFile(b.line)))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "authorized_keys")
	writeAtomic(t, path, keysFile(a.line))
	r, first := startWatcher(t, authkeys.Config{File: path, Initial: initial, Refresh: time.Hour, RetryMin: 20 * time.Millisecond})
	if first.version != authkeys.InitialVersion {
		t.Fatalf("Start = %s", first.version)
	}
	good := r.next(t)
	if fingerprints(good.keys) != a.fingerprint {
		t.Fatalf("applied %s", fingerprints(good.keys))
	}

	writeAtomic(t, path, keysFile(a.line, "", "", `no-such-option `+b.line))
	r.w.Reload()
	line := r.log.next(t, "authorized keys version rejected; keeping the current set")
	if str(line["source"]) != path || str(line["line"]) != "4" || !strings.HasPrefix(str(line["version"]), "sha256:") ||
		str(line["version_in_force"]) != good.version {
		t.Fatalf("log %v", line)
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	r.w.Reload()
	line = r.log.next(t, "authorized keys check failed; keeping the current set")
	if !strings.Contains(str(line["error"]), "no such file") || str(line["retry_in"]) != "20ms" {
		t.Fatalf("log %v", line)
	}
	r.log.next(t, "authorized keys check failed; keeping the current set") // retried without a Reload

	writeAtomic(t, path, keysFile(a.line))
	r.log.next(t, "authorized keys check recovered")
	if line = r.log.next(t, "authorized keys back to the version in force"); str(line["version"]) != good.version {
		t.Fatalf("log %v", line)
	}
	r.none(t)
	r.log.noKeyText(t, a, b)
}
