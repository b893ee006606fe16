package sshd

import (
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// pubLine returns "type base64" of testdata/<name>.pub, without its comment.
func pubLine(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name+".pub"))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	return f[0] + " " + f[1]
}

func testSigner(t testing.TB, name string) gossh.Signer {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	s, err := gossh.ParsePrivateKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestParseKeyOptions(t *testing.T) {
	local := func(y int, mo time.Month, d, h, mi, s int) time.Time {
		return time.Date(y, mo, d, h, mi, s, 0, time.Local)
	}
	utc := func(y int, mo time.Month, d, h, mi, s int) time.Time {
		return time.Date(y, mo, d, h, mi, s, 0, time.UTC)
	}
	tests := []struct {
		name    string
		opts    string // text before the key on the line
		want    KeyOptions
		wantErr string
	}{
		{name: "none", opts: "", want: KeyOptions{PortForwarding: true}},
		{name: "restrict", opts: "restrict", want: KeyOptions{}},
		{name: "restrict then port-forwarding", opts: "restrict,port-forwarding", want: KeyOptions{PortForwarding: true}},
		{name: "port-forwarding then restrict", opts: "port-forwarding,restrict", want: KeyOptions{}},
		{name: "no-port-forwarding", opts: "no-port-forwarding", want: KeyOptions{}},
		{name: "no-port-forwarding then port-forwarding", opts: "no-port-forwarding,port-forwarding", want: KeyOptions{PortForwarding: true}},
		{name: "names are case-insensitive", opts: "RESTRICT,Port-Forwarding,No-PTY", want: KeyOptions{PortForwarding: true, Ignored: []string{"no-pty"}}},
		{name: "from", opts: `from="10.0.0.0/8,!10.0.0.5"`, want: KeyOptions{PortForwarding: true, From: []string{"10.0.0.0/8", "!10.0.0.5"}}},
		{name: "from wildcards and v6", opts: `from="10.0.*,2001:db8::/32, 192.168.1.?"`, want: KeyOptions{PortForwarding: true, From: []string{"10.0.*", "2001:db8::/32", "192.168.1.?"}}},
		{name: "from unquoted (sshd refuses it too)", opts: `from=10.0.0.1`, wantErr: `option "from": value must be in double quotes`},
		{name: "FROM upper-case", opts: `FROM="10.0.0.1"`, want: KeyOptions{PortForwarding: true, From: []string{"10.0.0.1"}}},
		{name: "escaped quote in value", opts: `command="echo \"hi, there\"",from="10.0.0.1"`, want: KeyOptions{PortForwarding: true, From: []string{"10.0.0.1"}, Ignored: []string{"command"}}},
		{name: "permitopen several", opts: `permitopen="db:5432",permitopen="[fd00::1]:22",permitopen="cache.internal:*"`, want: KeyOptions{PortForwarding: true, PermitOpen: []PermitOpen{{"db", 5432}, {"fd00::1", 22}, {"cache.internal", 0}}}},
		{name: "expiry date", opts: `expiry-time="20300102"`, want: KeyOptions{PortForwarding: true, ExpiryTime: local(2030, 1, 2, 0, 0, 0)}},
		{name: "expiry minutes", opts: `expiry-time="203001021230"`, want: KeyOptions{PortForwarding: true, ExpiryTime: local(2030, 1, 2, 12, 30, 0)}},
		{name: "expiry seconds", opts: `expiry-time="20300102123045"`, want: KeyOptions{PortForwarding: true, ExpiryTime: local(2030, 1, 2, 12, 30, 45)}},
		{name: "expiry date Z", opts: `expiry-time="20300102Z"`, want: KeyOptions{PortForwarding: true, ExpiryTime: utc(2030, 1, 2, 0, 0, 0)}},
		{name: "expiry seconds Z", opts: `expiry-time="20300102123045Z"`, want: KeyOptions{PortForwarding: true, ExpiryTime: utc(2030, 1, 2, 12, 30, 45)}},
		{name: "expiry lower-case z", opts: `expiry-time="203001021230z"`, want: KeyOptions{PortForwarding: true, ExpiryTime: utc(2030, 1, 2, 12, 30, 0)}},
		{name: "earliest expiry wins", opts: `expiry-time="20310101Z",expiry-time="20300101Z",expiry-time="20320101Z"`, want: KeyOptions{PortForwarding: true, ExpiryTime: utc(2030, 1, 1, 0, 0, 0)}},
		{name: "cert-authority", opts: "cert-authority", want: KeyOptions{PortForwarding: true, CertAuthority: true}},
		{name: "cert-authority with principals", opts: `cert-authority,principals="alice, ops"`, want: KeyOptions{PortForwarding: true, CertAuthority: true, Principals: []string{"alice", "ops"}}},
		{name: "principals before cert-authority", opts: `principals="ops",cert-authority`, want: KeyOptions{PortForwarding: true, CertAuthority: true, Principals: []string{"ops"}}},
		{name: "session-only options kept in Ignored", opts: `command="/bin/false",environment="A=b",no-pty,no-agent-forwarding,no-X11-forwarding,no-user-rc,tunnel="0",permitlisten="8080",pty,user-rc,x11-forwarding,agent-forwarding`,
			want: KeyOptions{PortForwarding: true, Ignored: []string{"command", "environment", "no-pty", "no-agent-forwarding", "no-x11-forwarding", "no-user-rc", "tunnel", "permitlisten", "pty", "user-rc", "x11-forwarding", "agent-forwarding"}}},
		{name: "no-touch-required", opts: "no-touch-required", want: KeyOptions{PortForwarding: true, NoTouchRequired: true}},
		{name: "touch-required after no-touch-required", opts: "no-touch-required,touch-required", want: KeyOptions{PortForwarding: true}},
		{name: "no-touch-required after touch-required", opts: "Touch-Required,NO-TOUCH-REQUIRED", want: KeyOptions{PortForwarding: true, NoTouchRequired: true}},
		{name: "no-verify-required is a no-op", opts: "no-verify-required", want: KeyOptions{PortForwarding: true}},
		{name: "verify-required fails closed", opts: "verify-required", wantErr: `option "verify-required" cannot be enforced`},
		{name: "verify-required on a CA line fails closed", opts: "cert-authority,verify-required", wantErr: `option "verify-required" cannot be enforced`},
		{name: "verify-required with value", opts: `verify-required="yes"`, wantErr: `option "verify-required" takes no value`},

		{name: "unknown option", opts: "agent-fwd", wantErr: `unknown option "agent-fwd"`},
		{name: "unknown option with value", opts: `foo="bar"`, wantErr: `unknown option "foo"`},
		{name: "flag with value", opts: `no-pty="yes"`, wantErr: `option "no-pty" takes no value`},
		{name: "restrict with value", opts: `restrict=1`, wantErr: `option "restrict" takes no value`},
		{name: "cert-authority with value", opts: `cert-authority="x"`, wantErr: `takes no value`},
		{name: "from without value", opts: "from", wantErr: `option "from" needs a value`},
		{name: "permitopen without value", opts: "permitopen", wantErr: `option "permitopen" needs a value`},
		{name: "expiry without value", opts: "expiry-time", wantErr: `option "expiry-time" needs a value`},
		{name: "command without value", opts: "command", wantErr: `option "command" needs a value`},
		{name: "principals without value", opts: "cert-authority,principals", wantErr: `option "principals" needs a value`},
		{name: "text after closing quote", opts: `from="10.0.0.1"x`, wantErr: "text after closing quote"},
		{name: "from bad cidr", opts: `from="10.0.0.0/33"`, wantErr: "bad CIDR"},
		{name: "from host bits set (sshd: invalid)", opts: `from="127.0.0.1/8"`, wantErr: `bad CIDR "127.0.0.1/8": host bits set`},
		{name: "from negated host bits set", opts: `from="10.0.0.0/8,!192.168.1.1/24"`, wantErr: "host bits set"},
		{name: "from v6 host bits set", opts: `from="2001:db8::1/32"`, wantErr: "host bits set"},
		{name: "from mapped v4 host bits set", opts: `from="::ffff:10.1.2.3/104"`, wantErr: "host bits set"},
		{name: "from mapped v4 network", opts: `from="::ffff:10.0.0.0/104"`, want: KeyOptions{PortForwarding: true, From: []string{"::ffff:10.0.0.0/104"}}},
		{name: "from empty pattern", opts: `from="10.0.0.1,"`, wantErr: "empty pattern"},
		{name: "from empty", opts: `from=""`, wantErr: "empty pattern"},
		{name: "from bare negation", opts: `from="!"`, wantErr: "empty pattern"},
		{name: "from twice", opts: `from="10.0.0.0/8",from="192.168.0.0/16"`, wantErr: `option "from" given more than once`},
		{name: "principals twice", opts: `cert-authority,principals="a",principals="b"`, wantErr: `option "principals" given more than once`},
		{name: "principals without cert-authority", opts: `principals="alice"`, wantErr: "only valid with cert-authority"},
		{name: "principals empty", opts: `cert-authority,principals=" , "`, wantErr: "empty list"},
		{name: "permitopen no port", opts: `permitopen="db"`, wantErr: "want host:port"},
		{name: "permitopen empty host", opts: `permitopen=":22"`, wantErr: "want host:port"},
		{name: "permitopen empty bracket host", opts: `permitopen="[]:22"`, wantErr: "empty host"},
		{name: "permitopen port 0", opts: `permitopen="db:0"`, wantErr: "port must be"},
		{name: "permitopen port too big", opts: `permitopen="db:65536"`, wantErr: "port must be"},
		{name: "permitopen v6 without brackets", opts: `permitopen="fd00::1:22"`, wantErr: "need brackets"},
		{name: "permitopen bracket without colon", opts: `permitopen="[fd00::1]22"`, wantErr: "want [host]:port"},
		{name: "permitopen list in one option", opts: `permitopen="a:1,b:2"`, wantErr: "permitopen"},
		{name: "expiry short", opts: `expiry-time="2030"`, wantErr: "want YYYYMMDD"},
		{name: "expiry ten digits", opts: `expiry-time="2030010112"`, wantErr: "want YYYYMMDD"},
		{name: "expiry bad month", opts: `expiry-time="20301301"`, wantErr: "want YYYYMMDD"},
		{name: "expiry letters", opts: `expiry-time="2030010aZ"`, wantErr: "want YYYYMMDD"},
	}
	key := pubLine(t, "alice_ed25519")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			line := key + " alice"
			if tt.opts != "" {
				line = tt.opts + " " + line
			}
			// Two lines before, so the error must name line 3.
			keys, err := ParseAuthorizedKeys([]byte("# header\n\n" + line + "\n"))
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("parsed %q as %+v, want error containing %q", line, keys, tt.wantErr)
				}
				var le *LineError
				if !errors.As(err, &le) || le.Line != 3 {
					t.Fatalf("error %v (%T), want *LineError for line 3", err, err)
				}
				if !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "line 3: ") {
					t.Fatalf("error %q, want \"line 3: …%s…\"", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseAuthorizedKeys(%q): %v", line, err)
			}
			if len(keys) != 1 {
				t.Fatalf("got %d keys, want 1", len(keys))
			}
			got := keys[0].Options
			if !got.ExpiryTime.Equal(tt.want.ExpiryTime) {
				t.Errorf("ExpiryTime = %v, want %v", got.ExpiryTime, tt.want.ExpiryTime)
			}
			got.ExpiryTime, tt.want.ExpiryTime = time.Time{}, time.Time{}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("options = %+v\nwant      %+v", got, tt.want)
			}
			if keys[0].Line != 3 || keys[0].Comment != "alice" {
				t.Errorf("line %d comment %q, want 3 \"alice\"", keys[0].Line, keys[0].Comment)
			}
		})
	}
}

func TestParseKeyOptionsDirect(t *testing.T) {
	// ParseKeyOptions on its own, as the raw strings x/crypto returns.
	o, err := ParseKeyOptions([]string{`from="10.0.0.1"`, `permitopen="db:1"`})
	if err != nil {
		t.Fatal(err)
	}
	if !o.PortForwarding || len(o.From) != 1 || len(o.PermitOpen) != 1 {
		t.Errorf("got %+v", o)
	}
	if _, err := ParseKeyOptions([]string{`from="10.0.0.1`}); err == nil || !strings.Contains(err.Error(), "missing closing quote") {
		t.Errorf("unterminated quote: err = %v", err)
	}
}

func TestPermitOpenString(t *testing.T) {
	tests := []struct {
		p    PermitOpen
		want string
	}{
		{PermitOpen{"db", 5432}, "db:5432"},
		{PermitOpen{"db", 0}, "db:*"},
		{PermitOpen{"fd00::1", 22}, "[fd00::1]:22"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := tt.p.String(); got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
		})
	}
}

func testCertLine(t testing.TB) string {
	t.Helper()
	ca := testSigner(t, "ca_ed25519")
	user := testSigner(t, "alice_ed25519")
	cert := &gossh.Certificate{
		Key: user.PublicKey(), CertType: gossh.UserCert, ValidPrincipals: []string{"root"},
		ValidBefore: gossh.CertTimeInfinity, KeyId: "alice",
	}
	if err := cert.SignCert(rand.Reader, ca); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(gossh.MarshalAuthorizedKey(cert)))
}

func TestParseAuthorizedKeys(t *testing.T) {
	alice := pubLine(t, "alice_ed25519")
	bob := pubLine(t, "bob_ed25519")
	secret := "SECRETSECRETSECRET"
	tests := []struct {
		name      string
		in        string
		wantLines []int
		wantErr   string
		errLine   int
	}{
		{name: "empty", in: "", wantLines: nil},
		{name: "only comments and blanks", in: "# a\n\n   \n\t# b\n", wantLines: nil},
		{name: "one key, no newline", in: alice, wantLines: []int{1}},
		{name: "line numbers count comments and blanks", in: "# keys\n\n" + alice + " a\n  # x\n\n" + bob + " b\n", wantLines: []int{3, 6}},
		{name: "CRLF", in: "# keys\r\n" + alice + " a\r\n\r\n" + bob + " b\r\n", wantLines: []int{2, 4}},
		{name: "leading white space", in: "   " + alice + "\n\t" + bob, wantLines: []int{1, 2}},
		{name: "ecdsa", in: pubLine(t, "ecdsa"), wantLines: []int{1}},
		{name: "rsa 2048", in: pubLine(t, "rsa2048"), wantLines: []int{1}},
		{name: "same key twice", in: alice + "\nfrom=\"10.0.0.1\" " + alice, wantLines: []int{1, 2}},

		{name: "ssh-dss", in: alice + "\n" + pubLine(t, "dsa"), wantErr: "ssh-dss keys are not accepted", errLine: 2},
		{name: "rsa 1024", in: "#\n\n" + pubLine(t, "rsa1024") + " old", wantErr: "RSA key of 1024 bits is too short", errLine: 3},
		{name: "certificate", in: testCertLine(t), wantErr: "certificate cannot be authorized directly", errLine: 1},
		{name: "two keys on a line", in: alice + " " + bob, wantErr: "more than one key on the line", errLine: 1},
		{name: "two keys with comments", in: alice + " a@x " + bob + " b@x", wantErr: "more than one key on the line", errLine: 1},
		{name: "two keys, second with options", in: alice + " restrict " + bob, wantErr: "more than one key on the line", errLine: 1},
		{name: "garbage", in: alice + "\n" + secret, wantErr: "not a public key line", errLine: 2},
		{name: "truncated base64", in: alice[:len(alice)-10], wantErr: "not a public key line", errLine: 1},
		{name: "type mismatch", in: "ssh-rsa " + strings.Fields(alice)[1], wantErr: "not a public key line", errLine: 1},
		{name: "unbalanced quote", in: `from="10.0.0.1 ` + alice, wantErr: "not a public key line", errLine: 1},
		{name: "private key pasted", in: "-----BEGIN OPENSSH PRIVATE KEY-----\n" + secret + "\n", wantErr: "not a public key line", errLine: 1},
		{name: "option on the second of several lines", in: alice + "\n" + bob + "\nagent-fwd " + alice, wantErr: `unknown option "agent-fwd"`, errLine: 3},
		{name: "line over 1 MiB", in: alice + "\n" + alice + " " + strings.Repeat("x", 1<<20), wantErr: "too long", errLine: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keys, err := ParseAuthorizedKeys([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("got %d keys, want error containing %q", len(keys), tt.wantErr)
				}
				var le *LineError
				if !errors.As(err, &le) {
					t.Fatalf("error %v is %T, want *LineError", err, err)
				}
				if le.Line != tt.errLine {
					t.Errorf("error names line %d, want %d (%v)", le.Line, tt.errLine, err)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error %q, want it to contain %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "AAAA") {
					t.Errorf("error %q carries line content", err)
				}
				if keys != nil {
					t.Errorf("keys returned with an error")
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseAuthorizedKeys: %v", err)
			}
			var lines []int
			for _, k := range keys {
				lines = append(lines, k.Line)
				if k.Fingerprint != gossh.FingerprintSHA256(k.Key) || !strings.HasPrefix(k.Fingerprint, "SHA256:") {
					t.Errorf("line %d fingerprint %q", k.Line, k.Fingerprint)
				}
				if strings.ContainsAny(k.Comment, "\r\n") {
					t.Errorf("line %d comment %q keeps a line ending", k.Line, k.Comment)
				}
			}
			if !reflect.DeepEqual(lines, tt.wantLines) {
				t.Errorf("key lines %v, want %v", lines, tt.wantLines)
			}
		})
	}
}

func TestParseAuthorizedKeysFields(t *testing.T) {
	alice := pubLine(t, "alice_ed25519")
	keys, err := ParseAuthorizedKeys([]byte(`restrict,port-forwarding,permitopen="db:5432" ` + alice + " alice@laptop  work key\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	k := keys[0]
	want := testSigner(t, "alice_ed25519").PublicKey()
	if string(k.Key.Marshal()) != string(want.Marshal()) {
		t.Errorf("key differs from testdata/alice_ed25519")
	}
	if k.Comment != "alice@laptop  work key" {
		t.Errorf("comment %q", k.Comment)
	}
	if k.Fingerprint != gossh.FingerprintSHA256(want) {
		t.Errorf("fingerprint %q", k.Fingerprint)
	}
	if !k.Options.PortForwarding || len(k.Options.PermitOpen) != 1 {
		t.Errorf("options %+v", k.Options)
	}
}

func TestCheckKeyStrength(t *testing.T) {
	parse := func(name string) gossh.PublicKey {
		k, _, _, _, err := gossh.ParseAuthorizedKey([]byte(pubLine(t, name)))
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	tests := []struct {
		name    string
		key     gossh.PublicKey
		wantErr string
	}{
		{"ed25519", parse("alice_ed25519"), ""},
		{"ecdsa", parse("ecdsa"), ""},
		{"rsa2048", parse("rsa2048"), ""},
		{"rsa1024", parse("rsa1024"), "1024 bits"},
		{"dsa", parse("dsa"), "ssh-dss"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckKeyStrength(tt.key)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func FuzzParseAuthorizedKeys(f *testing.F) {
	alice := pubLine(f, "alice_ed25519")
	for _, s := range []string{
		alice,
		"# comment\n\n" + alice + " c\r\n",
		`restrict,port-forwarding,from="10.0.0.0/8,!10.0.0.5",permitopen="[fd00::1]:22",expiry-time="20300101Z" ` + alice,
		`cert-authority,principals="a,b" ` + alice,
		`command="echo \"x\"" ` + alice,
		alice + " " + alice,
		"garbage",
		`from="` + alice,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, err := ParseAuthorizedKeys(data)
		if err != nil {
			var le *LineError
			if !errors.As(err, &le) || le.Line < 1 {
				t.Fatalf("error %v (%T) is not a *LineError with a line", err, err)
			}
			if keys != nil {
				t.Fatal("keys with an error")
			}
			return
		}
		prev := 0
		for _, k := range keys {
			if k.Key == nil || k.Line <= prev {
				t.Fatalf("bad key %+v after line %d", k, prev)
			}
			prev = k.Line
			if err := CheckKeyStrength(k.Key); err != nil {
				t.Fatalf("weak key accepted: %v", err)
			}
			if _, ok := k.Key.(*gossh.Certificate); ok {
				t.Fatal("certificate accepted")
			}
			if len(k.Options.Principals) > 0 && !k.Options.CertAuthority {
				t.Fatal("principals without cert-authority")
			}
			for _, p := range k.Options.PermitOpen {
				if p.Host == "" || p.Port < 0 || p.Port > 65535 {
					t.Fatalf("bad permitopen %+v", p)
				}
			}
		}
	})
}
