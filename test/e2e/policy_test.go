package e2e

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/test/harness"
)

// dualEcho listens on 127.0.0.1 and [::1] on the same port.
func dualEcho(t *testing.T) int {
	t.Helper()
	for i := 0; i < 20; i++ {
		ln := harness.Serve(t, "tcp4", "127.0.0.1:0", harness.Echo)
		port := ln.Addr().(*net.TCPAddr).Port
		ln6, err := net.Listen("tcp6", fmt.Sprintf("[::1]:%d", port))
		if err != nil {
			ln.Close()
			continue
		}
		harness.ServeListener(t, ln6, harness.Echo)
		return port
	}
	t.Fatal("no port free on both 127.0.0.1 and ::1")
	return 0
}

func echoVia(t *testing.T, s *jumpSetup, dest string) result {
	t.Helper()
	return s.ssh(t, strings.NewReader("ping\n"), "-W", dest, "bastion")
}

func TestDefaultDenySpellings(t *testing.T) {
	t.Parallel()
	port := dualEcho(t)
	hosts := []string{"127.0.0.1 db.loopback.test"}
	closed := newJump(t, nil, "", harness.BastionOptions{Hosts: hosts})
	open := newJump(t, func(int) string { return "127.0.0.0/8,::1/128" }, "", harness.BastionOptions{Hosts: hosts})

	loopback := []string{
		"127.0.0.1", "127.1", "2130706433", "0x7f.1", "localhost", "[::1]", "[::ffff:127.0.0.1]", "db.loopback.test",
	}
	for _, h := range loopback {
		dest := fmt.Sprintf("%s:%d", h, port)
		t.Run("refused "+h, func(t *testing.T) {
			r := echoVia(t, closed, dest)
			if r.code == 0 || !strings.Contains(r.stderr, "administratively prohibited") {
				t.Fatalf("%s: code %d stdout %q stderr %q", dest, r.code, r.stdout, r.stderr)
			}
		})
		t.Run("opened "+h, func(t *testing.T) {
			r := echoVia(t, open, dest)
			if r.code != 0 || r.stdout != "ping\n" {
				t.Fatalf("%s: code %d stdout %q stderr %q", dest, r.code, r.stdout, r.stderr)
			}
		})
	}
	// These are never dialed by the tests (no traffic leaves loopback):
	// refused before any connection is attempted.
	for _, h := range []string{"0.0.0.0", "0", "169.254.169.254", "169.254.170.2", "169.254.170.23", "[fd00:ec2::254]", "[fe80::1]", "[::]"} {
		dest := fmt.Sprintf("%s:%d", h, port)
		t.Run("refused "+h, func(t *testing.T) {
			r := echoVia(t, open, dest)
			if r.code == 0 || !strings.Contains(r.stderr, "administratively prohibited") {
				t.Fatalf("%s: code %d stderr %q", dest, r.code, r.stderr)
			}
		})
	}
	refusals := closed.bastion.Log.Find("tunnel refused", map[string]string{"reason": "destination in the default deny list"})
	if len(refusals) < len(loopback) {
		t.Fatalf("want %d default-deny audit lines, got %d:\n%s", len(loopback), len(refusals), closed.bastion.Log.String())
	}
	for _, l := range refusals {
		if l["fingerprint"] == nil || l["requested"] == nil || l["client"] == nil {
			t.Fatalf("refusal line incomplete: %v", l)
		}
	}
}

func TestAllowListPorts(t *testing.T) {
	t.Parallel()
	a := harness.Serve(t, "tcp", "127.0.0.1:0", harness.Echo)
	b := harness.Serve(t, "tcp", "127.0.0.1:0", harness.Echo)
	pa, pb := a.Addr().(*net.TCPAddr).Port, b.Addr().(*net.TCPAddr).Port
	s := newJump(t, func(int) string { return fmt.Sprintf("127.0.0.1/32:%d", pa) }, "", harness.BastionOptions{})
	if r := echoVia(t, s, fmt.Sprintf("127.0.0.1:%d", pa)); r.code != 0 || r.stdout != "ping\n" {
		t.Fatalf("allowed port: %+v", r)
	}
	if r := echoVia(t, s, fmt.Sprintf("127.0.0.1:%d", pb)); r.code == 0 || !strings.Contains(r.stderr, "administratively prohibited") {
		t.Fatalf("other port: %+v", r)
	}
	// A range covering both.
	lo, hi := min(pa, pb), max(pa, pb)
	s2 := newJump(t, func(int) string { return fmt.Sprintf("127.0.0.1/32:%d-%d", lo, hi) }, "", harness.BastionOptions{})
	for _, p := range []int{pa, pb} {
		if r := echoVia(t, s2, fmt.Sprintf("127.0.0.1:%d", p)); r.code != 0 || r.stdout != "ping\n" {
			t.Fatalf("range port %d: %+v", p, r)
		}
	}
}

func TestAuthorizedKeysOptionsEndToEnd(t *testing.T) {
	t.Parallel()
	harness.RequireTools(t, "ssh-keygen")
	dir := t.TempDir()
	e1 := harness.Serve(t, "tcp", "127.0.0.1:0", harness.Echo)
	e2 := harness.Serve(t, "tcp", "127.0.0.1:0", harness.Echo)
	p1, p2 := e1.Addr().(*net.TCPAddr).Port, e2.Addr().(*net.TCPAddr).Port

	fromKey := harness.Keygen(t, dir, "from")
	openKey := harness.Keygen(t, dir, "permitopen")
	expKey := harness.Keygen(t, dir, "expired")
	noFwdKey := harness.Keygen(t, dir, "restricted")
	ca := harness.Keygen(t, dir, "ca")
	authorized := strings.Join([]string{
		`from="10.0.0.0/8,!127.0.0.1" ` + fromKey.Pub,
		fmt.Sprintf(`permitopen="127.0.0.1:%d" `, p1) + openKey.Pub,
		`expiry-time="20200101" ` + expKey.Pub,
		`restrict,command="/bin/false" ` + noFwdKey.Pub,
		`cert-authority,principals="ops,sre" ` + ca.Pub,
	}, "\n")

	s := &jumpSetup{dir: dir}
	s.bastion = harness.StartBastion(t, dir, harness.BastionOptions{Env: map[string]string{
		"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": harness.B64(authorized),
		"BASTION_ALLOW":                     "127.0.0.1/32",
	}})
	known := map[string]string{harness.KnownHostsPattern("127.0.0.1", s.bastion.Port): s.bastion.HostKey.Pub}
	with := func(key harness.Key, cert string) *jumpSetup {
		c := *s
		c.config = harness.ClientConfig(t, t.TempDir(), known,
			harness.Host{Alias: "bastion", HostName: "127.0.0.1", Port: s.bastion.Port, User: "root", Identity: key.Path, Cert: cert})
		return &c
	}
	ok := func(t *testing.T, j *jumpSetup, port int) {
		t.Helper()
		if r := echoVia(t, j, fmt.Sprintf("127.0.0.1:%d", port)); r.code != 0 || r.stdout != "ping\n" {
			t.Fatalf("want tunnel: %+v", r)
		}
	}
	denied := func(t *testing.T, j *jumpSetup, port int, want string) {
		t.Helper()
		r := echoVia(t, j, fmt.Sprintf("127.0.0.1:%d", port))
		if r.code == 0 || !strings.Contains(r.stderr, want) {
			t.Fatalf("want %q: %+v", want, r)
		}
	}
	authReason := func(t *testing.T, fp, reason string) {
		t.Helper()
		s.bastion.Log.WaitFor(t, 5*time.Second, "auth", map[string]string{"result": "refused", "reason": reason})
	}

	t.Run("from= excludes the client", func(t *testing.T) {
		denied(t, with(fromKey, ""), p1, "Permission denied")
		authReason(t, "", "client address not permitted by from=")
	})
	t.Run("permitopen", func(t *testing.T) {
		j := with(openKey, "")
		ok(t, j, p1)
		denied(t, j, p2, "administratively prohibited")
		s.bastion.Log.WaitFor(t, 5*time.Second, "tunnel refused", map[string]string{"reason": "destination not in the key's permitopen list"})
	})
	t.Run("expiry-time passed", func(t *testing.T) {
		denied(t, with(expKey, ""), p1, "Permission denied")
		authReason(t, "", "key expired (expiry-time)")
	})
	t.Run("restrict forbids forwarding", func(t *testing.T) {
		denied(t, with(noFwdKey, ""), p1, "administratively prohibited")
		s.bastion.Log.WaitFor(t, 5*time.Second, "tunnel refused", map[string]string{"reason": "key forbids port forwarding"})
	})
	t.Run("certificate with an allowed principal", func(t *testing.T) {
		k := harness.Keygen(t, t.TempDir(), "ops-user")
		cert := harness.SignCert(t, ca, k, "alice@example", "-n", "ops", "-V", "-5m:+1h", "-z", "42")
		ok(t, with(k, cert), p2)
		line := s.bastion.Log.WaitFor(t, 5*time.Second, "auth", map[string]string{"result": "accepted", "cert_id": "alice@example"})
		if fmt.Sprint(line["cert_serial"]) != "42" || line["ca_fingerprint"] == nil {
			t.Fatalf("cert audit fields: %v", line)
		}
	})
	t.Run("certificate with another principal", func(t *testing.T) {
		k := harness.Keygen(t, t.TempDir(), "dev-user")
		cert := harness.SignCert(t, ca, k, "bob@example", "-n", "dev")
		denied(t, with(k, cert), p1, "Permission denied")
		authReason(t, "", "no certificate principal is allowed for this login")
	})
	t.Run("expired certificate", func(t *testing.T) {
		k := harness.Keygen(t, t.TempDir(), "late-user")
		cert := harness.SignCert(t, ca, k, "carol@example", "-n", "ops", "-V", "-2h:-1h")
		denied(t, with(k, cert), p1, "Permission denied")
		s.bastion.Log.WaitFor(t, 5*time.Second, "auth", map[string]string{"result": "refused", "cert_id": "carol@example"})
	})
	t.Run("certificate without principals", func(t *testing.T) {
		k := harness.Keygen(t, t.TempDir(), "any-user")
		cert := harness.SignCert(t, ca, k, "dave@example")
		denied(t, with(k, cert), p1, "Permission denied")
		authReason(t, "", "certificate has no principals")
	})
	t.Run("certificate without permit-port-forwarding", func(t *testing.T) {
		k := harness.Keygen(t, t.TempDir(), "nofwd-user")
		cert := harness.SignCert(t, ca, k, "erin@example", "-n", "ops", "-O", "clear")
		denied(t, with(k, cert), p1, "administratively prohibited")
		s.bastion.Log.WaitFor(t, 5*time.Second, "tunnel refused", map[string]string{"reason": "certificate lacks permit-port-forwarding"})
	})
	t.Run("certificate source-address excludes the client", func(t *testing.T) {
		k := harness.Keygen(t, t.TempDir(), "src-user")
		cert := harness.SignCert(t, ca, k, "frank@example", "-n", "ops", "-O", "source-address=10.1.0.0/16")
		denied(t, with(k, cert), p1, "Permission denied")
		authReason(t, "", "client address not permitted by the certificate's source-address")
	})
}

// TestSSHAudit runs Debian's ssh-audit against the server: no failures.
func TestSSHAudit(t *testing.T) {
	t.Parallel()
	harness.RequireTools(t, "ssh-audit")
	s := newJump(t, nil, "", harness.BastionOptions{})
	r := run(t, nil, 60*time.Second, "ssh-audit", "-n", "-p", fmt.Sprint(s.bastion.Port), "127.0.0.1")
	t.Logf("ssh-audit exit %d\n%s", r.code, r.stdout)
	var fails, warns []string
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.Contains(line, "[fail]"):
			fails = append(fails, line)
		case strings.Contains(line, "[warn]"):
			warns = append(warns, line)
		}
	}
	if len(fails) > 0 || r.code == 3 || !strings.Contains(r.stdout, "mlkem768x25519-sha256") && !strings.Contains(r.stdout, "curve25519-sha256") {
		t.Fatalf("ssh-audit: %d failures:\n%s", len(fails), strings.Join(fails, "\n"))
	}
	t.Logf("ssh-audit: 0 failures, %d warnings: %s", len(warns), strings.Join(warns, "; "))
}
