package sshd

import (
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-dev/bastion/internal/logtest"
	"github.com/bastion-dev/bastion/internal/sktest"
)

func newSK(t *testing.T, flags byte) *sktest.Signer {
	t.Helper()
	s, err := sktest.New(flags)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSecurityKeyTouch checks sshd's user-presence rules for FIDO keys:
// a signature without the touch flag is refused unless no-touch-required
// waives it; for a certificate, only when both the certificate's extension
// and its cert-authority line waive it (sshauthopt_merge ANDs them).
func TestSecurityKeyTouch(t *testing.T) {
	ca := testSigner(t, "ca_ed25519")
	withExt := func(c *gossh.Certificate) { c.Extensions[noTouchRequired] = "" }
	tests := []struct {
		name       string
		lineOpts   string
		cert       bool
		certExt    bool
		flags      byte
		wantOK     bool
		wantReason string // logged refusal reason, when the refusal is ours
	}{
		{name: "touched", flags: sktest.UserPresence, wantOK: true},
		{name: "untouched", flags: 0},
		{name: "untouched, no-touch-required", lineOpts: "no-touch-required", flags: 0, wantOK: true},
		{name: "untouched, touch-required overrides", lineOpts: "no-touch-required,touch-required", flags: 0},
		{name: "verified and touched", flags: sktest.UserPresence | sktest.UserVerification, wantOK: true},
		{name: "cert touched", cert: true, flags: sktest.UserPresence, wantOK: true},
		{name: "cert untouched", cert: true, flags: 0},
		{name: "cert untouched, both waive", cert: true, certExt: true, lineOpts: "no-touch-required", flags: 0, wantOK: true},
		{name: "cert untouched, only the line waives", cert: true, lineOpts: "no-touch-required", flags: 0},
		{name: "cert untouched, only the cert waives", cert: true, certExt: true, flags: 0,
			wantReason: "certificate waives the security-key touch"},
		{name: "cert touched, only the cert waives", cert: true, certExt: true, flags: sktest.UserPresence,
			wantReason: "certificate waives the security-key touch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sk := newSK(t, tt.flags)
			var authorized string
			var signer gossh.Signer = sk
			if tt.cert {
				opts := "cert-authority"
				if tt.lineOpts != "" {
					opts += "," + tt.lineOpts
				}
				authorized = authLine(t, "ca_ed25519", opts)
				var mods []certSpec
				if tt.certExt {
					mods = append(mods, withExt)
				}
				signer = certSigner(t, sk, ca, mods...)
			} else {
				line := sk.AuthorizedKey() + " sk@example"
				if tt.lineOpts != "" {
					line = tt.lineOpts + " " + line
				}
				authorized = line + "\n"
			}
			ts := startServer(t, authorized, Config{})
			c, err := ts.dial("root", signer)
			if c != nil {
				c.Close()
			}
			if tt.wantOK != (err == nil) {
				t.Fatalf("dial err = %v, want ok=%v\nlog:\n%s", err, tt.wantOK, ts.log.String())
			}
			if tt.wantOK {
				ts.log.WaitFor(t, 5*time.Second, "auth", map[string]string{"result": "accepted", "fingerprint": gossh.FingerprintSHA256(sk.PublicKey())})
			}
			if tt.wantReason != "" {
				r := ts.log.WaitFor(t, 5*time.Second, "auth", map[string]string{"result": "refused", "fingerprint": gossh.FingerprintSHA256(sk.PublicKey())})
				if !strings.Contains(fmt.Sprint(r["reason"]), tt.wantReason) {
					t.Errorf("reason %q, want %q", r["reason"], tt.wantReason)
				}
			}
			if !tt.wantOK && ts.log.Has("auth", map[string]string{"result": "accepted"}) {
				t.Errorf("an attempt was accepted:\n%s", ts.log.String())
			}
		})
	}
}

func rsaCA(t *testing.T) gossh.Signer {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	s, err := gossh.NewSignerFromKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestCASignatureAlgorithms: a certificate its CA signed with SHA-1
// (ssh-rsa) is refused as sshd refuses it; the same CA with rsa-sha2-512
// is fine.
func TestCASignatureAlgorithms(t *testing.T) {
	alice := testSigner(t, "alice_ed25519")
	ca := rsaCA(t)
	authorized := "cert-authority " + strings.TrimSpace(string(gossh.MarshalAuthorizedKey(ca.PublicKey()))) + " rsa-ca\n"
	for _, tt := range []struct {
		algo   string
		wantOK bool
	}{
		{gossh.KeyAlgoRSA, false},
		{gossh.KeyAlgoRSASHA256, true},
		{gossh.KeyAlgoRSASHA512, true},
	} {
		t.Run(tt.algo, func(t *testing.T) {
			ts := startServer(t, authorized, Config{})
			caAlgo, err := gossh.NewSignerWithAlgorithms(ca.(gossh.AlgorithmSigner), []string{tt.algo})
			if err != nil {
				t.Fatal(err)
			}
			signer := certSigner(t, alice, caAlgo)
			c, err := ts.dial("root", signer)
			if c != nil {
				c.Close()
			}
			if tt.wantOK != (err == nil) {
				t.Fatalf("dial err = %v, want ok=%v\n%s", err, tt.wantOK, ts.log.String())
			}
			if !tt.wantOK {
				r := ts.log.WaitFor(t, 5*time.Second, "auth", map[string]string{"result": "refused", "cert_id": "alice-cert"})
				if want := `certificate signed with algorithm "ssh-rsa"`; !strings.Contains(fmt.Sprint(r["reason"]), want) {
					t.Errorf("reason %q, want %q", r["reason"], want)
				}
			}
		})
	}
}

// TestAuthLineNamesItsAttempt: an attempt x/crypto refuses before asking
// (an ssh-rsa signature) must not be logged with the previous key's
// fingerprint, comment or reason.
func TestAuthLineNamesItsAttempt(t *testing.T) {
	bob := testSigner(t, "bob_ed25519")
	rsaKey := rsaCA(t)
	ts := startServer(t, authLine(t, "alice_ed25519", ""), Config{})
	sha1Only, err := gossh.NewSignerWithAlgorithms(rsaKey.(gossh.AlgorithmSigner), []string{gossh.KeyAlgoRSA})
	if err != nil {
		t.Fatal(err)
	}
	cfg := &gossh.ClientConfig{
		User:            "root",
		Auth:            []gossh.AuthMethod{gossh.PublicKeys(bob, sha1Only)},
		HostKeyCallback: gossh.FixedHostKey(ts.host),
		Timeout:         5 * time.Second,
	}
	if c, err := gossh.Dial("tcp", ts.addr, cfg); err == nil {
		c.Close()
		t.Fatal("authenticated with keys that are not authorized")
	}
	bobFP := gossh.FingerprintSHA256(bob.PublicKey())
	ts.log.WaitFor(t, 5*time.Second, "auth", map[string]string{"result": "refused", "fingerprint": bobFP, "reason": "key not authorized"})
	r := ts.log.WaitFor(t, 5*time.Second, "auth", map[string]string{"result": "refused", "reason": `algorithm "ssh-rsa" not accepted`})
	for _, f := range []string{"fingerprint", "comment", "authorized_keys_line", "key_type"} {
		if v, ok := r[f]; ok {
			t.Errorf("the ssh-rsa attempt's line has %s=%v from another attempt: %v", f, v, r)
		}
	}
}

func TestCapField(t *testing.T) {
	long := strings.Repeat("é", 200) // 400 bytes
	tests := []struct {
		in, want string
	}{
		{"alice", "alice"},
		{strings.Repeat("a", 256), strings.Repeat("a", 256)},
		{strings.Repeat("a", 257), strings.Repeat("a", 256) + "…[1 more bytes]"},
		{long, strings.Repeat("é", 128) + "…[144 more bytes]"},
		{"x" + long, "x" + strings.Repeat("é", 127) + "…[146 more bytes]"}, // cut on a rune boundary
	}
	for _, tt := range tests {
		if got := capField(tt.in); got != tt.want {
			t.Errorf("capField(%d bytes) = %q, want %q", len(tt.in), got, tt.want)
		}
	}
}

// TestLongCertificateIDCapped: a self-signed certificate with a 100 KB key
// id, refused because its CA is unknown, gives a short line.
func TestLongCertificateIDCapped(t *testing.T) {
	alice := testSigner(t, "alice_ed25519")
	ts := startServer(t, authLine(t, "ca_ed25519", "cert-authority"), Config{})
	signer := certSigner(t, alice, alice, func(c *gossh.Certificate) { c.KeyId = strings.Repeat("A", 100_000) })
	user := strings.Repeat("u", 10_000)
	if c, err := ts.dial(user, signer); err == nil {
		c.Close()
		t.Fatal("self-signed certificate accepted")
	}
	r := ts.log.WaitFor(t, 5*time.Second, "auth", map[string]string{"result": "refused", "reason": "certificate signed by an unknown authority"})
	if id := fmt.Sprint(r["cert_id"]); len(id) > maxFieldLen+40 || !strings.Contains(id, "more bytes]") {
		t.Errorf("cert_id is %d bytes: %.80q", len(id), id)
	}
	if u := fmt.Sprint(r["user"]); len(u) > maxFieldLen+40 {
		t.Errorf("user is %d bytes", len(u))
	}
	for _, line := range strings.Split(ts.log.String(), "\n") {
		if len(line) > 4096 {
			t.Errorf("log line of %d bytes: %.120s…", len(line), line)
		}
	}
}

// TestRefusalLogSummarises: past the burst, refusals from one source are
// counted and reported once per window, not logged one by one.
func TestRefusalLogSummarises(t *testing.T) {
	log, buf := logtest.New(slog.LevelInfo)
	r := newRefusalLog(log)
	for i := 0; i < 100; i++ {
		r.warn("connection refused", "127.0.0.1", "reason", "too many")
	}
	r.warn("connection refused", "127.0.0.2", "reason", "too many")
	r.stop()
	var lines, summaries int
	for _, rec := range buf.Records() {
		switch rec["msg"] {
		case "connection refused":
			lines++
		case "repeated lines suppressed":
			summaries++
			if rec["count"] != float64(100-refusalBurst) || rec["source"] != "127.0.0.1" || rec["suppressed_msg"] != "connection refused" {
				t.Errorf("summary %v", rec)
			}
		}
	}
	if lines != refusalBurst+1 || summaries != 1 {
		t.Errorf("%d lines and %d summaries, want %d and 1:\n%s", lines, summaries, refusalBurst+1, buf.String())
	}
}
