package e2e

import (
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/test/harness"
)

// libssh2Client compiles test/clients/libssh2_echo.c once per test run:
// libssh2 is a C library, so its client is a few lines of C (gcc and
// libssh2-1-dev, which .ci/run installs).
func libssh2Client(t *testing.T) string {
	t.Helper()
	harness.RequireTools(t, "gcc")
	return harness.BuildTool(t, "libssh2_echo", func(out string) *exec.Cmd {
		return exec.Command("gcc", "-O1", "-o", out, filepath.Join("test", "clients", "libssh2_echo.c"), "-lssh2")
	})
}

// clientKey is one user key in the formats the clients read.
type clientKey struct {
	name     string
	openssh  harness.Key // OpenSSH private key (PEM for ECDSA and RSA, which older libraries need)
	dropbear string      // dropbearconvert output
	putty    string      // puttygen .ppk
}

func makeClientKeys(t *testing.T, dir string) []clientKey {
	t.Helper()
	var keys []clientKey
	for _, spec := range []struct {
		name string
		args []string
	}{
		{"ed25519", []string{"-t", "ed25519"}},
		{"ecdsa", []string{"-t", "ecdsa", "-m", "PEM"}},
		{"rsa3072", []string{"-t", "rsa", "-b", "3072", "-m", "PEM"}},
	} {
		k := clientKey{name: spec.name, openssh: harness.Keygen(t, dir, spec.name, spec.args...)}
		k.dropbear = k.openssh.Path + ".dropbear"
		if out, err := exec.Command("dropbearconvert", "openssh", "dropbear", k.openssh.Path, k.dropbear).CombinedOutput(); err != nil {
			t.Fatalf("dropbearconvert %s: %v\n%s", spec.name, err, out)
		}
		k.putty = k.openssh.Path + ".ppk"
		if out, err := exec.Command("puttygen", k.openssh.Path, "-o", k.putty, "-O", "private").CombinedOutput(); err != nil {
			t.Fatalf("puttygen %s: %v\n%s", spec.name, err, out)
		}
		keys = append(keys, k)
	}
	return keys
}

const pythonClients = `
import asyncio, socket, sys, warnings
warnings.filterwarnings("ignore")
client, port, key, dport, msg = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5].encode()
if client == "paramiko":
    import paramiko
    t = paramiko.Transport(socket.create_connection(("127.0.0.1", port), timeout=10))
    t.start_client(timeout=10)
    pkey = None
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            pkey = cls.from_private_key_file(key)
            break
        except Exception:
            pass
    t.auth_publickey("root", pkey)
    ch = t.open_channel("direct-tcpip", ("127.0.0.1", dport), ("127.0.0.1", 1))
    ch.sendall(msg)
    got = b""
    while len(got) < len(msg):
        got += ch.recv(len(msg) - len(got))
    print("cipher", t.remote_cipher, "echo", got.decode())
else:
    import asyncssh
    async def main():
        async with asyncssh.connect("127.0.0.1", port, username="root", client_keys=[key], known_hosts=None) as conn:
            r, w = await conn.open_connection("127.0.0.1", dport)
            w.write(msg)
            got = await r.readexactly(len(msg))
            print("cipher", conn.get_extra_info("send_cipher"), "echo", got.decode())
    asyncio.run(main())
`

// TestClientMatrix: the SSH clients people use reach a tunnel through the
// bastion with default settings and ed25519, ECDSA and RSA-3072 keys: the
// OpenSSH client (which must keep negotiating AES-GCM), PuTTY's plink,
// asyncssh and Go's x/crypto (AES-GCM), and Dropbear, paramiko 2.x and
// libssh2 1.10, which get the wider offer their identification earns.
// libssh2 1.10 signs with RSA only as ssh-rsa (SHA-1), which stays refused.
func TestClientMatrix(t *testing.T) {
	t.Parallel()
	harness.RequireTools(t, "ssh", "ssh-keygen", "plink", "puttygen", "dbclient", "dropbearconvert")
	py := "/usr/bin/python3"
	if out, err := exec.Command(py, "-c", "import paramiko, asyncssh").CombinedOutput(); err != nil {
		t.Fatalf("python3-paramiko and python3-asyncssh are needed (.ci/run installs them): %v %s", err, out)
	}
	libssh2 := libssh2Client(t)
	dir := t.TempDir()
	keys := makeClientKeys(t, dir)
	var authorized strings.Builder
	for _, k := range keys {
		authorized.WriteString(k.openssh.Pub + "\n")
	}
	echo := harness.Serve(t, "tcp", "127.0.0.1:0", harness.Echo)
	eport := echo.Addr().(*net.TCPAddr).Port
	b := harness.StartBastion(t, dir, harness.BastionOptions{Env: map[string]string{
		"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": harness.B64(authorized.String()),
		"BASTION_ALLOW":                     fmt.Sprintf("127.0.0.1/32:%d", eport),
	}})
	hostFP := fingerprintOf(t, b.HostKey.Pub)
	dest := fmt.Sprintf("127.0.0.1:%d", eport)
	port := fmt.Sprint(b.Port)
	known := harness.ClientConfig(t, dir, map[string]string{harness.KnownHostsPattern("127.0.0.1", b.Port): b.HostKey.Pub})

	type client struct {
		name string
		run  func(k clientKey, msg string) result
		// cipher, when set, must appear in the client's output: the
		// algorithm it negotiated.
		cipher string
		// refuses lists key types the client cannot use here.
		refuses map[string]bool
	}
	clients := []client{
		{name: "openssh", cipher: "-gcm@openssh.com", run: func(k clientKey, msg string) result {
			return run(t, strings.NewReader(msg), 30*time.Second, "ssh", "-v", "-F", known, "-i", k.openssh.Path, "-o", "IdentitiesOnly=yes",
				"-p", port, "-W", dest, "root@127.0.0.1")
		}},
		{name: "plink", run: func(k clientKey, msg string) result {
			return run(t, strings.NewReader(msg), 30*time.Second, "plink", "-batch", "-ssh", "-P", port, "-i", k.putty,
				"-hostkey", hostFP, "-nc", dest, "root@127.0.0.1")
		}},
		{name: "asyncssh", cipher: "-gcm@openssh.com", run: func(k clientKey, msg string) result {
			return run(t, nil, 30*time.Second, py, "-c", pythonClients, "asyncssh", port, k.openssh.Path, fmt.Sprint(eport), msg)
		}},
		{name: "dropbear", run: func(k clientKey, msg string) result {
			return run(t, strings.NewReader(msg), 30*time.Second, "dbclient", "-y", "-i", k.dropbear, "-p", port, "-B", dest, "root@127.0.0.1")
		}},
		{name: "paramiko", cipher: "aes128-ctr", run: func(k clientKey, msg string) result {
			return run(t, nil, 30*time.Second, py, "-c", pythonClients, "paramiko", port, k.openssh.Path, fmt.Sprint(eport), msg)
		}},
		{name: "libssh2", cipher: "aes128-ctr", refuses: map[string]bool{"rsa3072": true}, run: func(k clientKey, msg string) result {
			return run(t, nil, 30*time.Second, libssh2, port, "root", k.openssh.Path, "127.0.0.1", fmt.Sprint(eport), msg)
		}},
		{name: "go", run: func(k clientKey, msg string) result {
			c, err := goDial(t, b, "root", mustSigner(t, k.openssh))
			if err != nil {
				return result{stderr: err.Error(), code: 1}
			}
			ch, err := c.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", eport))
			if err != nil {
				return result{stderr: err.Error(), code: 1}
			}
			defer ch.Close()
			if _, err := ch.Write([]byte(msg)); err != nil {
				return result{stderr: err.Error(), code: 1}
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(ch, got); err != nil {
				return result{stderr: err.Error(), code: 1}
			}
			return result{stdout: string(got)}
		}},
	}
	for _, c := range clients {
		for _, k := range keys {
			t.Run(c.name+"/"+k.name, func(t *testing.T) {
				msg := fmt.Sprintf("%s-%s-through-the-bastion\n", c.name, k.name)
				sha1Refused := map[string]string{"reason": `algorithm "ssh-rsa" not accepted`}
				before := len(b.Log.Find("auth", sha1Refused)) // the bastion is shared: this client's own line counts
				r := c.run(k, msg)
				if c.refuses[k.name] {
					if strings.Contains(r.stdout, msg) {
						t.Fatalf("%s with %s got through: %+v", c.name, k.name, r)
					}
					waitUntil(t, "this client's ssh-rsa refusal", 10*time.Second, func() bool {
						return len(b.Log.Find("auth", sha1Refused)) > before
					})
					return
				}
				if r.code != 0 || !strings.Contains(r.stdout, strings.TrimSpace(msg)) {
					t.Fatalf("%s with %s: %+v", c.name, k.name, r)
				}
				if c.cipher != "" && !strings.Contains(r.stdout+r.stderr, c.cipher) {
					t.Errorf("%s with %s negotiated another cipher than %s:\n%s%s", c.name, k.name, c.cipher, r.stdout, r.stderr)
				}
			})
		}
	}
}

// TestHandshakeFailureSaysWhy: a client with nothing in common leaves a
// warning naming it, its identification and the list that failed.
func TestHandshakeFailureSaysWhy(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	user := harness.Keygen(t, dir, "user")
	b := harness.StartBastion(t, dir, harness.BastionOptions{Env: map[string]string{
		"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": harness.B64(user.Pub + "\n"),
	}})
	r := run(t, nil, 30*time.Second, "ssh", "-F", "none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
		"-o", "UserKnownHostsFile=/dev/null", "-o", "Ciphers=aes128-cbc", "-p", fmt.Sprint(b.Port), "-W", "127.0.0.1:9", "root@127.0.0.1")
	if r.code == 0 {
		t.Fatalf("a cbc-only client connected: %+v", r)
	}
	l := b.Log.WaitFor(t, 10*time.Second, "handshake failed", nil)
	if l["level"] != "WARN" || !strings.HasPrefix(fmt.Sprint(l["client_ident"]), "SSH-2.0-OpenSSH_") ||
		!strings.Contains(fmt.Sprint(l["error"]), "no common algorithm for client to server cipher") {
		t.Errorf("handshake failure line: %v", l)
	}
}
