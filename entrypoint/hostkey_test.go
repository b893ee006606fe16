package entrypoint

import (
	"encoding/base64"
	"strings"
	"testing"

	gossh "golang.org/x/crypto/ssh"
)

func TestParseHostKey(t *testing.T) {
	tests := []struct {
		name     string
		file     string
		encode   func(string) string
		wantType string
		wantErr  string
	}{
		{name: "ed25519 openssh", file: "host_ed25519", wantType: gossh.KeyAlgoED25519},
		{name: "ed25519 openssh base64", file: "host_ed25519", encode: func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }, wantType: gossh.KeyAlgoED25519},
		{name: "ed25519 openssh base64 url raw wrapped", file: "host_ed25519", encode: func(s string) string {
			return wrap(base64.RawURLEncoding.EncodeToString([]byte(s)), 76, "\r\n")
		}, wantType: gossh.KeyAlgoED25519},
		{name: "ecdsa p256 sec1", file: "ecdsa_p256_sec1.pem", wantType: gossh.KeyAlgoECDSA256},
		{name: "ecdsa p256 pkcs8", file: "ecdsa_p256_pkcs8.pem", wantType: gossh.KeyAlgoECDSA256},
		{name: "ecdsa p384 openssh", file: "ecdsa_p384", wantType: gossh.KeyAlgoECDSA384},
		{name: "rsa 2048 pkcs1", file: "rsa2048_pkcs1.pem", wantType: gossh.KeyAlgoRSA},
		{name: "rsa 1024 refused", file: "rsa1024.pem", wantErr: "RSA key of 1024 bits is too short"},
		{name: "passphrase", file: "ed25519_passphrase", wantErr: "passphrase"},
		{name: "dsa refused", file: "dsa.pem", wantErr: "ssh-dss host keys are not accepted"},
		{name: "public key instead", file: "host_ed25519.pub", wantErr: "holds a public key, where the private host key belongs"},
		{name: "public key base64", file: "host_ed25519.pub", encode: func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }, wantErr: "holds a public key, where the private host key belongs"},
		{name: "not a key", file: "host_ed25519", encode: func(string) string { return base64.StdEncoding.EncodeToString([]byte("hello")) }, wantErr: "decodes as base64 but not to the expected key format"},
		{name: "a path", file: "host_ed25519", encode: func(string) string { return "~/.ssh/bastion_host_ed25519" }, wantErr: "looks like a file path"},
		{name: "broken PEM", file: "host_ed25519", encode: func(s string) string { return strings.Replace(s, "b3BlbnNzaC1rZXktdjEA", "AAAA", 1) }, wantErr: "not a private key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			value := readTestdata(t, tt.file)
			if tt.encode != nil {
				value = tt.encode(value)
			}
			s, err := ParseHostKey("SSH_PRIVATE_HOST_KEY_BASE64ENCODED", value)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("parsed a %s key, want error %q", s.PublicKey().Type(), tt.wantErr)
				}
				msg := err.Error()
				if !strings.HasPrefix(msg, "entrypoint: SSH_PRIVATE_HOST_KEY_BASE64ENCODED") || !strings.Contains(msg, tt.wantErr) {
					t.Fatalf("error %q, want the variable and %q", msg, tt.wantErr)
				}
				assertNoSecret(t, msg, value)
				if strings.Contains(msg, "correct horse") {
					t.Errorf("error %q carries the passphrase", msg)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseHostKey: %v", err)
			}
			if got := s.PublicKey().Type(); got != tt.wantType {
				t.Errorf("type %s, want %s", got, tt.wantType)
			}
			if tt.wantType == gossh.KeyAlgoRSA {
				// Only SHA-2 signatures.
				as, ok := s.(gossh.AlgorithmSigner)
				if !ok {
					t.Fatal("RSA signer is not an AlgorithmSigner")
				}
				if _, err := as.SignWithAlgorithm(nil, []byte("x"), gossh.KeyAlgoRSA); err == nil {
					t.Error("RSA host key signs with ssh-rsa (SHA-1)")
				}
				if _, err := as.SignWithAlgorithm(nil, []byte("x"), gossh.KeyAlgoRSASHA256); err != nil {
					t.Errorf("rsa-sha2-256: %v", err)
				}
			}
		})
	}
}

// assertNoSecret fails if msg contains the value, its base64, or any
// 16-character run of either.
func assertNoSecret(t *testing.T, msg, value string) {
	t.Helper()
	for _, s := range []string{value, base64.StdEncoding.EncodeToString([]byte(value))} {
		s = strings.Join(strings.Fields(s), "")
		for i := 0; i+16 <= len(s); i += 8 {
			chunk := s[i : i+16]
			if strings.Contains(chunk, "-----") || strings.Contains(chunk, "PRIVATE KEY") {
				continue
			}
			if strings.Contains(msg, chunk) {
				t.Fatalf("error %q contains secret material %q", msg, chunk)
			}
		}
	}
}

func TestEphemeralHostKey(t *testing.T) {
	a, err := EphemeralHostKey()
	if err != nil {
		t.Fatal(err)
	}
	b, err := EphemeralHostKey()
	if err != nil {
		t.Fatal(err)
	}
	if a.PublicKey().Type() != gossh.KeyAlgoED25519 {
		t.Errorf("type %s", a.PublicKey().Type())
	}
	if string(a.PublicKey().Marshal()) == string(b.PublicKey().Marshal()) {
		t.Error("two ephemeral keys are equal")
	}
}

func FuzzDecodeHostKey(f *testing.F) {
	pem := readTestdata(f, "host_ed25519")
	for _, s := range []string{pem, base64.StdEncoding.EncodeToString([]byte(pem)), readTestdata(f, "rsa1024.pem"),
		readTestdata(f, "ed25519_passphrase"), "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n", "", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, value string) {
		s, err := ParseHostKey("K", value)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "entrypoint: K") {
				t.Fatalf("error %q does not name the variable", err)
			}
			return
		}
		switch s.PublicKey().Type() {
		case gossh.KeyAlgoED25519, gossh.KeyAlgoECDSA256, gossh.KeyAlgoECDSA384, gossh.KeyAlgoECDSA521, gossh.KeyAlgoRSA:
		default:
			t.Fatalf("accepted a %s host key", s.PublicKey().Type())
		}
	})
}
