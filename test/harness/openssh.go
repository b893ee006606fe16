package harness

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Key is an OpenSSH key pair made by ssh-keygen.
type Key struct {
	Path string // private key file
	Pub  string // public key line, trimmed
}

// PEM returns the private key file's content.
func (k Key) PEM(t testing.TB) string {
	b, err := os.ReadFile(k.Path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// B64 is base64 of s, as the Secrets Manager values are stored.
func B64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// Keygen makes a key with ssh-keygen (type ed25519 unless args say else).
func Keygen(t testing.TB, dir, name string, args ...string) Key {
	t.Helper()
	path := filepath.Join(dir, name)
	if len(args) == 0 {
		args = []string{"-t", "ed25519"}
	}
	cmd := exec.Command("ssh-keygen", append([]string{"-q", "-N", "", "-C", name, "-f", path}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen %v: %v\n%s", args, err, out)
	}
	pub, err := os.ReadFile(path + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	return Key{Path: path, Pub: strings.TrimSpace(string(pub))}
}

// SignCert signs key's public half with ca: ssh-keygen -s ca -I id [args].
// It returns the certificate file path (next to the key, as ssh expects).
func SignCert(t testing.TB, ca, key Key, id string, args ...string) string {
	t.Helper()
	cmd := exec.Command("ssh-keygen", append([]string{"-q", "-s", ca.Path, "-I", id}, append(args, key.Path+".pub")...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen -s %v: %v\n%s", args, err, out)
	}
	return key.Path + "-cert.pub"
}

// Target is an OpenSSH sshd on loopback, started with its own config.
type Target struct {
	Port    int
	HostKey Key
	Proc    *Proc
}

// StartTarget runs /usr/sbin/sshd -D on 127.0.0.1 with its own host key and
// config, letting authorized log in as root with keys only.
func StartTarget(t testing.TB, dir string, authorized ...string) *Target {
	t.Helper()
	RequireRoot(t)
	RequireTools(t, "/usr/sbin/sshd", "ssh-keygen")
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	tdir := filepath.Join(dir, "target")
	os.MkdirAll(tdir, 0o700)
	hk := Keygen(t, tdir, "target_host_ed25519")
	ak := filepath.Join(tdir, "authorized_keys")
	if err := os.WriteFile(ak, []byte(strings.Join(authorized, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The port is picked before sshd binds it, so a parallel test can take
	// it in between: sshd then exits, and another port is tried.
	for attempt := 1; ; attempt++ {
		port := FreePort(t)
		cfg := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
AuthorizedKeysFile %s
PidFile none
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
Subsystem sftp internal-sftp
LogLevel VERBOSE
`, port, hk.Path, ak)
		cfgPath := filepath.Join(tdir, "sshd_config")
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		p := Start(t, exec.Command("/usr/sbin/sshd", "-D", "-e", "-f", cfgPath))
		if WaitSSHDListening(t, p, port) {
			return &Target{Port: port, HostKey: hk, Proc: p}
		}
		if attempt == 5 || !strings.Contains(p.Log.String(), "Address already in use") {
			t.Fatalf("sshd target exited:\n%s", p.Log.String())
		}
	}
}

// WaitSSHDListening waits (10 s at most) for sshd's "Server listening" line
// for 127.0.0.1:port; it returns false if sshd exits first.
func WaitSSHDListening(t testing.TB, p *Proc, port int) bool {
	t.Helper()
	listening := fmt.Sprintf("Server listening on 127.0.0.1 port %d.", port)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(p.Log.String(), listening) {
		select {
		case <-p.Done():
			return false
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshd target not listening after 10 s:\n%s", p.Log.String())
		}
	}
	return true
}

// Host is one Host block of a client ssh_config.
type Host struct {
	Alias, HostName string
	Port            int
	User            string
	Identity        string // private key path
	Cert            string // optional certificate path
	BindAddress     string
}

// ClientConfig writes an ssh_config and a known_hosts pinning each host's
// key (StrictHostKeyChecking yes), so -J, scp and rsync see the same
// settings as the jump process they spawn.
func ClientConfig(t testing.TB, dir string, known map[string]string, hosts ...Host) string {
	t.Helper()
	kh := filepath.Join(dir, "known_hosts")
	var khLines []string
	for pattern, key := range known {
		khLines = append(khLines, pattern+" "+key)
	}
	if err := os.WriteFile(kh, []byte(strings.Join(khLines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, h := range hosts {
		fmt.Fprintf(&b, "Host %s\n  HostName %s\n  Port %d\n  User %s\n  IdentityFile %s\n  IdentitiesOnly yes\n",
			h.Alias, h.HostName, h.Port, h.User, h.Identity)
		if h.Cert != "" {
			fmt.Fprintf(&b, "  CertificateFile %s\n", h.Cert)
		}
		if h.BindAddress != "" {
			fmt.Fprintf(&b, "  BindAddress %s\n", h.BindAddress)
		}
	}
	fmt.Fprintf(&b, "Host *\n  UserKnownHostsFile %s\n  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  BatchMode yes\n  ConnectTimeout 10\n  LogLevel INFO\n  ControlMaster no\n", kh)
	path := filepath.Join(dir, "ssh_config")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// KnownHostsPattern is how known_hosts names host:port.
func KnownHostsPattern(host string, port int) string {
	if port == 22 {
		return host
	}
	return fmt.Sprintf("[%s]:%d", host, port)
}

// Serve runs handle for each connection on a loopback listener until the
// test ends.
func Serve(t testing.TB, network, addr string, handle func(net.Conn)) net.Listener {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	ServeListener(t, ln, handle)
	return ln
}

// ServeListener runs handle for each connection on ln until the test ends.
func ServeListener(t testing.TB, ln net.Listener, handle func(net.Conn)) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

// Echo copies input back until EOF, then half-closes.
func Echo(c net.Conn) {
	io.Copy(c, c)
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}

// HashAtEOF reads until EOF and only then answers with the hex SHA-256 of
// what it read: it proves a client's EOF crossed the tunnel and the reply
// still came back on the half-closed connection.
func HashAtEOF(c net.Conn) {
	h := sha256.New()
	io.Copy(h, c)
	fmt.Fprintf(c, "%s\n", hex.EncodeToString(h.Sum(nil)))
}

// FileSHA256 hashes a file.
func FileSHA256(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// RandomFile writes n random bytes.
func RandomFile(t testing.TB, path string, n int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := os.Open("/dev/urandom")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := io.CopyN(f, r, n); err != nil {
		t.Fatal(err)
	}
}
