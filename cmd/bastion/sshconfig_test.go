package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/bastion-dev/bastion/test/fakessm"
)

// buildBastion builds the real binary, as users run it.
func buildBastion(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "bastion")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

type sshConfigRun struct {
	code           int
	stdout, stderr string
}

// runSSHConfig runs "bastion ssh-config args" against api with the SDK's
// standard endpoint override and static credentials, in a clean
// environment (no ~/.aws of the machine).
func runSSHConfig(t *testing.T, bin string, api *fakessm.Server, env map[string]string, args ...string) sshConfigRun {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(bin, append([]string{"ssh-config"}, args...)...)
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + home,
		"AWS_REGION=" + fakessm.DefaultRegion,
		"AWS_ACCESS_KEY_ID=" + fakessm.DefaultAccessKeyID,
		"AWS_SECRET_ACCESS_KEY=" + fakessm.DefaultSecretAccessKey,
		"AWS_ENDPOINT_URL_SSM=" + api.URL(),
		"AWS_EC2_METADATA_DISABLED=true",
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return sshConfigRun{code, out.String(), errb.String()}
}

// seed adds a managed instance; online says whether it pinged just now or
// 20 minutes ago (ConnectionLost with the default 10-minute window).
func seed(api *fakessm.Server, id, name string, online bool, registered time.Time, tags ...fakessm.Tag) fakessm.Instance {
	ping := time.Now()
	if !online {
		ping = ping.Add(-20 * time.Minute)
	}
	return api.AddInstance(fakessm.Instance{InstanceID: id, Name: name, LastPing: ping, RegistrationDate: registered,
		Tags: tags, IamRole: "bastion-ssm-agent", PlatformType: "Linux"})
}

func mi(n int) string { return fmt.Sprintf("mi-%017x", n) }

func TestSSHConfig(t *testing.T) {
	bin := buildBastion(t)
	api := fakessm.NewTest(t, fakessm.Options{})
	now := time.Now()
	team := fakessm.Tag{Key: "team", Value: "platform"}
	// One Online "bastion-prod" and a dead earlier task of the same name.
	seed(api, mi(0x100), "bastion-prod", true, now.Add(-time.Hour), team, fakessm.Tag{Key: "env", Value: "prod"})
	seed(api, mi(0x0ff), "bastion-prod", false, now.Add(-48*time.Hour), team, fakessm.Tag{Key: "env", Value: "prod"})
	// Two Online "bastion-dup".
	seed(api, mi(0x200), "bastion-dup", true, now.Add(-2*time.Hour))
	seed(api, mi(0x201), "bastion-dup", true, now.Add(-time.Hour))
	// 70 Online fillers sort before the last one, so it is on page 2 of 50.
	for i := 0; i < 70; i++ {
		seed(api, mi(0x1000+i), fmt.Sprintf("other-%d", i), true, now, fakessm.Tag{Key: "team", Value: "data"})
	}
	seed(api, mi(0xfffff), "bastion-last", true, now)

	t.Run("by name", func(t *testing.T) {
		r := runSSHConfig(t, bin, api, nil, "-name", "bastion-prod")
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		for _, want := range []string{
			"Host bastion\n",
			"  HostName " + mi(0x100) + "\n",
			"  User root\n",
			"  ProxyCommand aws ssm start-session --target %h --document-name AWS-StartSSHSession --parameters portNumber=%p --region us-east-1\n",
			"  HostKeyAlias bastion\n",
			"# Host db-*\n#   ProxyJump bastion\n",
		} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("output lacks %q:\n%s", want, r.stdout)
			}
		}
		if strings.Contains(r.stdout, mi(0x0ff)) {
			t.Errorf("ConnectionLost instance chosen:\n%s", r.stdout)
		}
		checkWithOpenSSH(t, r.stdout, "bastion", mi(0x100))
	})

	t.Run("zero matches", func(t *testing.T) {
		r := runSSHConfig(t, bin, api, nil, "-name", "no-such-bastion")
		if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, `no Online managed instance named "no-such-bastion" in us-east-1`) {
			t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
	})

	t.Run("only ConnectionLost", func(t *testing.T) {
		seed(api, mi(0x300), "bastion-dead", false, now)
		r := runSSHConfig(t, bin, api, nil, "-name", "bastion-dead")
		if r.code != 1 || !strings.Contains(r.stderr, "no Online managed instance") {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
	})

	t.Run("two matches", func(t *testing.T) {
		r := runSSHConfig(t, bin, api, nil, "-name", "bastion-dup")
		if r.code != 1 || r.stdout != "" {
			t.Fatalf("exit %d, stdout %q", r.code, r.stdout)
		}
		if !strings.Contains(r.stderr, "2 Online managed instances") || !strings.Contains(r.stderr, mi(0x200)) ||
			!strings.Contains(r.stderr, mi(0x201)) || !strings.Contains(r.stderr, "-first") {
			t.Fatalf("stderr does not list both: %q", r.stderr)
		}
		r = runSSHConfig(t, bin, api, nil, "-name", "bastion-dup", "-first", "-alias", "dup")
		if r.code != 0 || !strings.Contains(r.stdout, "HostName "+mi(0x201)+"\n") || !strings.Contains(r.stdout, "Host dup\n") {
			t.Fatalf("-first: want the newest registration %s: exit %d\n%s%s", mi(0x201), r.code, r.stdout, r.stderr)
		}
	})

	t.Run("pagination", func(t *testing.T) {
		before := api.Calls("DescribeInstanceInformation")
		r := runSSHConfig(t, bin, api, nil, "-name", "bastion-last")
		if r.code != 0 || !strings.Contains(r.stdout, "HostName "+mi(0xfffff)+"\n") {
			t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		if n := api.Calls("DescribeInstanceInformation") - before; n < 2 {
			t.Fatalf("%d DescribeInstanceInformation calls: the match is on page 2", n)
		}
	})

	t.Run("by tags", func(t *testing.T) {
		r := runSSHConfig(t, bin, api, nil, "-tag", "team=platform", "-tag", "env=prod", "-region", "us-east-1")
		if r.code != 0 || !strings.Contains(r.stdout, "HostName "+mi(0x100)+"\n") {
			t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		r = runSSHConfig(t, bin, api, nil, "-tag", "team=data")
		if r.code != 1 || !strings.Contains(r.stderr, "70 Online managed instances") {
			t.Fatalf("team=data: want 70 listed over two pages: exit %d %q", r.code, r.stderr[:min(len(r.stderr), 300)])
		}
		r = runSSHConfig(t, bin, api, nil, "-tag", "team=data", "-name", "other-69")
		if r.code != 0 || !strings.Contains(r.stdout, "HostName "+mi(0x1000+69)+"\n") {
			t.Fatalf("tag and name: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
	})

	t.Run("host key", func(t *testing.T) {
		pub, _, _ := ed25519.GenerateKey(rand.Reader)
		key, _ := gossh.NewPublicKey(pub)
		line := string(gossh.MarshalAuthorizedKey(key))
		wantKH := "#   " + knownhosts.Line([]string{"bastion"}, key) + "\n"

		// The Secrets Manager value, base64 of the line.
		r := runSSHConfig(t, bin, api, map[string]string{"SSH_PUBLIC_HOST_KEY_BASE64ENCODED": base64.StdEncoding.EncodeToString([]byte(line))}, "-name", "bastion-prod")
		if r.code != 0 || !strings.Contains(r.stdout, wantKH) || !strings.Contains(r.stdout, gossh.FingerprintSHA256(key)) {
			t.Fatalf("env key: exit %d, want %q in\n%s%s", r.code, wantKH, r.stdout, r.stderr)
		}
		checkWithOpenSSH(t, r.stdout, "bastion", mi(0x100))

		// A plain file.
		f := filepath.Join(t.TempDir(), "host.pub")
		os.WriteFile(f, []byte(line), 0o644)
		r = runSSHConfig(t, bin, api, nil, "-name", "bastion-prod", "-host-key", f)
		if r.code != 0 || !strings.Contains(r.stdout, wantKH) {
			t.Fatalf("-host-key: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}

		// Garbage is an error, not a silently missing pin.
		os.WriteFile(f, []byte("not a key"), 0o644)
		r = runSSHConfig(t, bin, api, nil, "-name", "bastion-prod", "-host-key", f)
		if r.code != 1 || !strings.Contains(r.stderr, "not a public host key") {
			t.Fatalf("bad key: exit %d %q", r.code, r.stderr)
		}
	})

	t.Run("api errors", func(t *testing.T) {
		api.Inject("DescribeInstanceInformation", fakessm.Fault{Code: "AccessDeniedException", Message: "not authorized", Count: 1})
		r := runSSHConfig(t, bin, api, nil, "-name", "bastion-prod")
		if r.code != 1 || !strings.Contains(r.stderr, "ssm:DescribeInstanceInformation") {
			t.Fatalf("exit %d %q", r.code, r.stderr)
		}
	})

	t.Run("usage", func(t *testing.T) {
		for _, args := range [][]string{{}, {"-tag", "novalue"}, {"-name", "x", "extra"}, {"-name", "x", "-alias", "a b"}} {
			if r := runSSHConfig(t, bin, api, nil, args...); r.code != 2 {
				t.Errorf("%v: exit %d, want 2 (%s)", args, r.code, r.stderr)
			}
		}
		r := runSSHConfig(t, bin, api, map[string]string{"AWS_REGION": ""}, "-name", "x")
		if r.code != 2 || !strings.Contains(r.stderr, "region") {
			t.Errorf("no region: exit %d %q", r.code, r.stderr)
		}
	})
}

// checkWithOpenSSH lets ssh -G parse the block (and, if present, the
// known_hosts line uncommented) and checks what it resolves.
func checkWithOpenSSH(t *testing.T, config, alias, id string) {
	t.Helper()
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Fatalf("ssh (OpenSSH client) not found: %v", err)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config")
	os.WriteFile(cfg, []byte(config+"Host db-1\n  ProxyJump "+alias+"\n"), 0o600)
	out, err := exec.Command("ssh", "-G", "-F", cfg, alias).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh -G rejects the config: %v\n%s\n%s", err, out, config)
	}
	for _, want := range []string{"hostname " + id, "user root", "hostkeyalias " + alias,
		"proxycommand aws ssm start-session --target %h --document-name AWS-StartSSHSession --parameters portNumber=%p --region us-east-1"} {
		if !strings.Contains(string(out), want+"\n") {
			t.Errorf("ssh -G lacks %q:\n%s", want, out)
		}
	}
	for _, l := range strings.Split(config, "\n") {
		if rest, ok := strings.CutPrefix(l, "#   "+alias+" "); ok {
			if _, _, _, _, _, err := gossh.ParseKnownHosts([]byte(alias + " " + rest)); err != nil {
				t.Errorf("known_hosts line does not parse: %v", err)
			}
		}
	}
}

// TestSSHConfigHostKey: every form of the host key value the entrypoint
// takes, and a known_hosts line, gives the same public key.
func TestSSHConfigHostKey(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	key := signer.PublicKey()
	line := string(gossh.MarshalAuthorizedKey(key))
	block, err := gossh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	pemText := string(pem.EncodeToMemory(block))
	wrapped := base64.StdEncoding.EncodeToString([]byte(line))
	wrapped = wrapped[:20] + "\n" + wrapped[20:] + "\n"
	for _, tc := range []struct {
		name, value string
		ok          bool
	}{
		{"authorized_keys line", line, true},
		{"line with a comment and blank lines", "\n# host key\n" + strings.TrimSpace(line) + " bastion@example\n", true},
		{"known_hosts line", knownhosts.Line([]string{"bastion"}, key), true},
		{"base64, wrapped", wrapped, true},
		{"base64 URL-safe unpadded", base64.RawURLEncoding.EncodeToString([]byte(line)), true},
		{"private key", pemText, true},
		{"private key base64", base64.StdEncoding.EncodeToString([]byte(pemText)), true},
		{"garbage", "not a key", false},
		{"base64 of garbage", base64.StdEncoding.EncodeToString([]byte("not a key")), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("SSH_PUBLIC_HOST_KEY_BASE64ENCODED", tc.value)
			got, source, err := sshConfigHostKey("")
			if !tc.ok {
				if err == nil || strings.Contains(err.Error(), tc.value) {
					t.Fatalf("sshConfigHostKey = %v, %v; want an error without the value", got, err)
				}
				return
			}
			if err != nil || got == nil || !bytes.Equal(got.Marshal(), key.Marshal()) || source != "SSH_PUBLIC_HOST_KEY_BASE64ENCODED" {
				t.Fatalf("sshConfigHostKey = %v, %q, %v; want %s", got, source, err, gossh.FingerprintSHA256(key))
			}
		})
	}
}
