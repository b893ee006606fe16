package main

import (
	"bufio"
	"bytes"
	"debug/macho"
	"debug/pe"
	"encoding/base64"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// TestHelpEverywhere: -h, -help and --help on every command exit 0, print
// that command's usage on stdout, write nothing on stderr and do nothing
// else (keygen makes no key, ssh-config asks no API, healthcheck dials
// nothing).
func TestHelpEverywhere(t *testing.T) {
	// Anything that dials the SSH address or the SSM endpoint lands here.
	var dials atomic.Int32
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			dials.Add(1)
			c.Close()
		}
	}()
	t.Setenv("BASTION_SSH_ADDR", ln.Addr().String())
	t.Setenv("AWS_ENDPOINT_URL_SSM", "http://"+ln.Addr().String())
	t.Setenv("AWS_REGION", "us-east-1")

	tests := []struct {
		args []string
		want string // start of stdout
	}{
		{[]string{"--help"}, "usage: bastion [command]"},
		{[]string{"-h"}, "usage: bastion [command]"},
		{[]string{"help"}, "usage: bastion [command]"},
		{[]string{"keygen", "--help"}, "usage: bastion keygen [HOST]"},
		{[]string{"keygen", "-h"}, "usage: bastion keygen [HOST]"},
		{[]string{"keygen", "myhost", "-help"}, "usage: bastion keygen [HOST]"},
		{[]string{"ssh-config", "--help"}, "usage: bastion ssh-config"},
		{[]string{"ssh-config", "-h"}, "usage: bastion ssh-config"},
		{[]string{"ssh-config", "-name", "x", "--help"}, "usage: bastion ssh-config"},
		{[]string{"healthcheck", "--help"}, "usage: bastion healthcheck"},
		{[]string{"healthcheck", "-h"}, "usage: bastion healthcheck"},
	}
	for _, tt := range tests {
		var out, errb bytes.Buffer
		code := dispatch(&out, &errb, tt.args)
		if code != 0 || !strings.HasPrefix(out.String(), tt.want) || errb.Len() != 0 {
			t.Errorf("bastion %s: exit %d, stdout %.60q, stderr %q; want 0 and %q", strings.Join(tt.args, " "), code, out.String(), errb.String(), tt.want)
		}
		if strings.Contains(out.String(), "SSH_PRIVATE_HOST_KEY_BASE64ENCODED=") {
			t.Errorf("bastion %s printed a key", strings.Join(tt.args, " "))
		}
	}
	if !strings.Contains(func() string {
		var out bytes.Buffer
		dispatch(&out, &out, []string{"--help"})
		return out.String()
	}(), "BASTION_LOG_FORMAT") {
		t.Error("bastion --help does not list the variables")
	}
	// Connections are accepted in order: once a last one of our own is
	// counted, every earlier one is.
	last, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	last.Close()
	deadline := time.Now().Add(5 * time.Second)
	for dials.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := dials.Load() - 1; n != 0 {
		t.Errorf("%d connections while printing help", n)
	}
}

// keygenOutput is what keygen printed: its variables, comment lines and
// anything else.
type keygenOutput struct {
	vars     map[string]string
	comments []string
	other    []string
}

func parseKeygen(t *testing.T, s string) keygenOutput {
	t.Helper()
	o := keygenOutput{vars: map[string]string{}}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "#"):
			o.comments = append(o.comments, line)
		case strings.Contains(line, "="):
			k, v, _ := strings.Cut(line, "=")
			o.vars[k] = v
		default:
			o.other = append(o.other, line)
		}
	}
	return o
}

func TestKeygenArgs(t *testing.T) {
	for _, host := range []string{"", "db-bastion"} {
		var out, errb bytes.Buffer
		args := []string{"keygen"}
		if host != "" {
			args = append(args, host)
		}
		if code := dispatch(&out, &errb, args); code != 0 || errb.Len() != 0 {
			t.Fatalf("bastion %v: exit %d, stderr %q", args, code, errb.String())
		}
		o := parseKeygen(t, out.String())
		// An environment file: only comments and NAME=value lines, so that
		// docker run --env-file and "set -a; . FILE" take it as it is.
		if len(o.other) != 0 || len(o.vars) != 2 {
			t.Fatalf("keygen output is not an environment file of two variables:\n%s", out.String())
		}
		priv, err := base64.StdEncoding.DecodeString(o.vars["SSH_PRIVATE_HOST_KEY_BASE64ENCODED"])
		if err != nil {
			t.Fatal(err)
		}
		signer, err := gossh.ParsePrivateKey(priv)
		if err != nil {
			t.Fatalf("private key: %v", err)
		}
		pubText, _ := base64.StdEncoding.DecodeString(o.vars["SSH_PUBLIC_HOST_KEY_BASE64ENCODED"])
		pub, _, _, _, err := gossh.ParseAuthorizedKey(pubText)
		if err != nil || !bytes.Equal(pub.Marshal(), signer.PublicKey().Marshal()) {
			t.Fatalf("public key %q does not match the private key (%v)", pubText, err)
		}
		name := host
		if name == "" {
			name = "bastion"
		}
		wantKH := "# " + name + " " + strings.TrimSpace(string(gossh.MarshalAuthorizedKey(pub)))
		fp := gossh.FingerprintSHA256(pub)
		if !strings.Contains(strings.Join(o.comments, "\n"), fp) || o.comments[len(o.comments)-1] != wantKH {
			t.Errorf("comments %q: want the fingerprint %s and the known_hosts line %q last", o.comments, fp, wantKH)
		}
	}

	for _, args := range [][]string{{"keygen", "-x"}, {"keygen", "a", "b"}, {"keygen", "two words"}, {"keygen", ""}} {
		var out, errb bytes.Buffer
		if code := dispatch(&out, &errb, args); code != exitUsage || out.Len() != 0 || !strings.Contains(errb.String(), "usage: bastion keygen") {
			t.Errorf("bastion %q: exit %d, stdout %q, stderr %q; want %d, nothing on stdout, the usage on stderr", args, code, out.String(), errb.String(), exitUsage)
		}
	}
}

func TestSSHConfigArgs(t *testing.T) {
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	for _, tt := range []struct {
		args []string
		want string
	}{
		{nil, "give -name NAME or -tag KEY=VALUE"},
		{[]string{"-name", "x"}, "no region"},
		{[]string{"-bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"-name", "x", "extra"}, `unexpected argument "extra"`},
		{[]string{"-tag", "novalue"}, "want key=value"},
	} {
		var out, errb bytes.Buffer
		code := dispatch(&out, &errb, append([]string{"ssh-config"}, tt.args...))
		if code != exitUsage || out.Len() != 0 || !strings.Contains(errb.String(), tt.want) {
			t.Errorf("ssh-config %q: exit %d, stdout %q, stderr %q; want %d and %q", tt.args, code, out.String(), errb.String(), exitUsage, tt.want)
		}
	}
}

func TestUnknownCommand(t *testing.T) {
	var out, errb bytes.Buffer
	if code := dispatch(&out, &errb, []string{"kegen"}); code != exitUsage || !strings.Contains(errb.String(), `unknown command "kegen"`) {
		t.Errorf("exit %d, stderr %q", code, errb.String())
	}
}

func TestOffLinuxMessage(t *testing.T) {
	msg := offLinuxMessage("darwin")
	for _, want := range []string{"needs Linux", "container", "darwin", "bastion keygen", "bastion ssh-config", "bastion --help"} {
		if !strings.Contains(msg, want) {
			t.Errorf("%q lacks %q", msg, want)
		}
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("%q is more than one line", msg)
	}
}

// TestCrossBuild: the laptop tools build for macOS (Intel and Apple
// silicon) and Windows, static, as an operator would build them; each
// binary is checked to be that system's executable format and machine.
func TestCrossBuild(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Fatalf("go not on PATH: %v", err)
	}
	dir := t.TempDir()
	for _, target := range []struct{ goos, goarch string }{
		{"darwin", "amd64"}, {"darwin", "arm64"}, {"windows", "amd64"},
	} {
		out := filepath.Join(dir, "bastion-"+target.goos+"-"+target.goarch)
		cmd := exec.Command("go", "build", "-o", out, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+target.goos, "GOARCH="+target.goarch, "GOFLAGS=")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("GOOS=%s GOARCH=%s go build ./cmd/bastion: %v\n%s", target.goos, target.goarch, err, b)
			continue
		}
		switch target.goos {
		case "darwin":
			f, err := macho.Open(out)
			if err != nil {
				t.Errorf("%s: not a Mach-O executable: %v", out, err)
				continue
			}
			want := map[string]macho.Cpu{"amd64": macho.CpuAmd64, "arm64": macho.CpuArm64}[target.goarch]
			if f.Cpu != want || f.Type != macho.TypeExec {
				t.Errorf("%s: Mach-O %v %v, want %v executable", out, f.Cpu, f.Type, want)
			}
			f.Close()
		case "windows":
			f, err := pe.Open(out)
			if err != nil {
				t.Errorf("%s: not a PE executable: %v", out, err)
				continue
			}
			if f.Machine != pe.IMAGE_FILE_MACHINE_AMD64 {
				t.Errorf("%s: PE machine %#x, want amd64", out, f.Machine)
			}
			f.Close()
		}
	}
}
