package authkeys_test

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-dev/bastion/authkeys"
	"github.com/bastion-dev/bastion/entrypoint"
)

// TestParseRules: the whole-version rules with the real decoder (the one
// ROOT_PUBLIC_SSH_KEY_BASE64ENCODED goes through): text and base64 both
// accepted, one bad line rejects the version and names the line (counted
// in the source as written), an empty set is rejected, and no error
// carries key text.
func TestParseRules(t *testing.T) {
	a, b := newKey(t, 1, "alice@laptop"), newKey(t, 2, "bob@ci")
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	rsaPub, err := gossh.NewPublicKey(&rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	short := strings.TrimSpace(string(gossh.MarshalAuthorizedKey(rsaPub))) + " short@rsa"
	text := keysFile("# team keys", "", a.line, `no-port-forwarding,permitopen="db:5432" `+b.line)
	b64 := base64.StdEncoding.EncodeToString([]byte(text))
	var wrapped strings.Builder
	for i := 0; i < len(b64); i += 76 {
		wrapped.WriteString(b64[i:min(i+76, len(b64))] + "\n")
	}

	tests := []struct {
		name     string
		content  string
		wantKeys string // fingerprints, comma-separated
		wantLine int    // for rejections; 0 = the version as a whole
		wantErr  string // substring of the rejection
	}{
		{"text", text, a.fingerprint + "," + b.fingerprint, 0, ""},
		{"text with CRLF", strings.ReplaceAll(text, "\n", "\r\n"), a.fingerprint + "," + b.fingerprint, 0, ""},
		{"base64", b64, a.fingerprint + "," + b.fingerprint, 0, ""},
		{"base64 wrapped", wrapped.String(), a.fingerprint + "," + b.fingerprint, 0, ""},
		{"base64 URL-safe unpadded", base64.RawURLEncoding.EncodeToString([]byte(text)), a.fingerprint + "," + b.fingerprint, 0, ""},
		{"one key, no newline", a.line, a.fingerprint, 0, ""},

		{"unknown option", keysFile(a.line, "# c", `agent-fwd `+b.line), "", 3, `line 3: unknown option "agent-fwd"`},
		{"leading blank lines count", "\n\n" + keysFile(a.line, "bad-line"), "", 4, "line 4: not a public key line"},
		{"leading blank lines count in base64", base64.StdEncoding.EncodeToString([]byte("\n\n" + keysFile(a.line, "bad-line"))), "", 4, "line 4: not a public key line"},
		{"first key line broken", keysFile("# header", "ssh-ed25519 AAAA-broken x", b.line), "", 2, "line 2: not a public key line"},
		{"bad line inside base64", base64.StdEncoding.EncodeToString([]byte(keysFile(a.line, `from="10.0.0.0/33" `+b.line))), "", 2, `line 2: option "from": bad CIDR`},
		{"two keys on a line", keysFile(a.line + " " + b.line), "", 1, "more than one key on the line"},
		{"short RSA", keysFile(a.line, short), "", 2, "RSA key of 1024 bits is too short"},
		{"verify-required", keysFile("verify-required " + a.line), "", 1, "verify-required"},
		{"certificate-only option without cert-authority", keysFile(`principals="x" ` + a.line), "", 1, "only valid with cert-authority"},

		{"empty", "", "", 0, authkeys.ErrNoKeys.Error()},
		{"white space", " \n\t\n", "", 0, authkeys.ErrNoKeys.Error()},
		{"comments only", "# nobody\n# yet\n", "", 0, authkeys.ErrNoKeys.Error()},
		{"base64 of comments only", base64.StdEncoding.EncodeToString([]byte("# nobody\n")), "", 0, authkeys.ErrNoKeys.Error()},
		{"neither base64 nor text", "%%%%", "", 1, "neither base64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keys, rej := authkeys.ParseVersion(entrypoint.DecodeAuthorizedKeys, authkeys.EnvSecret, []byte(tt.content))
			if tt.wantErr == "" {
				if rej != nil {
					t.Fatalf("rejected: %v (line %d)", rej, rej.Line)
				}
				if got := fingerprints(keys); got != tt.wantKeys {
					t.Fatalf("keys %s, want %s", got, tt.wantKeys)
				}
				return
			}
			if rej == nil {
				t.Fatalf("accepted %s", fingerprints(keys))
			}
			if rej.Line != tt.wantLine || !strings.Contains(rej.Error(), tt.wantErr) {
				t.Fatalf("rejection line %d %q, want line %d containing %q", rej.Line, rej.Error(), tt.wantLine, tt.wantErr)
			}
			for _, k := range []testKey{a, b} {
				if strings.Contains(rej.Error(), k.blob) || strings.Contains(rej.Error(), "alice@") || strings.Contains(rej.Error(), "bob@") {
					t.Fatalf("key text in %q", rej.Error())
				}
			}
			if tt.wantErr == authkeys.ErrNoKeys.Error() && !errors.Is(rej, authkeys.ErrNoKeys) {
				t.Fatalf("not ErrNoKeys: %v", rej)
			}
		})
	}
}

// FuzzParseVersion: whatever a secret holds, parse neither panics nor
// accepts an empty set, and a key's line number points at the line of
// the text that holds that key (for text and for base64 alike).
func FuzzParseVersion(f *testing.F) {
	a, b := newKey(f, 1, "a"), newKey(f, 2, "b")
	f.Add(keysFile(a.line, b.line))
	f.Add("\n\n# c\r\n" + a.line + "\r\n\r\n" + b.line)
	f.Add(base64.StdEncoding.EncodeToString([]byte(keysFile("", a.line))))
	f.Add(keysFile("x", a.line))
	f.Add("")
	f.Add("#\n")
	f.Fuzz(func(t *testing.T, content string) {
		keys, rej := authkeys.ParseVersion(entrypoint.DecodeAuthorizedKeys, authkeys.EnvFile, []byte(content))
		if rej != nil {
			if keys != nil || rej.Line < 0 {
				t.Fatalf("rejection with keys or line %d", rej.Line)
			}
			return
		}
		if len(keys) == 0 {
			t.Fatal("empty set accepted")
		}
		text, err := entrypoint.DecodeAuthorizedKeys(authkeys.EnvFile, content)
		if err != nil {
			t.Fatalf("accepted what the decoder refuses: %v", err)
		}
		lines := strings.Split(string(text), "\n")
		for _, k := range keys {
			if k.Line < 1 || k.Line > len(lines) {
				t.Fatalf("line %d of %d", k.Line, len(lines))
			}
			pub, _, _, _, err := gossh.ParseAuthorizedKey([]byte(lines[k.Line-1]))
			if err != nil || gossh.FingerprintSHA256(pub) != k.Fingerprint {
				t.Fatalf("line %d does not hold key %s", k.Line, k.Fingerprint)
			}
		}
	})
}
