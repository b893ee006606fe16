package e2e

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-dev/bastion/internal/sktest"
	"github.com/bastion-dev/bastion/test/harness"
)

// goDial connects to a running bastion with x/crypto's client, pinning its
// host key: for what the OpenSSH client cannot do (a security key that
// leaves out the touch, a 100 KB certificate id).
func goDial(t *testing.T, b *harness.Bastion, user string, signers ...gossh.Signer) (*gossh.Client, error) {
	t.Helper()
	host, _, _, _, err := gossh.ParseAuthorizedKey([]byte(b.HostKey.Pub))
	if err != nil {
		t.Fatal(err)
	}
	c, err := gossh.Dial("tcp", b.Addr, &gossh.ClientConfig{
		User:            user,
		Auth:            []gossh.AuthMethod{gossh.PublicKeys(signers...)},
		HostKeyCallback: gossh.FixedHostKey(host),
		Timeout:         10 * time.Second,
	})
	if c != nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// badConfigExit runs the binary with env and returns its exit code and the
// error field of its one log line.
func badConfigExit(t *testing.T, env map[string]string) (int, string) {
	t.Helper()
	bin, _ := harness.Build(t)
	cmd := exec.Command(bin)
	cmd.Env = harness.BaseEnv(env)
	code, lines := runToExit(t, cmd) // a bastion that accepted the configuration runs on: killed after 30 s
	return code, strings.Join(lines, "\n")
}

// TestVerifyRequiredFailsClosed: x/crypto does not report the security
// key's user-verification flag, so a verify-required line stops the start
// instead of accepting touch-only signatures.
func TestVerifyRequiredFailsClosed(t *testing.T) {
	t.Parallel()
	sk, err := sktest.New(sktest.UserPresence)
	if err != nil {
		t.Fatal(err)
	}
	code, out := badConfigExit(t, map[string]string{
		"BASTION_SSH_ADDR":                  "127.0.0.1:0",
		"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": harness.B64("# team\nverify-required " + sk.AuthorizedKey() + " pin-key\n"),
	})
	if code != 78 || !strings.Contains(out, "ROOT_PUBLIC_SSH_KEY_BASE64ENCODED line 2") || !strings.Contains(out, `option \"verify-required\" cannot be enforced`) {
		t.Fatalf("exit %d, output:\n%s", code, out)
	}
}

// TestFromWithHostBitsRefused: from="127.0.0.1/8" is invalid to sshd; it
// stops the start naming the line instead of meaning 127.0.0.0/8.
func TestFromWithHostBitsRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	user := harness.Keygen(t, dir, "user")
	code, out := badConfigExit(t, map[string]string{
		"BASTION_SSH_ADDR":                  "127.0.0.1:0",
		"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": harness.B64(user.Pub + "\n" + `from="127.0.0.1/8" ` + user.Pub + "\n"),
	})
	if code != 78 || !strings.Contains(out, "ROOT_PUBLIC_SSH_KEY_BASE64ENCODED line 2") || !strings.Contains(out, "host bits set") {
		t.Fatalf("exit %d, output:\n%s", code, out)
	}
}

// TestSecurityKeyTouchEnforced drives the binary with software security
// keys: no touch is refused, a touch is accepted, no-touch-required waives.
func TestSecurityKeyTouchEnforced(t *testing.T) {
	t.Parallel()
	touched, _ := sktest.New(sktest.UserPresence)
	untouched, _ := sktest.New(0)
	waived, _ := sktest.New(0)
	dir := t.TempDir()
	authorized := touched.AuthorizedKey() + " touched\n" + untouched.AuthorizedKey() + " untouched\n" +
		"no-touch-required " + waived.AuthorizedKey() + " waived\n"
	b := harness.StartBastion(t, dir, harness.BastionOptions{Env: map[string]string{
		"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": harness.B64(authorized),
	}})
	if _, err := goDial(t, b, "root", touched); err != nil {
		t.Errorf("touched signature refused: %v", err)
	}
	if _, err := goDial(t, b, "root", untouched); err == nil {
		t.Errorf("signature without the touch flag accepted")
	}
	if _, err := goDial(t, b, "root", waived); err != nil {
		t.Errorf("no-touch-required key refused: %v", err)
	}
	b.Log.WaitFor(t, 10*time.Second, "auth", map[string]string{"result": "accepted", "fingerprint": gossh.FingerprintSHA256(waived.PublicKey())})
	accepted := b.Log.Find("auth", map[string]string{"result": "accepted"})
	for _, l := range accepted {
		if l["fingerprint"] == gossh.FingerprintSHA256(untouched.PublicKey()) {
			t.Errorf("untouched key logged as accepted: %v", l)
		}
	}
	if len(accepted) != 2 {
		t.Errorf("%d accepted auth lines, want 2:\n%s", len(accepted), b.Log.String())
	}
}

// TestSHA1CertificateRefused: a user certificate signed by its CA with
// ssh-rsa (SHA-1) is refused, as sshd refuses it; the same CA signing with
// rsa-sha2-512 works. Real OpenSSH client and ssh-keygen.
func TestSHA1CertificateRefused(t *testing.T) {
	t.Parallel()
	harness.RequireTools(t, "ssh", "ssh-keygen")
	dir := t.TempDir()
	ca := harness.Keygen(t, dir, "ca", "-t", "rsa", "-b", "3072")
	echo := harness.Serve(t, "tcp", "127.0.0.1:0", harness.Echo)
	eport := echo.Addr().(*net.TCPAddr).Port
	b := harness.StartBastion(t, dir, harness.BastionOptions{Env: map[string]string{
		"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": harness.B64("cert-authority " + ca.Pub + "\n"),
		"BASTION_ALLOW":                     fmt.Sprintf("127.0.0.1/32:%d", eport),
	}})
	for _, tc := range []struct {
		alg    string
		wantOK bool
	}{{"ssh-rsa", false}, {"rsa-sha2-512", true}} {
		t.Run(tc.alg, func(t *testing.T) {
			kdir := filepath.Join(dir, tc.alg)
			os.MkdirAll(kdir, 0o700)
			user := harness.Keygen(t, kdir, "user")
			cert := harness.SignCert(t, ca, user, "cert-"+tc.alg, "-n", "root", "-t", tc.alg)
			cfg := harness.ClientConfig(t, kdir, map[string]string{
				harness.KnownHostsPattern("127.0.0.1", b.Port): b.HostKey.Pub,
			}, harness.Host{Alias: "bastion", HostName: "127.0.0.1", Port: b.Port, User: "root", Identity: user.Path, Cert: cert})
			r := run(t, strings.NewReader("sha1?\n"), 30*time.Second, "ssh", "-F", cfg, "-W", fmt.Sprintf("127.0.0.1:%d", eport), "bastion")
			if tc.wantOK {
				if r.code != 0 || r.stdout != "sha1?\n" {
					t.Fatalf("rsa-sha2-512 certificate: %+v", r)
				}
				return
			}
			if r.code == 0 || !strings.Contains(r.stderr, "Permission denied") {
				t.Fatalf("ssh-rsa certificate was not refused: %+v", r)
			}
			b.Log.WaitFor(t, 10*time.Second, "auth", map[string]string{"cert_id": "cert-ssh-rsa", "result": "refused",
				"reason": `certificate signed with algorithm "ssh-rsa", which sshd refuses by default (CASignatureAlgorithms)`})
		})
	}
}

// TestUserChangeDisconnects: a client that authenticates as one user after
// trying another is disconnected, as sshd does ("Change of username or
// service not allowed"), so the auth and tunnel lines cannot disagree about
// who it was. libssh2 lets the name change between attempts.
func TestUserChangeDisconnects(t *testing.T) {
	t.Parallel()
	client := libssh2Client(t)
	dir := t.TempDir()
	user := harness.Keygen(t, dir, "user", "-t", "ecdsa", "-m", "PEM")
	echo := harness.Serve(t, "tcp", "127.0.0.1:0", harness.Echo)
	eport := echo.Addr().(*net.TCPAddr).Port
	b := harness.StartBastion(t, dir, harness.BastionOptions{Env: map[string]string{
		"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": harness.B64(user.Pub + "\n"),
		"BASTION_ALLOW":                     fmt.Sprintf("127.0.0.1/32:%d", eport),
	}})
	for _, tc := range []struct {
		noneUser string
		wantOK   bool
	}{{"alice", false}, {"root", true}} {
		r := run(t, nil, 30*time.Second, client, fmt.Sprint(b.Port), "root", user.Path, "127.0.0.1", fmt.Sprint(eport), "who-am-i", tc.noneUser)
		if ok := r.code == 0 && strings.Contains(r.stdout, "echo ok"); ok != tc.wantOK {
			t.Errorf("none as %s, then publickey as root: %+v (want ok=%v)", tc.noneUser, r, tc.wantOK)
		}
	}
	l := b.Log.WaitFor(t, 10*time.Second, "auth", map[string]string{"user": "root", "result": "refused"})
	if !strings.Contains(fmt.Sprint(l["reason"]), `change of user name not allowed (first "alice", then "root")`) {
		t.Errorf("refusal line: %v", l)
	}
	// Both connections' stories are complete once each has its closing
	// line and the one tunnel its line.
	b.Log.WaitFor(t, 10*time.Second, "tunnel", nil)
	waitUntil(t, "both connections' closing lines", 10*time.Second, func() bool {
		return len(b.Log.Find("connection closed", nil)) >= 2
	})
	if n := len(b.Log.Find("auth", map[string]string{"result": "accepted"})); n != 1 {
		t.Errorf("%d accepted auth lines, want 1 (the unchanged name):\n%s", n, b.Log.String())
	}
	if n := len(b.Log.Find("tunnel", nil)); n != 1 {
		t.Errorf("%d tunnels, want 1", n)
	}
}

// TestAuthLineNamesItsAttempt: a client offers an unauthorized ed25519
// key, then an RSA key with an ssh-rsa (SHA-1) signature, which x/crypto
// refuses before asking bastion; that second line must not carry the first
// key's fingerprint or reason. (The OpenSSH client skips a key the server's
// server-sig-algs rules out; x/crypto's client falls back and sends it.)
func TestAuthLineNamesItsAttempt(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	allowed := harness.Keygen(t, dir, "allowed")
	b := harness.StartBastion(t, dir, harness.BastionOptions{Env: map[string]string{
		"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": harness.B64(allowed.Pub + "\n"),
	}})
	_, strangerKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := gossh.NewSignerFromKey(strangerKey)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaSigner, err := gossh.NewSignerFromKey(rsaKey)
	if err != nil {
		t.Fatal(err)
	}
	sha1Only, err := gossh.NewSignerWithAlgorithms(rsaSigner.(gossh.AlgorithmSigner), []string{gossh.KeyAlgoRSA})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := goDial(t, b, "root", stranger, sha1Only); err == nil {
		t.Fatal("authenticated with keys that are not authorized")
	}
	b.Log.WaitFor(t, 10*time.Second, "auth", map[string]string{"fingerprint": gossh.FingerprintSHA256(stranger.PublicKey()), "reason": "key not authorized"})
	l := b.Log.WaitFor(t, 10*time.Second, "auth", map[string]string{"reason": `algorithm "ssh-rsa" not accepted`})
	for _, f := range []string{"fingerprint", "comment", "authorized_keys_line", "key_type"} {
		if v, ok := l[f]; ok {
			t.Errorf("the ssh-rsa attempt's line carries %s=%v of another attempt: %v", f, v, l)
		}
	}
}

func fingerprintOf(t *testing.T, pub string) string {
	t.Helper()
	k, _, _, _, err := gossh.ParseAuthorizedKey([]byte(pub))
	if err != nil {
		t.Fatal(err)
	}
	return gossh.FingerprintSHA256(k)
}

// TestLogVolumeBounded: fields a client chooses are capped (a 100 KB
// certificate id, a 10 KB user name) and a burst of refused connections is
// summarised with a count instead of one line each.
func TestLogVolumeBounded(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := harness.Keygen(t, dir, "ca")
	b := harness.StartBastion(t, dir, harness.BastionOptions{Env: map[string]string{
		"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": harness.B64("cert-authority " + ca.Pub + "\n"),
		"BASTION_MAX_STARTUPS_PER_SOURCE":   "2",
	}})
	_, selfKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	self, err := gossh.NewSignerFromKey(selfKey)
	if err != nil {
		t.Fatal(err)
	}
	cert := &gossh.Certificate{Key: self.PublicKey(), CertType: gossh.UserCert, KeyId: strings.Repeat("K", 100_000),
		ValidPrincipals: []string{"root"}, ValidBefore: gossh.CertTimeInfinity}
	if err := cert.SignCert(rand.Reader, self); err != nil {
		t.Fatal(err)
	}
	certSigner, err := gossh.NewCertSigner(cert, self)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := goDial(t, b, strings.Repeat("u", 10_000), certSigner); err == nil {
		t.Fatal("self-signed certificate accepted")
	}
	l := b.Log.WaitFor(t, 10*time.Second, "auth", map[string]string{"reason": "certificate signed by an unknown authority"})
	if id := fmt.Sprint(l["cert_id"]); len(id) > 300 {
		t.Errorf("cert_id logged with %d bytes", len(id))
	}
	if u := fmt.Sprint(l["user"]); len(u) > 300 {
		t.Errorf("user logged with %d bytes", len(u))
	}

	// 200 idle connections from one address against a per-source cap of 2.
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}}
	for i := 0; i < 200; i++ {
		c, err := d.Dial("tcp", b.Addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	sum := b.Log.WaitFor(t, 30*time.Second, "repeated lines suppressed", map[string]string{"suppressed_msg": "connection refused", "source": "127.0.0.3"})
	refusedLines := 0
	for _, l := range b.Log.Find("connection refused", nil) {
		if strings.HasPrefix(fmt.Sprint(l["client"]), "127.0.0.3:") {
			refusedLines++
		}
	}
	counted, _ := sum["count"].(float64)
	if refusedLines > 10 || refusedLines+int(counted) != 198 {
		t.Errorf("%d refusal lines and a summary of %v, want ≤ 10 lines and 198 in all", refusedLines, sum["count"])
	}
	for _, line := range strings.Split(b.Log.String(), "\n") {
		if len(line) > 4096 {
			t.Errorf("log line of %d bytes: %.100s…", len(line), line)
		}
	}
}

// TestOwnAddressesDenied: a sidecar bound to 0.0.0.0 in the task's network
// namespace answers on the task's own addresses; they are denied like
// loopback (an address added while running too), in every IPv6 spelling
// that embeds them, while a neighbour stays reachable.
func TestOwnAddressesDenied(t *testing.T) {
	t.Parallel()
	harness.RequireTools(t, "ssh", "unshare", "nsenter", "ip")
	bin, _ := harness.Build(t)
	dir := t.TempDir()
	client := harness.Keygen(t, dir, "client")
	hostKey := harness.Keygen(t, dir, "host")
	peer, link := peerNetns(t, "10.98.0.1/24", "10.98.0.2/24")
	cmd := exec.Command("unshare", "--net", "--fork", "--", "sh", "-c", "set -e; "+link+`exec "$0"`, bin)
	cmd.Env = harness.BaseEnv(map[string]string{
		"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED":  harness.B64(client.Pub + "\n"),
		"SSH_PRIVATE_HOST_KEY_BASE64ENCODED": harness.B64(hostKey.PEM(t)),
		"BASTION_SSH_ADDR":                   "127.0.0.1:2222",
	})
	p := harness.Start(t, cmd)
	p.Log.WaitFor(t, 30*time.Second, "bastion started", nil)
	pid := p.Cmd.Process.Pid

	neighbour := listenInNetnsPath(t, "/var/run/netns/"+peer, "10.98.0.2:0")
	harness.ServeListener(t, neighbour, harness.Echo)
	sidecar := listenInNetns(t, pid, "0.0.0.0:0")
	harness.ServeListener(t, sidecar, harness.Echo)
	sport := sidecar.Addr().(*net.TCPAddr).Port

	ssh := func(dest string) result {
		return run(t, strings.NewReader("to "+dest+"\n"), 30*time.Second, "nsenter", fmt.Sprintf("--net=/proc/%d/ns/net", pid), "--",
			"ssh", "-F", "none", "-i", client.Path, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
			"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
			"-p", "2222", "-W", dest, "root@127.0.0.1")
	}
	if r := ssh(neighbour.Addr().String()); r.code != 0 || r.stdout != "to "+neighbour.Addr().String()+"\n" {
		t.Fatalf("neighbour: %+v", r)
	}
	refused := func(dest string) {
		t.Helper()
		if r := ssh(dest); r.code == 0 || !strings.Contains(r.stderr, "administratively prohibited") {
			t.Errorf("%s: %+v, want administratively prohibited", dest, r)
		}
	}
	for _, dest := range []string{
		fmt.Sprintf("10.98.0.1:%d", sport),
		fmt.Sprintf("[64:ff9b::a62:1]:%d", sport),  // NAT64 spelling of 10.98.0.1
		fmt.Sprintf("[2002:a62:1::1]:%d", sport),   // 6to4
		fmt.Sprintf("[::10.98.0.1]:%d", sport),     // IPv4-compatible
		fmt.Sprintf("[64:ff9b::7f00:1]:%d", sport), // NAT64 loopback
	} {
		refused(dest)
	}
	p.Log.WaitFor(t, 10*time.Second, "tunnel refused", map[string]string{"requested": fmt.Sprintf("10.98.0.1:%d", sport), "reason": "destination is an address of this host"})

	// An address added while running is denied once the kernel reports it.
	if out, err := exec.Command("nsenter", fmt.Sprintf("--net=/proc/%d/ns/net", pid), "--", "ip", "addr", "add", "10.98.0.9/24", "dev", "veth0").CombinedOutput(); err != nil {
		t.Fatalf("ip addr add: %v %s", err, out)
	}
	waitUntil(t, "a log of the new local address", 10*time.Second, func() bool {
		return strings.Contains(p.Log.String(), `"10.98.0.9"`)
	})
	refused(fmt.Sprintf("10.98.0.9:%d", sport))
}

// TestSecretsNotInProcEnviron: the kernel keeps the environment a process
// was exec'd with in /proc/<pid>/environ, readable by any root process of
// the container (an SSM shell); the bastion re-executes itself so that its
// own copy holds neither the host private key nor the authorized keys. As
// PID 1 of a PID namespace and as a plain process.
func TestSecretsNotInProcEnviron(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	user := harness.Keygen(t, dir, "user")
	for _, ns := range []bool{true, false} {
		t.Run(fmt.Sprintf("namespaced=%v", ns), func(t *testing.T) {
			b := harness.StartBastion(t, dir, harness.BastionOptions{Namespaced: ns, Env: map[string]string{
				"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": harness.B64(user.Pub + "\n"),
			}})
			environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", b.Pid))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(environ), "BASTION_SSH_ADDR=") {
				t.Fatalf("read the wrong process's environ: %q", environ)
			}
			for _, secret := range []string{
				"SSH_PRIVATE_HOST_KEY_BASE64ENCODED", "SSH_PUBLIC_HOST_KEY_BASE64ENCODED", "ROOT_PUBLIC_SSH_KEY_BASE64ENCODED",
				harness.B64(b.HostKey.PEM(t)), harness.B64(user.Pub + "\n"),
			} {
				if strings.Contains(string(environ), secret) {
					t.Errorf("/proc/%d/environ holds %.40s…", b.Pid, secret)
				}
			}
			// And the secrets still took effect.
			if _, err := goDial(t, b, "root", mustSigner(t, user)); err != nil {
				t.Errorf("authorized key refused after the re-exec: %v", err)
			}
		})
	}
}

func mustSigner(t *testing.T, k harness.Key) gossh.Signer {
	t.Helper()
	b, err := os.ReadFile(k.Path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := gossh.ParsePrivateKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestHealthcheckNotFooled: `bastion healthcheck` proves it is talking to
// this bastion by its host key: another SSH server on the configured
// address (an OpenSSH sshd here) is unhealthy.
func TestHealthcheckNotFooled(t *testing.T) {
	t.Parallel()
	harness.RequireTools(t, "nsenter", "ssh-keygen")
	dir := t.TempDir()
	user := harness.Keygen(t, dir, "user")
	b := harness.StartBastion(t, dir, harness.BastionOptions{Namespaced: true, Env: map[string]string{
		"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": harness.B64(user.Pub + "\n"),
		"BASTION_LOG_LEVEL":                 "debug", // to see the healthcheck's connections close
	}})
	other := harness.StartTarget(t, dir, user.Pub)
	bin, _ := harness.Build(t)
	check := func(addr string) (int, string) {
		cmd := exec.Command("nsenter", "-t", fmt.Sprint(b.Pid), "-m", "-p", "--", bin, "healthcheck")
		cmd.Env = harness.BaseEnv(map[string]string{"BASTION_SSH_ADDR": addr})
		out, _ := cmd.CombinedOutput()
		return cmd.ProcessState.ExitCode(), string(out)
	}
	if code, out := check(b.Addr); code != 0 {
		t.Fatalf("healthcheck of the bastion: exit %d: %s", code, out)
	}
	code, out := check(fmt.Sprintf("127.0.0.1:%d", other.Port))
	if code != 1 || !strings.Contains(out, "not this bastion") {
		t.Fatalf("healthcheck of another sshd on the address: exit %d: %s", code, out)
	}
	// The healthcheck is recognised: its connections are not audit noise.
	b.Log.WaitFor(t, 10*time.Second, "connection closed", map[string]string{"level": "DEBUG"})
	for _, l := range b.Log.Find("connection closed", nil) {
		if l["level"] == "INFO" {
			t.Errorf("a healthcheck connection logged at info: %v", l)
		}
	}
}
