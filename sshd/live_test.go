package sshd

import (
	"io"
	"sync"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// TestRevocationEndsLiveConnections: when a new set leaves a key out, its
// connection (with an open tunnel) is closed with "key removed" on the
// tunnel and connection lines, and a new connection with it is refused;
// another key's connection keeps working and takes the new options.
func TestRevocationEndsLiveConnections(t *testing.T) {
	echo := startEcho(t, false)
	alice := testSigner(t, "alice_ed25519")
	bob := testSigner(t, "bob_ed25519")
	ts := startServer(t, authLine(t, "alice_ed25519", "")+authLine(t, "bob_ed25519", ""), Config{Policy: loopbackPolicy(t)})
	ca := ts.mustDial(t, "root", alice)
	cb := ts.mustDial(t, "root", bob)
	tunA, err := openDirect(ca, "127.0.0.1", uint32(echo.port))
	if err != nil {
		t.Fatal(err)
	}
	echoRoundTrip(t, tunA, "before")
	tunB, err := openDirect(cb, "127.0.0.1", uint32(echo.port))
	if err != nil {
		t.Fatal(err)
	}

	keys, err := ParseAuthorizedKeys([]byte(authLine(t, "bob_ed25519", "")))
	if err != nil {
		t.Fatal(err)
	}
	ts.s.SetAuthorizedKeys(keys)

	// alice's tunnel ends: a read sees EOF or an error.
	done := make(chan error, 1)
	go func() { _, err := io.ReadAll(tunA); done <- err }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("alice's tunnel still open 5 s after her key was removed")
	}
	fpA := gossh.FingerprintSHA256(alice.PublicKey())
	ts.log.WaitFor(t, 5*time.Second, "tunnel", map[string]string{"fingerprint": fpA, "close_reason": "key removed"})
	ts.log.WaitFor(t, 5*time.Second, "connection closed", map[string]string{"fingerprint": fpA, "reason": "key removed"})
	if _, err := ts.dial("root", alice); err == nil {
		t.Fatal("alice connected after her key was removed")
	}
	echoRoundTrip(t, tunB, "bob still here")

	// bob's line becomes restrict: his open tunnel stays, new ones are refused.
	keys, err = ParseAuthorizedKeys([]byte(authLine(t, "bob_ed25519", "restrict")))
	if err != nil {
		t.Fatal(err)
	}
	ts.s.SetAuthorizedKeys(keys)
	echoRoundTrip(t, tunB, "still open")
	if _, err := openDirect(cb, "127.0.0.1", uint32(echo.port)); err == nil {
		t.Fatal("bob opened a tunnel after his line became restrict")
	}
}

// gatedSigner holds its first signature until released, as a security key
// waits for its touch.
type gatedSigner struct {
	gossh.Signer
	signing chan struct{} // closed when the client starts signing
	release chan struct{}
	once    sync.Once
}

func (g *gatedSigner) Sign(rand io.Reader, data []byte) (*gossh.Signature, error) {
	g.once.Do(func() { close(g.signing) })
	<-g.release
	return g.Signer.Sign(rand, data)
}

// TestKeyRemovedWhileSigning: a key removed after the server said it would
// take it but before the client's signature arrived (a touch can take
// seconds) does not authenticate; the key that stays does.
func TestKeyRemovedWhileSigning(t *testing.T) {
	ts := startServer(t, authLine(t, "alice_ed25519", "")+authLine(t, "bob_ed25519", ""), Config{})
	alice := &gatedSigner{Signer: testSigner(t, "alice_ed25519"), signing: make(chan struct{}), release: make(chan struct{})}
	result := make(chan error, 1)
	go func() {
		c, err := ts.dial("root", alice)
		if err == nil {
			c.Close()
		}
		result <- err
	}()
	select {
	case <-alice.signing:
	case err := <-result:
		t.Fatalf("dial ended before signing: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the client never started signing")
	}
	keys, err := ParseAuthorizedKeys([]byte(authLine(t, "bob_ed25519", "")))
	if err != nil {
		t.Fatal(err)
	}
	ts.s.SetAuthorizedKeys(keys)
	close(alice.release)
	select {
	case err := <-result:
		if err == nil {
			t.Fatalf("alice authenticated with a key removed while she was signing\nlog:\n%s", ts.log.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("dial still running 10 s after the signature was released")
	}
	ts.log.WaitFor(t, 5*time.Second, "auth", map[string]string{
		"fingerprint": gossh.FingerprintSHA256(alice.PublicKey()), "result": "refused", "reason": errKeyNotAuthorized.Error()})
	ts.mustDial(t, "root", testSigner(t, "bob_ed25519"))
}

// settableClock is a Clock tests move forward.
type settableClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *settableClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *settableClock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

// TestExpiryWhileConnected: an expiry-time that passes, and a certificate
// whose validity ends, close the live connection.
func TestExpiryWhileConnected(t *testing.T) {
	alice := testSigner(t, "alice_ed25519")
	ca := testSigner(t, "ca_ed25519")
	clock := &settableClock{now: testNow}
	ts := startServer(t, authLine(t, "alice_ed25519", `expiry-time="20250601130000Z"`)+authLine(t, "ca_ed25519", "cert-authority"),
		Config{Clock: clock.Now})
	plain := ts.mustDial(t, "root", alice)
	certified := ts.mustDial(t, "root", certSigner(t, testSigner(t, "bob_ed25519"), ca)) // valid until testNow+1h

	clock.Set(testNow.Add(61 * time.Minute))
	ts.log.WaitFor(t, 5*time.Second, "connection closed", map[string]string{"fingerprint": gossh.FingerprintSHA256(alice.PublicKey()), "reason": "key expired"})
	ts.log.WaitFor(t, 5*time.Second, "connection closed", map[string]string{"reason": "certificate expired"})
	for _, c := range []*gossh.Client{plain, certified} {
		if err := c.Wait(); err == nil {
			t.Error("connection still open")
		}
	}
}

// TestIdleAndAgeLimits: a connection whose tunnel moves bytes outlives the
// idle timeout, one that moves none is closed; the age limit closes even a
// busy one.
func TestIdleAndAgeLimits(t *testing.T) {
	echo := startEcho(t, false)
	alice := testSigner(t, "alice_ed25519")
	t.Run("idle", func(t *testing.T) {
		ts := startServer(t, authLine(t, "alice_ed25519", ""), Config{Policy: loopbackPolicy(t), IdleTimeout: 1500 * time.Millisecond})
		busy := ts.mustDial(t, "root", alice)
		idle := ts.mustDial(t, "root", alice)
		busyTun, err := openDirect(busy, "127.0.0.1", uint32(echo.port))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := openDirect(idle, "127.0.0.1", uint32(echo.port)); err != nil {
			t.Fatal(err)
		}
		closed := make(chan error, 1)
		go func() { closed <- idle.Wait() }()
		// Keep the busy tunnel moving until the idle one is closed.
		for {
			echoRoundTrip(t, busyTun, "tick")
			select {
			case <-closed:
				ts.log.WaitFor(t, 5*time.Second, "connection closed", map[string]string{"reason": "idle timeout", "idle_timeout": "1.5s"})
				echoRoundTrip(t, busyTun, "the busy one lives on")
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	})
	t.Run("age", func(t *testing.T) {
		ts := startServer(t, authLine(t, "alice_ed25519", ""), Config{Policy: loopbackPolicy(t), MaxConnectionAge: time.Second})
		c := ts.mustDial(t, "root", alice)
		tun, err := openDirect(c, "127.0.0.1", uint32(echo.port))
		if err != nil {
			t.Fatal(err)
		}
		closed := make(chan error, 1)
		go func() { closed <- c.Wait() }()
		for {
			select {
			case <-closed:
				ts.log.WaitFor(t, 5*time.Second, "tunnel", map[string]string{"close_reason": "maximum connection age"})
				ts.log.WaitFor(t, 5*time.Second, "connection closed", map[string]string{"reason": "maximum connection age", "max_connection_age": "1s"})
				return
			case <-time.After(100 * time.Millisecond):
				tun.Write([]byte("busy"))
			}
		}
	})
}
