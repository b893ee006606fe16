package sshd

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

func TestParseStartups(t *testing.T) {
	tests := []struct {
		in   string
		want Startups
		err  string
	}{
		{in: "10:30:100", want: Startups{10, 30, 100}},
		{in: "16", want: Startups{16, 100, 16}},
		{in: " 24:30:48 ", want: Startups{24, 30, 48}},
		{in: "0:100:1", want: Startups{0, 100, 1}},
		{in: "", err: "want start:rate:full"},
		{in: "10:30", err: "want start:rate:full"},
		{in: "a:b:c", err: "want start:rate:full"},
		{in: "-1", err: "want start:rate:full"},
		{in: "0", err: "full must be at least 1"},
		{in: "50:30:10", err: "start must not exceed full"},
		{in: "10:0:100", err: "rate must be 1-100"},
		{in: "10:101:100", err: "rate must be 1-100"},
	}
	for _, tt := range tests {
		got, err := ParseStartups(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseStartups(%q) = %v, %v; want error %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseStartups(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

// TestStartupsRefuse: never below begin, always at full, and in between a
// share that grows from rate% to 100% (sshd's should_drop_startup).
func TestStartupsRefuse(t *testing.T) {
	l := Startups{Begin: 10, Rate: 30, Full: 50}
	for n := 0; n < 10; n++ {
		if l.refuse(n) {
			t.Fatalf("refused at %d, below begin", n)
		}
	}
	for n := 50; n < 60; n++ {
		if !l.refuse(n) {
			t.Fatalf("admitted at %d, at or past full", n)
		}
	}
	share := func(n int) float64 {
		refused := 0
		for i := 0; i < 20000; i++ {
			if l.refuse(n) {
				refused++
			}
		}
		return float64(refused) / 20000
	}
	if s := share(10); s < 0.26 || s > 0.34 {
		t.Errorf("refused %.2f at begin, want about 0.30", s)
	}
	if s := share(30); s < 0.60 || s > 0.70 {
		t.Errorf("refused %.2f halfway, want about 0.65", s)
	}
}

// fakePeers names connections by their source address, as the /proc lookup
// would name them by the process that dialed.
type fakePeers struct {
	mu         sync.Mutex
	sessions   map[netip.Addr]string
	health     map[netip.Addr]bool
	principals map[string]string
}

func (f *fakePeers) Identify(remote, _ netip.AddrPort) Peer {
	f.mu.Lock()
	defer f.mu.Unlock()
	return Peer{SSMSessionID: f.sessions[remote.Addr()], HealthCheck: f.health[remote.Addr()]}
}

func (f *fakePeers) Principal(id string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.principals[id]
}

func dialFrom(t *testing.T, ts *testServer, src, user string, signer gossh.Signer) (*gossh.Client, error) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	raw, err := d.Dial("tcp", ts.addr)
	if err != nil {
		return nil, err
	}
	c, chans, reqs, err := gossh.NewClientConn(raw, ts.addr, ts.clientConfig(user, signer))
	if err != nil {
		raw.Close()
		return nil, err
	}
	client := gossh.NewClient(c, chans, reqs)
	t.Cleanup(func() { client.Close() })
	return client, nil
}

// TestSessionIdentityOnEveryLine: a connection from an SSM session worker
// carries conn, ssm_session_id and principal on its auth, tunnel open,
// tunnel, tunnel refused and closing lines; another connection carries only
// its own conn.
func TestSessionIdentityOnEveryLine(t *testing.T) {
	const arn = "arn:aws:sts::123456789012:assumed-role/Ops/alice"
	peers := &fakePeers{
		sessions:   map[netip.Addr]string{netip.MustParseAddr("127.0.0.2"): "alice-0a1b2c3d4e5f6a7b8"},
		principals: map[string]string{"alice-0a1b2c3d4e5f6a7b8": arn},
	}
	echo := startEcho(t, false)
	ts := startServer(t, authLine(t, "alice_ed25519", ""), Config{Peers: peers, Policy: loopbackPolicy(t)})
	alice := testSigner(t, "alice_ed25519")
	c, err := dialFrom(t, ts, "127.0.0.2", "root", alice)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := openDirect(c, "127.0.0.1", uint32(echo.port))
	if err != nil {
		t.Fatal(err)
	}
	echoRoundTrip(t, ch, "who")
	ch.Close()
	if _, err := openDirect(c, "10.255.255.1", 22); err == nil {
		t.Fatal("tunnel outside BASTION_ALLOW opened")
	}
	c.Close()
	want := map[string]string{"ssm_session_id": "alice-0a1b2c3d4e5f6a7b8", "principal": arn}
	var conn any
	for _, msg := range []string{"auth", "tunnel open", "tunnel", "tunnel refused", "connection closed"} {
		r := ts.log.WaitFor(t, 5*time.Second, msg, want)
		if conn == nil {
			conn = r["conn"]
		}
		if r["conn"] != conn || len(fmt.Sprint(conn)) != 16 {
			t.Errorf("%s line: conn %v, want %v on every line", msg, r["conn"], conn)
		}
	}

	// A plain connection: its own conn, no session fields.
	c2, err := dialFrom(t, ts, "127.0.0.3", "root", alice)
	if err != nil {
		t.Fatal(err)
	}
	c2.Close()
	for _, r := range ts.log.Records() {
		if r["msg"] == "auth" && r["ssm_session_id"] == nil {
			if r["conn"] == conn || r["conn"] == nil || r["principal"] != nil {
				t.Errorf("plain connection's auth line: %v", r)
			}
			return
		}
	}
	t.Errorf("no auth line for the plain connection:\n%s", ts.log.String())
}

// TestStartupsPerSession: 40 idle unauthenticated connections from one SSM
// session and 40 from a plain loopback address leave room for another
// session and for the healthcheck, whose slots are its own even when the
// total is full.
func TestStartupsPerSession(t *testing.T) {
	peers := &fakePeers{
		sessions: map[netip.Addr]string{
			netip.MustParseAddr("127.0.0.2"): "flood-0000000000000000a",
			netip.MustParseAddr("127.0.0.3"): "bob-0000000000000000b",
		},
		health: map[netip.Addr]bool{netip.MustParseAddr("127.0.0.5"): true},
	}
	ts := startServer(t, authLine(t, "alice_ed25519", ""), Config{Peers: peers})
	hold := func(src string, n int) (held int) {
		for i := 0; i < n; i++ {
			if b, err := readBanner(rawConn(t, ts.addr, src)); err == nil && b == "SSH-2.0-bastion" {
				held++
			}
		}
		return held
	}
	session := hold("127.0.0.2", 40)
	plain := hold("127.0.0.4", 40)
	if session < 24 || session > 40 || plain < 24 || plain > 40 {
		t.Fatalf("held %d from the session and %d from the address, want 24..40 each (early drop past 24)", session, plain)
	}
	alice := testSigner(t, "alice_ed25519")
	if _, err := dialFrom(t, ts, "127.0.0.3", "root", alice); err != nil {
		t.Fatalf("another session during the flood: %v", err)
	}
	// Fill the total, then the healthcheck still gets in.
	full := ts.s.cfg.MaxStartups.Full
	for src := 6; ts.s.unauthCount() < full && src < 60; src++ {
		hold(fmt.Sprintf("127.0.0.%d", src), 30)
	}
	if n := ts.s.unauthCount(); n < full-10 {
		t.Fatalf("could not fill the total: %d", n)
	}
	for i := 0; i < maxHealthChecks; i++ {
		if b, err := readBanner(rawConn(t, ts.addr, "127.0.0.5")); err != nil || b != "SSH-2.0-bastion" {
			t.Fatalf("healthcheck %d during the flood: %q %v", i, b, err)
		}
	}
	if b, _ := readBanner(rawConn(t, ts.addr, "127.0.0.5")); b != "" {
		t.Fatalf("healthcheck slots unbounded")
	}
	ts.log.WaitFor(t, 5*time.Second, "connection refused", map[string]string{"reason": "too many health checks at once"})
	ts.log.WaitFor(t, 5*time.Second, "connection refused", map[string]string{"source": "ssm-session flood-0000000000000000a", "ssm_session_id": "flood-0000000000000000a"})
}

// sessionSequence names each new connection by the next session id, all
// from one address, as every SSM session's worker dials from 127.0.0.1.
type sessionSequence struct {
	mu  sync.Mutex
	ids []string
}

func (q *sessionSequence) Identify(netip.AddrPort, netip.AddrPort) Peer {
	q.mu.Lock()
	defer q.mu.Unlock()
	id := q.ids[0]
	if len(q.ids) > 1 {
		q.ids = q.ids[1:]
	}
	return Peer{SSMSessionID: id}
}

func (q *sessionSequence) Principal(string) string { return "" }

// TestRefusalSummaryPerSession: refused attempts are summarised per SSM
// session, like the pre-auth limits: one session past the burst does not
// silence another's refused auth lines, though both come from 127.0.0.1.
func TestRefusalSummaryPerSession(t *testing.T) {
	const noisy, quiet = "noisy-0000000000000000a", "quiet-0000000000000000b"
	q := &sessionSequence{}
	for i := 0; i <= refusalBurst; i++ {
		q.ids = append(q.ids, noisy)
	}
	q.ids = append(q.ids, quiet)
	ts := startServer(t, authLine(t, "alice_ed25519", ""), Config{Peers: q})
	stranger := testSigner(t, "bob_ed25519")
	for i := 0; i <= refusalBurst+1; i++ {
		if _, err := ts.dial("root", stranger); err == nil {
			t.Fatal("a stranger's key authenticated")
		}
	}
	refused := map[string]string{"method": "publickey", "result": "refused", "ssm_session_id": noisy}
	if n := len(ts.log.Find("auth", refused)); n != refusalBurst {
		t.Fatalf("%d refused auth lines from the noisy session, want the burst of %d\n%s", n, refusalBurst, ts.log.String())
	}
	ts.log.WaitFor(t, 5*time.Second, "auth", map[string]string{"method": "publickey", "result": "refused", "ssm_session_id": quiet})
}

// unauthCount is the number of unauthenticated connections, health checks
// aside.
func (s *Server) unauthCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unauth
}
