package sshd

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-dev/bastion/internal/logtest"
)

var testNow = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

type testServer struct {
	s     *Server
	addr  string
	log   *logtest.Buffer
	serve chan error
	host  gossh.PublicKey
}

// startServer serves cfg on 127.0.0.1:0. authorized is authorized_keys
// text; host key, logger and clock are filled in when unset.
func startServer(t *testing.T, authorized string, cfg Config) *testServer {
	t.Helper()
	keys, err := ParseAuthorizedKeys([]byte(authorized))
	if err != nil {
		t.Fatalf("authorized keys: %v", err)
	}
	cfg.AuthorizedKeys = keys
	if cfg.HostSigners == nil {
		cfg.HostSigners = []gossh.Signer{testSigner(t, "host_ed25519")}
	}
	var buf *logtest.Buffer
	cfg.Logger, buf = logtest.New(slog.LevelDebug)
	if cfg.Clock == nil {
		cfg.Clock = func() time.Time { return testNow }
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{s: s, addr: ln.Addr().String(), log: buf, serve: make(chan error, 1), host: cfg.HostSigners[0].PublicKey()}
	go func() { ts.serve <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		select {
		case <-ts.serve:
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after Shutdown")
		}
	})
	return ts
}

func (ts *testServer) clientConfig(user string, signer gossh.Signer) *gossh.ClientConfig {
	return &gossh.ClientConfig{
		User:            user,
		Auth:            []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: gossh.FixedHostKey(ts.host),
		Timeout:         5 * time.Second,
	}
}

func (ts *testServer) dial(user string, signer gossh.Signer) (*gossh.Client, error) {
	return gossh.Dial("tcp", ts.addr, ts.clientConfig(user, signer))
}

func (ts *testServer) mustDial(t *testing.T, user string, signer gossh.Signer) *gossh.Client {
	t.Helper()
	c, err := ts.dial(user, signer)
	if err != nil {
		t.Fatalf("ssh dial: %v\nlog:\n%s", err, ts.log.String())
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// echoServer echoes each connection; with collect, it reads to EOF first
// and only then writes everything back, which needs a working half-close.
type echoServer struct {
	addr   string
	port   int
	sawEOF chan struct{}
}

func startEcho(t *testing.T, collect bool) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	e := &echoServer{addr: ln.Addr().String(), port: ln.Addr().(*net.TCPAddr).Port, sawEOF: make(chan struct{}, 16)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c *net.TCPConn) {
				defer c.Close()
				if collect {
					data, err := io.ReadAll(c)
					if err != nil {
						return
					}
					e.sawEOF <- struct{}{}
					c.Write(data)
				} else {
					io.Copy(c, c)
					e.sawEOF <- struct{}{}
				}
				c.CloseWrite()
			}(c.(*net.TCPConn))
		}
	}()
	return e
}

func closedPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

func openDirect(c *gossh.Client, host string, port uint32) (gossh.Channel, error) {
	payload := gossh.Marshal(directTCPIPRequest{DestAddr: host, DestPort: port, OriginAddr: "127.0.0.1", OriginPort: 5555})
	ch, reqs, err := c.OpenChannel("direct-tcpip", payload)
	if err != nil {
		return nil, err
	}
	go gossh.DiscardRequests(reqs)
	return ch, nil
}

func echoRoundTrip(t *testing.T, rw io.ReadWriter, msg string) {
	t.Helper()
	if _, err := io.WriteString(rw, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(rw, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(got) != msg {
		t.Fatalf("echo %q, want %q", got, msg)
	}
}

func authLine(t *testing.T, name, opts string) string {
	line := pubLine(t, name) + " " + strings.TrimSuffix(name, "_ed25519") + "@example"
	if opts != "" {
		line = opts + " " + line
	}
	return line + "\n"
}

var loopbackPolicy = func(t *testing.T) Policy { return Policy{Allow: mustAllow(t, "127.0.0.1/32")} }

type certSpec func(*gossh.Certificate)

// certSigner signs a user certificate for key with ca, valid around
// testNow for principal root with permit-port-forwarding, then applies mods.
func certSigner(t *testing.T, key, ca gossh.Signer, mods ...certSpec) gossh.Signer {
	t.Helper()
	cert := &gossh.Certificate{
		Key:             key.PublicKey(),
		CertType:        gossh.UserCert,
		KeyId:           "alice-cert",
		Serial:          42,
		ValidPrincipals: []string{"root"},
		ValidAfter:      uint64(testNow.Add(-time.Hour).Unix()),
		ValidBefore:     uint64(testNow.Add(time.Hour).Unix()),
		Permissions:     gossh.Permissions{Extensions: map[string]string{"permit-port-forwarding": ""}},
	}
	for _, m := range mods {
		m(cert)
	}
	if err := cert.SignCert(rand.Reader, ca); err != nil {
		t.Fatal(err)
	}
	s, err := gossh.NewCertSigner(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestNewRefusesUnusableConfig(t *testing.T) {
	keys, err := ParseAuthorizedKeys([]byte(pubLine(t, "alice_ed25519")))
	if err != nil {
		t.Fatal(err)
	}
	host := []gossh.Signer{testSigner(t, "host_ed25519")}
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"no host key", Config{AuthorizedKeys: keys}, "sshd: no host key"},
		{"no authorized keys", Config{HostSigners: host}, "sshd: no authorized keys"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.cfg); err == nil || err.Error() != tt.wantErr {
				t.Fatalf("New: %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestAuth(t *testing.T) {
	alice := testSigner(t, "alice_ed25519")
	bob := testSigner(t, "bob_ed25519")
	ca := testSigner(t, "ca_ed25519")
	ca2 := testSigner(t, "ca2_ed25519")
	aliceFP := gossh.FingerprintSHA256(alice.PublicKey())
	tests := []struct {
		name       string
		authorized func(t *testing.T) string
		user       string
		signer     func(t *testing.T) gossh.Signer
		wantReason string // "" = accepted
		wantFields map[string]string
	}{
		{
			name:       "authorized key",
			authorized: func(t *testing.T) string { return authLine(t, "alice_ed25519", "") },
			signer:     func(*testing.T) gossh.Signer { return alice },
			wantFields: map[string]string{"key_type": "ssh-ed25519", "fingerprint": aliceFP, "comment": "alice@example", "authorized_keys_line": "1"},
		},
		{
			name:       "unknown key",
			authorized: func(t *testing.T) string { return authLine(t, "alice_ed25519", "") },
			signer:     func(*testing.T) gossh.Signer { return bob },
			wantReason: "key not authorized",
			wantFields: map[string]string{"key_type": "ssh-ed25519", "fingerprint": gossh.FingerprintSHA256(bob.PublicKey())},
		},
		{
			name:       "from mismatch",
			authorized: func(t *testing.T) string { return authLine(t, "alice_ed25519", `from="10.0.0.0/8"`) },
			signer:     func(*testing.T) gossh.Signer { return alice },
			wantReason: "client address not permitted by from=",
			wantFields: map[string]string{"comment": "alice@example", "fingerprint": aliceFP},
		},
		{
			name:       "from match",
			authorized: func(t *testing.T) string { return authLine(t, "alice_ed25519", `from="10.0.0.0/8,127.0.0.0/8"`) },
			signer:     func(*testing.T) gossh.Signer { return alice },
		},
		{
			name:       "from negated",
			authorized: func(t *testing.T) string { return authLine(t, "alice_ed25519", `from="!127.0.0.1,*"`) },
			signer:     func(*testing.T) gossh.Signer { return alice },
			wantReason: "client address not permitted by from=",
		},
		{
			name: "second line admits when the first refuses",
			authorized: func(t *testing.T) string {
				return authLine(t, "alice_ed25519", `from="10.0.0.0/8"`) + authLine(t, "alice_ed25519", "")
			},
			signer:     func(*testing.T) gossh.Signer { return alice },
			wantFields: map[string]string{"authorized_keys_line": "2"},
		},
		{
			name:       "expiry-time past",
			authorized: func(t *testing.T) string { return authLine(t, "alice_ed25519", `expiry-time="20250601115959Z"`) },
			signer:     func(*testing.T) gossh.Signer { return alice },
			wantReason: "key expired (expiry-time)",
		},
		{
			name:       "expiry-time now is expired",
			authorized: func(t *testing.T) string { return authLine(t, "alice_ed25519", `expiry-time="20250601120000Z"`) },
			signer:     func(*testing.T) gossh.Signer { return alice },
			wantReason: "key expired (expiry-time)",
		},
		{
			name:       "expiry-time future",
			authorized: func(t *testing.T) string { return authLine(t, "alice_ed25519", `expiry-time="20250601120001Z"`) },
			signer:     func(*testing.T) gossh.Signer { return alice },
		},
		{
			name:       "CA key offered as a plain key",
			authorized: func(t *testing.T) string { return authLine(t, "ca_ed25519", "cert-authority") },
			signer:     func(*testing.T) gossh.Signer { return ca },
			wantReason: "key not authorized",
		},
		{
			name:       "cert, login is a principal",
			authorized: func(t *testing.T) string { return authLine(t, "ca_ed25519", "cert-authority") },
			signer:     func(t *testing.T) gossh.Signer { return certSigner(t, alice, ca) },
			wantFields: map[string]string{"key_type": gossh.CertAlgoED25519v01, "fingerprint": aliceFP, "cert_id": "alice-cert", "cert_serial": "42",
				"ca_fingerprint": gossh.FingerprintSHA256(ca.PublicKey()), "comment": "ca@example"},
		},
		{
			name:       "cert, login not a principal",
			authorized: func(t *testing.T) string { return authLine(t, "ca_ed25519", "cert-authority") },
			signer: func(t *testing.T) gossh.Signer {
				return certSigner(t, alice, ca, func(c *gossh.Certificate) { c.ValidPrincipals = []string{"alice"} })
			},
			wantReason: "no certificate principal is allowed for this login",
		},
		{
			name:       "cert, principals= matches",
			authorized: func(t *testing.T) string { return authLine(t, "ca_ed25519", `cert-authority,principals="ops,dba"`) },
			signer: func(t *testing.T) gossh.Signer {
				return certSigner(t, alice, ca, func(c *gossh.Certificate) { c.ValidPrincipals = []string{"alice", "dba"} })
			},
		},
		{
			name:       "cert, principals= replaces the login rule",
			authorized: func(t *testing.T) string { return authLine(t, "ca_ed25519", `cert-authority,principals="ops"`) },
			signer:     func(t *testing.T) gossh.Signer { return certSigner(t, alice, ca) }, // principal root = login
			wantReason: "no certificate principal is allowed for this login",
		},
		{
			name:       "cert without principals",
			authorized: func(t *testing.T) string { return authLine(t, "ca_ed25519", "cert-authority") },
			signer: func(t *testing.T) gossh.Signer {
				return certSigner(t, alice, ca, func(c *gossh.Certificate) { c.ValidPrincipals = nil })
			},
			wantReason: "certificate has no principals",
		},
		{
			name:       "cert without principals under principals=",
			authorized: func(t *testing.T) string { return authLine(t, "ca_ed25519", `cert-authority,principals="root"`) },
			signer: func(t *testing.T) gossh.Signer {
				return certSigner(t, alice, ca, func(c *gossh.Certificate) { c.ValidPrincipals = nil })
			},
			wantReason: "certificate has no principals",
		},
		{
			name:       "cert expired",
			authorized: func(t *testing.T) string { return authLine(t, "ca_ed25519", "cert-authority") },
			signer: func(t *testing.T) gossh.Signer {
				return certSigner(t, alice, ca, func(c *gossh.Certificate) { c.ValidBefore = uint64(testNow.Add(-time.Minute).Unix()) })
			},
			wantReason: "certificate rejected: cert has expired",
		},
		{
			name:       "cert not yet valid",
			authorized: func(t *testing.T) string { return authLine(t, "ca_ed25519", "cert-authority") },
			signer: func(t *testing.T) gossh.Signer {
				return certSigner(t, alice, ca, func(c *gossh.Certificate) { c.ValidAfter = uint64(testNow.Add(time.Minute).Unix()) })
			},
			wantReason: "certificate rejected: cert is not yet valid",
		},
		{
			name:       "cert from an unknown CA",
			authorized: func(t *testing.T) string { return authLine(t, "ca_ed25519", "cert-authority") },
			signer:     func(t *testing.T) gossh.Signer { return certSigner(t, alice, ca2) },
			wantReason: "certificate signed by an unknown authority",
		},
		{
			name:       "cert CA listed without cert-authority",
			authorized: func(t *testing.T) string { return authLine(t, "ca_ed25519", "") },
			signer:     func(t *testing.T) gossh.Signer { return certSigner(t, alice, ca) },
			wantReason: "certificate signed by an unknown authority",
		},
		{
			name:       "cert source-address mismatch",
			authorized: func(t *testing.T) string { return authLine(t, "ca_ed25519", "cert-authority") },
			signer: func(t *testing.T) gossh.Signer {
				return certSigner(t, alice, ca, func(c *gossh.Certificate) {
					c.CriticalOptions = map[string]string{"source-address": "10.0.0.0/8"}
				})
			},
			wantReason: "client address not permitted by the certificate's source-address",
		},
		{
			name:       "cert source-address match",
			authorized: func(t *testing.T) string { return authLine(t, "ca_ed25519", "cert-authority") },
			signer: func(t *testing.T) gossh.Signer {
				return certSigner(t, alice, ca, func(c *gossh.Certificate) {
					c.CriticalOptions = map[string]string{"source-address": "10.0.0.0/8,127.0.0.1/32"}
				})
			},
		},
		{
			name:       "cert unknown critical option",
			authorized: func(t *testing.T) string { return authLine(t, "ca_ed25519", "cert-authority") },
			signer: func(t *testing.T) gossh.Signer {
				return certSigner(t, alice, ca, func(c *gossh.Certificate) {
					c.CriticalOptions = map[string]string{"verify-required-by-someone": ""}
				})
			},
			wantReason: "certificate rejected",
		},
		{
			name:       "host cert offered as a user cert",
			authorized: func(t *testing.T) string { return authLine(t, "ca_ed25519", "cert-authority") },
			signer: func(t *testing.T) gossh.Signer {
				return certSigner(t, alice, ca, func(c *gossh.Certificate) { c.CertType = gossh.HostCert })
			},
			wantReason: "not a user certificate",
		},
		{
			name:       "cert under a CA line with from mismatch",
			authorized: func(t *testing.T) string { return authLine(t, "ca_ed25519", `cert-authority,from="10.0.0.0/8"`) },
			signer:     func(t *testing.T) gossh.Signer { return certSigner(t, alice, ca) },
			wantReason: "client address not permitted by from=",
		},
		{
			name:       "cert under an expired CA line",
			authorized: func(t *testing.T) string { return authLine(t, "ca_ed25519", `cert-authority,expiry-time="20200101"`) },
			signer:     func(t *testing.T) gossh.Signer { return certSigner(t, alice, ca) },
			wantReason: "key expired (expiry-time)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, tt.authorized(t), Config{})
			user := tt.user
			if user == "" {
				user = "root"
			}
			c, err := ts.dial(user, tt.signer(t))
			if c != nil {
				defer c.Close()
			}
			want := map[string]string{"user": user, "method": "publickey"}
			for k, v := range tt.wantFields {
				want[k] = v
			}
			if tt.wantReason == "" {
				if err != nil {
					t.Fatalf("dial: %v\nlog:\n%s", err, ts.log.String())
				}
				want["result"] = "accepted"
				r := ts.log.WaitFor(t, 5*time.Second, "auth", want)
				if _, ok := r["reason"]; ok {
					t.Errorf("accepted auth line has a reason: %v", r)
				}
				if c, _ := r["client"].(string); !strings.HasPrefix(c, "127.0.0.1:") {
					t.Errorf("client = %v", r["client"])
				}
				if fp, _ := r["fingerprint"].(string); !strings.HasPrefix(fp, "SHA256:") {
					t.Errorf("fingerprint = %v", r["fingerprint"])
				}
				return
			}
			if err == nil {
				t.Fatalf("dial succeeded, want refusal %q", tt.wantReason)
			}
			if !strings.Contains(err.Error(), "unable to authenticate") {
				t.Errorf("client error %v", err)
			}
			want["result"] = "refused"
			deadline := time.Now().Add(5 * time.Second)
			for {
				found := false
				for _, r := range ts.log.Find("auth", want) {
					found = found || strings.Contains(fmt.Sprint(r["reason"]), tt.wantReason)
				}
				if found {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no refused auth line with reason %q and %v:\n%s", tt.wantReason, want, ts.log.String())
				}
				time.Sleep(10 * time.Millisecond)
			}
			if ts.log.Has("auth", map[string]string{"result": "accepted"}) {
				t.Errorf("an auth line says accepted:\n%s", ts.log.String())
			}
		})
	}
}

func TestOnlyPublicKeyAuthOffered(t *testing.T) {
	ts := startServer(t, authLine(t, "alice_ed25519", ""), Config{})
	var pwCalled, kbdCalled atomic.Bool
	cfg := &gossh.ClientConfig{
		User: "root",
		Auth: []gossh.AuthMethod{
			gossh.PasswordCallback(func() (string, error) { pwCalled.Store(true); return "secret", nil }),
			gossh.KeyboardInteractive(func(string, string, []string, []bool) ([]string, error) {
				kbdCalled.Store(true)
				return nil, nil
			}),
		},
		HostKeyCallback: gossh.FixedHostKey(ts.host),
		Timeout:         5 * time.Second,
	}
	c, err := gossh.Dial("tcp", ts.addr, cfg)
	if err == nil {
		c.Close()
		t.Fatal("authenticated without a key")
	}
	if !strings.Contains(err.Error(), "attempted methods [none]") || !strings.Contains(err.Error(), "no supported methods remain") {
		t.Errorf("error %v, want only none attempted", err)
	}
	if pwCalled.Load() || kbdCalled.Load() {
		t.Errorf("password (%v) or keyboard-interactive (%v) was offered", pwCalled.Load(), kbdCalled.Load())
	}
	ts.log.WaitFor(t, 5*time.Second, "auth", map[string]string{"method": "none", "result": "refused", "reason": "method none is not accepted", "level": "DEBUG"})
}

func TestOnlyDirectTCPIPServed(t *testing.T) {
	ts := startServer(t, authLine(t, "alice_ed25519", ""), Config{Policy: loopbackPolicy(t)})
	c := ts.mustDial(t, "root", testSigner(t, "alice_ed25519"))

	if _, err := c.NewSession(); err == nil {
		t.Error("session channel accepted")
	} else {
		var oce *gossh.OpenChannelError
		if !errors.As(err, &oce) || oce.Reason != gossh.UnknownChannelType {
			t.Errorf("session: %v, want UnknownChannelType", err)
		}
	}
	for _, typ := range []string{"direct-streamlocal@openssh.com", "x11", "forwarded-tcpip", "tun@openssh.com"} {
		if _, _, err := c.OpenChannel(typ, nil); err == nil {
			t.Errorf("%s channel accepted", typ)
		}
	}
	fwd := gossh.Marshal(struct {
		Addr string
		Port uint32
	}{"127.0.0.1", 0})
	for _, typ := range []string{"tcpip-forward", "streamlocal-forward@openssh.com", "no-more-sessions@openssh.com"} {
		ok, _, err := c.SendRequest(typ, true, fwd)
		if err != nil || ok {
			t.Errorf("global request %s: ok=%v err=%v, want refused", typ, ok, err)
		}
	}
	if ln, err := c.Listen("tcp", "127.0.0.1:0"); err == nil {
		ln.Close()
		t.Error("remote forward accepted")
	}
	// The connection is still usable.
	e := startEcho(t, false)
	conn, err := c.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	echoRoundTrip(t, conn, "still here")
}

func TestForwardEchoAndAudit(t *testing.T) {
	ts := startServer(t, authLine(t, "alice_ed25519", ""), Config{Policy: loopbackPolicy(t)})
	alice := testSigner(t, "alice_ed25519")
	c := ts.mustDial(t, "root", alice)
	e := startEcho(t, false)
	conn, err := c.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	echoRoundTrip(t, conn, "hello")
	echoRoundTrip(t, conn, strings.Repeat("x", 100000))
	conn.Close()
	r := ts.log.WaitFor(t, 5*time.Second, "tunnel", map[string]string{
		"user": "root", "fingerprint": gossh.FingerprintSHA256(alice.PublicKey()),
		"requested": e.addr, "dialed": e.addr, "bytes_up": "100005", "bytes_down": "100005",
	})
	if c, _ := r["client"].(string); !strings.HasPrefix(c, "127.0.0.1:") {
		t.Errorf("client = %v", r["client"])
	}
	if _, ok := r["duration_ms"].(float64); !ok {
		t.Errorf("duration_ms = %v", r["duration_ms"])
	}
	if reason, _ := r["close_reason"].(string); reason == "" {
		t.Errorf("close_reason = %v", r["close_reason"])
	}
}

func TestForwardInetAtonLiteral(t *testing.T) {
	ts := startServer(t, authLine(t, "alice_ed25519", ""), Config{Policy: loopbackPolicy(t)})
	c := ts.mustDial(t, "root", testSigner(t, "alice_ed25519"))
	e := startEcho(t, false)
	for _, host := range []string{"127.1", "2130706433", "0x7f.1", "[::ffff:127.0.0.1]"} {
		t.Run(host, func(t *testing.T) {
			ch, err := openDirect(c, host, uint32(e.port))
			if err != nil {
				t.Fatalf("open %s: %v", host, err)
			}
			echoRoundTrip(t, ch, "x")
			ch.Close()
			// The audit line keeps the requested host (without brackets).
			ts.log.WaitFor(t, 5*time.Second, "tunnel", map[string]string{"requested": net.JoinHostPort(strings.Trim(host, "[]"), strconv.Itoa(e.port)), "dialed": e.addr})
		})
	}
}

func TestHalfClose(t *testing.T) {
	ts := startServer(t, authLine(t, "alice_ed25519", ""), Config{Policy: loopbackPolicy(t)})
	c := ts.mustDial(t, "root", testSigner(t, "alice_ed25519"))
	e := startEcho(t, true)
	ch, err := openDirect(c, "127.0.0.1", uint32(e.port))
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if _, err := io.WriteString(ch, "request body"); err != nil {
		t.Fatal(err)
	}
	if err := ch.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-e.sawEOF:
	case <-time.After(5 * time.Second):
		t.Fatal("target never saw EOF after the client's CloseWrite")
	}
	done := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(ch); done <- b }()
	select {
	case b := <-done:
		if string(b) != "request body" {
			t.Fatalf("reply %q", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no channel EOF after the target's reply")
	}
	ts.log.WaitFor(t, 5*time.Second, "tunnel", map[string]string{"bytes_up": "12", "bytes_down": "12", "close_reason": "eof both ways"})
}

func TestTunnelRefusals(t *testing.T) {
	e := startEcho(t, false)
	closed := closedPort(t)
	tests := []struct {
		name       string
		opts       string
		host       string
		port       int
		wantCode   gossh.RejectionReason
		wantMsg    string
		wantReason string
	}{
		{name: "other loopback address", host: "127.0.0.2", port: e.port, wantCode: gossh.Prohibited, wantMsg: msgProhibited, wantReason: string(ReasonDefaultDeny)},
		{name: "metadata endpoint", host: "169.254.169.254", port: 80, wantCode: gossh.Prohibited, wantMsg: msgProhibited, wantReason: string(ReasonDefaultDeny)},
		{name: "ecs credentials endpoint as a number", host: "2852039170", port: 80, wantCode: gossh.Prohibited, wantMsg: msgProhibited, wantReason: string(ReasonDefaultDeny)},
		{name: "v6 loopback", host: "::1", port: e.port, wantCode: gossh.Prohibited, wantMsg: msgProhibited, wantReason: string(ReasonDefaultDeny)},
		{name: "this network", host: "0.0.0.0", port: e.port, wantCode: gossh.Prohibited, wantMsg: msgProhibited, wantReason: string(ReasonDefaultDeny)},
		{name: "port 0", host: "127.0.0.1", port: 0, wantCode: gossh.Prohibited, wantMsg: msgProhibited, wantReason: string(ReasonBadPort)},
		{name: "port too big", host: "127.0.0.1", port: 70000, wantCode: gossh.Prohibited, wantMsg: msgProhibited, wantReason: string(ReasonBadPort)},
		{name: "closed port", host: "127.0.0.1", port: closed, wantCode: gossh.ConnectionFailed, wantMsg: msgConnectFailed, wantReason: "dial: "},
		{name: "no-port-forwarding", opts: "no-port-forwarding", host: "127.0.0.1", port: e.port, wantCode: gossh.Prohibited, wantMsg: msgProhibited, wantReason: string(ReasonNoPortForwarding)},
		{name: "restrict", opts: "restrict", host: "127.0.0.1", port: e.port, wantCode: gossh.Prohibited, wantMsg: msgProhibited, wantReason: string(ReasonNoPortForwarding)},
		{name: "permitopen other port", opts: `permitopen="127.0.0.1:1"`, host: "127.0.0.1", port: e.port, wantCode: gossh.Prohibited, wantMsg: msgProhibited, wantReason: string(ReasonPermitOpen)},
		{name: "permitopen other spelling", opts: `permitopen="127.0.0.1:*"`, host: "127.1", port: e.port, wantCode: gossh.Prohibited, wantMsg: msgProhibited, wantReason: string(ReasonPermitOpen)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, authLine(t, "alice_ed25519", tt.opts), Config{Policy: loopbackPolicy(t)})
			c := ts.mustDial(t, "root", testSigner(t, "alice_ed25519"))
			ch, err := openDirect(c, tt.host, uint32(tt.port))
			if err == nil {
				ch.Close()
				t.Fatal("channel opened")
			}
			var oce *gossh.OpenChannelError
			if !errors.As(err, &oce) {
				t.Fatalf("error %v (%T), want *OpenChannelError", err, err)
			}
			if oce.Reason != tt.wantCode || oce.Message != tt.wantMsg {
				t.Errorf("got %v %q, want %v %q", oce.Reason, oce.Message, tt.wantCode, tt.wantMsg)
			}
			r := ts.log.WaitFor(t, 5*time.Second, "tunnel refused", map[string]string{"user": "root",
				"requested": net.JoinHostPort(tt.host, strconv.Itoa(tt.port))})
			if reason, _ := r["reason"].(string); !strings.HasPrefix(reason, tt.wantReason) {
				t.Errorf("log reason %q, want %q", reason, tt.wantReason)
			}
			if fp, _ := r["fingerprint"].(string); !strings.HasPrefix(fp, "SHA256:") {
				t.Errorf("log fingerprint %v", r["fingerprint"])
			}
		})
	}
}

func TestPermitOpenAllows(t *testing.T) {
	e := startEcho(t, false)
	opts := `permitopen="127.0.0.1:` + strconv.Itoa(e.port) + `"`
	ts := startServer(t, authLine(t, "alice_ed25519", opts), Config{Policy: loopbackPolicy(t)})
	c := ts.mustDial(t, "root", testSigner(t, "alice_ed25519"))
	ch, err := openDirect(c, "127.0.0.1", uint32(e.port))
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	echoRoundTrip(t, ch, "permitted")
}

func TestCertTunnels(t *testing.T) {
	alice := testSigner(t, "alice_ed25519")
	ca := testSigner(t, "ca_ed25519")
	e := startEcho(t, false)
	tests := []struct {
		name   string
		mods   []certSpec
		wantOK bool
	}{
		{name: "with permit-port-forwarding", wantOK: true},
		{name: "without permit-port-forwarding", mods: []certSpec{func(c *gossh.Certificate) { c.Extensions = map[string]string{"permit-pty": ""} }}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, authLine(t, "ca_ed25519", "cert-authority"), Config{Policy: loopbackPolicy(t)})
			c := ts.mustDial(t, "root", certSigner(t, alice, ca, tt.mods...))
			ch, err := openDirect(c, "127.0.0.1", uint32(e.port))
			if tt.wantOK {
				if err != nil {
					t.Fatal(err)
				}
				defer ch.Close()
				echoRoundTrip(t, ch, "cert")
				return
			}
			var oce *gossh.OpenChannelError
			if !errors.As(err, &oce) || oce.Reason != gossh.Prohibited || oce.Message != msgProhibited {
				t.Fatalf("open: %v, want prohibited", err)
			}
			ts.log.WaitFor(t, 5*time.Second, "tunnel refused", map[string]string{"reason": string(ReasonCertNoForwarding)})
		})
	}
}

func TestMaxTunnelsPerConn(t *testing.T) {
	ts := startServer(t, authLine(t, "alice_ed25519", ""), Config{Policy: loopbackPolicy(t), MaxTunnelsPerConn: 2})
	c := ts.mustDial(t, "root", testSigner(t, "alice_ed25519"))
	e := startEcho(t, false)
	var open []gossh.Channel
	for i := 0; i < 2; i++ {
		ch, err := openDirect(c, "127.0.0.1", uint32(e.port))
		if err != nil {
			t.Fatalf("tunnel %d: %v", i+1, err)
		}
		echoRoundTrip(t, ch, "x")
		open = append(open, ch)
	}
	_, err := openDirect(c, "127.0.0.1", uint32(e.port))
	var oce *gossh.OpenChannelError
	if !errors.As(err, &oce) || oce.Reason != gossh.ResourceShortage {
		t.Fatalf("third tunnel: %v, want ResourceShortage", err)
	}
	ts.log.WaitFor(t, 5*time.Second, "tunnel refused", map[string]string{"reason": "too many tunnels on this connection"})

	// Closing one frees its slot once the server has seen it end.
	open[0].Close()
	ts.log.WaitFor(t, 5*time.Second, "tunnel", map[string]string{})
	ch, err := openDirect(c, "127.0.0.1", uint32(e.port))
	if err != nil {
		t.Fatalf("tunnel after one closed: %v", err)
	}
	echoRoundTrip(t, ch, "y")
	ch.Close()
	open[1].Close()
}

// readBanner reads the server's version line, or returns the error.
func readBanner(conn net.Conn) (string, error) {
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	defer conn.SetReadDeadline(time.Time{})
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return line, err
	}
	return strings.TrimSpace(line), nil
}

func rawConn(t *testing.T, addr string, local string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 3 * time.Second}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestHandshakeDeadline(t *testing.T) {
	ts := startServer(t, authLine(t, "alice_ed25519", ""), Config{HandshakeTimeout: 300 * time.Millisecond, Policy: loopbackPolicy(t)})
	start := time.Now()
	conn := rawConn(t, ts.addr, "")
	banner, err := readBanner(conn)
	if err != nil || banner != "SSH-2.0-bastion" {
		t.Fatalf("banner %q, %v", banner, err)
	}
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err = io.Copy(io.Discard, conn)
	if err != nil {
		t.Fatalf("read: %v (want the server to close)", err)
	}
	if d := time.Since(start); d < 250*time.Millisecond || d > 2*time.Second {
		t.Errorf("closed after %v, want about 300ms", d)
	}
	ts.log.WaitFor(t, 5*time.Second, "connection closed", map[string]string{"reason": "handshake and authentication deadline exceeded"})

	// An authenticated connection outlives the deadline.
	c := ts.mustDial(t, "root", testSigner(t, "alice_ed25519"))
	time.Sleep(600 * time.Millisecond)
	e := startEcho(t, false)
	conn2, err := c.Dial("tcp", e.addr)
	if err != nil {
		t.Fatalf("tunnel after the deadline: %v", err)
	}
	defer conn2.Close()
	echoRoundTrip(t, conn2, "alive")
}

func TestMaxStartups(t *testing.T) {
	ts := startServer(t, authLine(t, "alice_ed25519", ""), Config{MaxStartups: hardLimit(3), MaxStartupsPerSource: hardLimit(10)})
	var conns []net.Conn
	for i := 0; i < 3; i++ {
		conn := rawConn(t, ts.addr, "")
		if _, err := readBanner(conn); err != nil {
			t.Fatalf("conn %d: %v", i, err)
		}
		conns = append(conns, conn)
	}
	extra := rawConn(t, ts.addr, "")
	if b, err := readBanner(extra); err == nil || b != "" {
		t.Fatalf("conn over MaxStartups got %q, %v; want closed without a banner", b, err)
	}
	ts.log.WaitFor(t, 5*time.Second, "connection refused", map[string]string{"reason": "too many unauthenticated connections"})

	// A freed slot is available again.
	conns[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn := rawConn(t, ts.addr, "")
		if _, err := readBanner(conn); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("slot never freed")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestMaxStartupsPerSource(t *testing.T) {
	ts := startServer(t, authLine(t, "alice_ed25519", ""), Config{MaxStartups: hardLimit(10), MaxStartupsPerSource: hardLimit(2), Policy: loopbackPolicy(t)})
	for i := 0; i < 2; i++ {
		if _, err := readBanner(rawConn(t, ts.addr, "127.0.0.1")); err != nil {
			t.Fatalf("conn %d: %v", i, err)
		}
	}
	if b, err := readBanner(rawConn(t, ts.addr, "127.0.0.1")); err == nil || b != "" {
		t.Fatalf("third conn from 127.0.0.1 got %q, %v; want closed without a banner", b, err)
	}
	ts.log.WaitFor(t, 5*time.Second, "connection refused", map[string]string{"reason": "too many unauthenticated connections from this source"})
	if b, err := readBanner(rawConn(t, ts.addr, "127.0.0.2")); err != nil || b != "SSH-2.0-bastion" {
		t.Fatalf("conn from 127.0.0.2: %q, %v; want a banner", b, err)
	}
}

func TestAuthenticatedConnsLeaveStartupCount(t *testing.T) {
	ts := startServer(t, authLine(t, "alice_ed25519", ""), Config{MaxStartups: hardLimit(1), MaxStartupsPerSource: hardLimit(1)})
	alice := testSigner(t, "alice_ed25519")
	ts.mustDial(t, "root", alice)
	ts.mustDial(t, "root", alice) // would be refused if the first still counted
	// A refused authentication frees its slot when the connection ends.
	if _, err := ts.dial("root", testSigner(t, "bob_ed25519")); err == nil {
		t.Fatal("bob authenticated")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := ts.dial("root", alice)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot never freed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freezeProxy relays TCP both ways until frozen; then it stops relaying.
type freezeProxy struct {
	addr   string
	frozen atomic.Bool
}

func startFreezeProxy(t *testing.T, target string) *freezeProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	p := &freezeProxy{addr: ln.Addr().String()}
	relay := func(dst, src net.Conn) {
		buf := make([]byte, 32*1024)
		for {
			n, err := src.Read(buf)
			for p.frozen.Load() {
				time.Sleep(10 * time.Millisecond)
				if n == 0 && err != nil {
					return
				}
			}
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			t.Cleanup(func() { c.Close(); up.Close() })
			go relay(up, c)
			go relay(c, up)
		}
	}()
	return p
}

func TestKeepaliveDropsSilentClient(t *testing.T) {
	ts := startServer(t, authLine(t, "alice_ed25519", ""), Config{KeepaliveInterval: 100 * time.Millisecond, KeepaliveCountMax: 2})
	p := startFreezeProxy(t, ts.addr)
	c, err := gossh.Dial("tcp", p.addr, ts.clientConfig("root", testSigner(t, "alice_ed25519")))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ts.log.WaitFor(t, 5*time.Second, "auth", map[string]string{"result": "accepted"})
	start := time.Now()
	p.frozen.Store(true)
	ts.log.WaitFor(t, 5*time.Second, "connection closed", map[string]string{"reason": "keepalive unanswered", "missed": "2"})
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("dropped after %v", d)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		ts.s.mu.Lock()
		n := len(ts.s.conns)
		ts.s.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still tracked", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestKeepaliveKeepsLiveClient(t *testing.T) {
	ts := startServer(t, authLine(t, "alice_ed25519", ""), Config{KeepaliveInterval: 100 * time.Millisecond, KeepaliveCountMax: 2, Policy: loopbackPolicy(t)})
	c := ts.mustDial(t, "root", testSigner(t, "alice_ed25519"))
	time.Sleep(1200 * time.Millisecond)
	if ts.log.Has("connection closed", nil) {
		t.Fatalf("live client dropped:\n%s", ts.log.String())
	}
	e := startEcho(t, false)
	conn, err := c.Dial("tcp", e.addr)
	if err != nil {
		t.Fatalf("tunnel after 1.2s: %v", err)
	}
	defer conn.Close()
	echoRoundTrip(t, conn, "still alive")
}

func TestShutdownDrain(t *testing.T) {
	ts := startServer(t, authLine(t, "alice_ed25519", ""), Config{Policy: loopbackPolicy(t), DrainTimeout: 700 * time.Millisecond})
	alice := testSigner(t, "alice_ed25519")
	e := startEcho(t, false)

	busy := ts.mustDial(t, "root", alice)
	tun, err := openDirect(busy, "127.0.0.1", uint32(e.port))
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	echoRoundTrip(t, tun, "before")
	idle := ts.mustDial(t, "root", alice)
	unauth := rawConn(t, ts.addr, "")
	if _, err := readBanner(unauth); err != nil {
		t.Fatal(err)
	}

	type result struct {
		sum DrainSummary
		err error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		sum, err := ts.s.Shutdown(context.Background())
		done <- result{sum, err}
	}()

	// Idle and unauthenticated connections close at once.
	idleDone := make(chan error, 1)
	go func() { idleDone <- idle.Wait() }()
	select {
	case <-idleDone:
	case <-time.After(300 * time.Millisecond):
		t.Fatal("idle authenticated connection not closed at the start of the drain")
	}
	unauth.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := io.Copy(io.Discard, unauth); err != nil {
		t.Fatalf("unauthenticated connection not closed: %v", err)
	}

	// New TCP connections are refused.
	if conn, err := net.DialTimeout("tcp", ts.addr, time.Second); err == nil {
		conn.Close()
		t.Error("new connection accepted during the drain")
	}

	// The open tunnel keeps working; a new one is refused.
	echoRoundTrip(t, tun, "during the grace")
	if _, err := openDirect(busy, "127.0.0.1", uint32(e.port)); err == nil {
		t.Error("new tunnel opened during the drain")
	} else {
		var oce *gossh.OpenChannelError
		if !errors.As(err, &oce) || oce.Reason != gossh.Prohibited {
			t.Errorf("new tunnel during the drain: %v", err)
		}
	}
	ts.log.WaitFor(t, 5*time.Second, "tunnel refused", map[string]string{"reason": "server shutting down"})

	// The grace runs out: the tunnel is cut.
	cut := make(chan struct{})
	go func() { io.Copy(io.Discard, tun); close(cut) }()
	select {
	case <-cut:
	case <-time.After(3 * time.Second):
		t.Fatal("tunnel not cut after DrainTimeout")
	}
	var res result
	select {
	case res = <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("Shutdown did not return")
	}
	if res.err != nil {
		t.Errorf("Shutdown: %v", res.err)
	}
	if res.sum.OpenAtStart != 1 || res.sum.Cut != 1 || res.sum.Drained != 0 {
		t.Errorf("summary %+v, want 1 open, 1 cut", res.sum)
	}
	if d := time.Since(start); res.sum.Duration < 700*time.Millisecond || res.sum.Duration > d {
		t.Errorf("summary duration %v (elapsed %v)", res.sum.Duration, d)
	}
	if err := <-ts.serve; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve returned %v, want ErrServerClosed", err)
	}
	ts.serve <- ErrServerClosed // for the cleanup
	ts.log.WaitFor(t, 5*time.Second, "tunnel", map[string]string{"close_reason": "shutdown grace ended", "bytes_up": "22", "bytes_down": "22"})
	ts.log.WaitFor(t, 5*time.Second, "sshd stopped", map[string]string{"open_at_start": "1", "cut": "1", "drained": "0"})
}

func TestShutdownTunnelEndsDuringGrace(t *testing.T) {
	ts := startServer(t, authLine(t, "alice_ed25519", ""), Config{Policy: loopbackPolicy(t), DrainTimeout: 5 * time.Second})
	e := startEcho(t, false)
	c := ts.mustDial(t, "root", testSigner(t, "alice_ed25519"))
	tun, err := openDirect(c, "127.0.0.1", uint32(e.port))
	if err != nil {
		t.Fatal(err)
	}
	echoRoundTrip(t, tun, "x")
	done := make(chan DrainSummary, 1)
	go func() {
		sum, err := ts.s.Shutdown(context.Background())
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		done <- sum
	}()
	// The tunnel ends once the drain has counted it open.
	ts.log.WaitFor(t, 5*time.Second, "sshd draining", map[string]string{"open_tunnels": "1"})
	tun.Close()
	select {
	case sum := <-done:
		if sum.OpenAtStart != 1 || sum.Drained != 1 || sum.Cut != 0 {
			t.Errorf("summary %+v, want 1 drained", sum)
		}
		if sum.Duration > 3*time.Second {
			t.Errorf("drain took %v", sum.Duration)
		}
	case <-time.After(4 * time.Second):
		t.Fatal("Shutdown waited for the grace although the tunnel ended")
	}
	// Its connection, left without tunnels, is closed.
	werr := make(chan error, 1)
	go func() { werr <- c.Wait() }()
	select {
	case <-werr:
	case <-time.After(3 * time.Second):
		t.Error("connection kept open after its last tunnel ended during the drain")
	}
}

func TestShutdownContextCutsDrain(t *testing.T) {
	ts := startServer(t, authLine(t, "alice_ed25519", ""), Config{Policy: loopbackPolicy(t), DrainTimeout: 10 * time.Second})
	e := startEcho(t, false)
	c := ts.mustDial(t, "root", testSigner(t, "alice_ed25519"))
	tun, err := openDirect(c, "127.0.0.1", uint32(e.port))
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	echoRoundTrip(t, tun, "x")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	sum, err := ts.s.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: %v, want DeadlineExceeded", err)
	}
	if sum.Cut != 1 {
		t.Errorf("summary %+v, want 1 cut", sum)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Shutdown took %v", d)
	}
	// A second Shutdown is a no-op.
	if sum2, err := ts.s.Shutdown(context.Background()); err != nil || sum2 != (DrainSummary{}) {
		t.Errorf("second Shutdown: %+v, %v", sum2, err)
	}
}

// hardLimit is a Startups without early drop: n admitted, then none.
func hardLimit(n int) Startups { return Startups{Begin: n, Rate: 100, Full: n} }
