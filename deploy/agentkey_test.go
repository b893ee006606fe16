package deploy

import (
	"bytes"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/openpgp" //nolint:staticcheck // reading public keys only
)

const (
	agentKeyFile  = "amazon-ssm-agent.gpg"
	agentSignerID = "SSM Agent <ssm-agent-signer@amazon.com>"
)

// armoredBlocks returns each PGP public key block of text.
func armoredBlocks(text string) []string {
	var blocks []string
	for {
		i := strings.Index(text, "-----BEGIN PGP PUBLIC KEY BLOCK-----")
		if i < 0 {
			return blocks
		}
		const end = "-----END PGP PUBLIC KEY BLOCK-----"
		j := strings.Index(text[i:], end)
		if j < 0 {
			return append(blocks, text[i:])
		}
		blocks = append(blocks, text[i:i+j+len(end)]+"\n")
		text = text[i+j+len(end):]
	}
}

// dockerArgs returns the Dockerfile's ARG defaults, quotes removed.
func dockerArgs(t *testing.T) map[string]string {
	t.Helper()
	raw, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	args := map[string]string{}
	for _, line := range strings.Split(string(raw), "\n") {
		rest, ok := strings.CutPrefix(line, "ARG ")
		if !ok {
			continue
		}
		k, v, _ := strings.Cut(rest, "=")
		args[k] = strings.Trim(v, `"`)
	}
	return args
}

// TestAgentKeyFile: the key file holds exactly the keys whose full
// fingerprints the Dockerfile pins, each the SSM Agent's signing identity,
// and deploy/README.md names the same fingerprints.
func TestAgentKeyFile(t *testing.T) {
	raw, err := os.ReadFile(agentKeyFile)
	if err != nil {
		t.Fatalf("the agent's signing keys must be in the repository: %v", err)
	}
	var got []string
	for _, block := range armoredBlocks(string(raw)) {
		ring, err := openpgp.ReadArmoredKeyRing(strings.NewReader(block))
		if err != nil || len(ring) != 1 {
			t.Fatalf("%s: a block is not one public key (%v, %d keys)", agentKeyFile, err, len(ring))
		}
		e := ring[0]
		fpr := strings.ToUpper(hex.EncodeToString(e.PrimaryKey.Fingerprint[:]))
		if _, ok := e.Identities[agentSignerID]; !ok || len(e.Identities) != 1 {
			t.Errorf("key %s: identities %v, want only %q", fpr, keys(e.Identities), agentSignerID)
		}
		if bits, _ := e.PrimaryKey.BitLength(); bits < 4096 {
			t.Errorf("key %s: %d bits", fpr, bits)
		}
		got = append(got, fpr)
	}
	want := strings.Fields(dockerArgs(t)["SSM_AGENT_KEY_FPRS"])
	slices.Sort(got)
	slices.Sort(want)
	if len(want) == 0 || !slices.Equal(got, want) {
		t.Fatalf("%s holds %v, the Dockerfile pins SSM_AGENT_KEY_FPRS %v", agentKeyFile, got, want)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, fpr := range want {
		if !strings.Contains(string(readme), fpr) {
			t.Errorf("deploy/README.md does not name the key %s", fpr)
		}
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// agentInstallScript is the Dockerfile's RUN that downloads, verifies and
// installs the agent, as /bin/sh runs it.
func agentInstallScript(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var cur []string
	for _, line := range strings.Split(string(raw), "\n") {
		if len(cur) == 0 && !strings.HasPrefix(line, "RUN ") {
			continue
		}
		cur = append(cur, line)
		if strings.HasSuffix(line, "\\") {
			continue
		}
		script := strings.TrimPrefix(strings.Join(cur, "\n"), "RUN ")
		if strings.Contains(script, "rpm --checksig") {
			return script
		}
		cur = nil
	}
	t.Fatal("Dockerfile: no RUN with rpm --checksig")
	return ""
}

// stubs stand in for the network and rpm: curl writes a file, rpm logs what
// it is asked and answers --checksig and the signer query from the
// environment. gpg, awk, sort, tr and sha256sum are the real ones.
var stubs = map[string]string{
	"curl": `#!/bin/sh
out=; while [ $# -gt 0 ]; do case "$1" in -o) out=$2; shift;; https://*) echo "curl $1" >> "$STUB_LOG";; esac; shift; done
echo "not really an rpm" > "$out"`,
	"rpm": `#!/bin/sh
case "$1" in
--import) n=$(grep -c 'BEGIN PGP PUBLIC KEY BLOCK' "$2"); echo "rpm --import blocks=$n" >> "$STUB_LOG";;
--checksig) echo "$2: $STUB_CHECKSIG";;
-qp) printf '%s' "$STUB_SIGNER";;
-i) echo "rpm -i" >> "$STUB_LOG";;
*) echo "rpm: unexpected $*" >&2; exit 2;;
esac`,
	"amazon-ssm-agent": "#!/bin/sh\necho 'SSM Agent version: 3.3.4851.0'",
	"dnf":              "#!/bin/sh\nexit 0",
}

// installRun is how the step ended: its stderr, and its stdout followed
// by the stubs' log.
type installRun struct {
	code        int
	stderr, log string
}

// runAgentInstall runs the Dockerfile's agent step with keyFile as
// deploy/amazon-ssm-agent.gpg, in a mount namespace whose /tmp and /var
// are fresh tmpfs, as the build's container would have them.
func runAgentInstall(t *testing.T, keyFile []byte, checksig, signer string) installRun {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	os.Mkdir(bin, 0o755)
	for name, body := range stubs {
		if err := os.WriteFile(filepath.Join(bin, name), []byte(body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "key.gpg"), keyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "install.sh"), []byte(agentInstallScript(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	// The test's files move to /var/t before /tmp (where they are) is
	// covered; the step then finds the key where COPY puts it. The stub log
	// lives in the namespace's /var, so it is printed at the end.
	ns := `set -e
mount -t tmpfs tmpfs /var
mkdir -p -m 700 /var/t/home
cp -r "$0"/bin "$0"/install.sh "$0"/key.gpg /var/t/
mount -t tmpfs tmpfs /tmp
cp /var/t/key.gpg /tmp/amazon-ssm-agent.gpg
rc=0; /bin/sh -c "$(cat /var/t/install.sh)" || rc=$?
cat /var/t/stub.log 2>/dev/null || true
exit $rc`
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", ns, dir)
	env := []string{
		"PATH=/var/t/bin:" + os.Getenv("PATH"), "HOME=/var/t/home", "GNUPGHOME=/var/t/home",
		"STUB_LOG=/var/t/stub.log", "STUB_CHECKSIG=" + checksig, "STUB_SIGNER=" + signer,
	}
	// Docker gives RUN the ARGs as variables.
	for k, v := range dockerArgs(t) {
		if strings.HasPrefix(k, "SSM_AGENT_") || k == "TARGETARCH" {
			env = append(env, k+"="+v)
		}
	}
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return installRun{code: code, stderr: stderr.String(), log: string(out)}
}

// TestDockerfileVerifiesAgent runs the Dockerfile's agent step with real
// gpg and stand-ins for curl and rpm: it installs only with exactly the
// pinned keys, a verified signature and a pinned signer.
func TestDockerfileVerifiesAgent(t *testing.T) {
	requireRootTools(t, "unshare", "gpg", "awk", "sha256sum")
	keyFile, err := os.ReadFile(agentKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	blocks := armoredBlocks(string(keyFile))
	const ok = "digests signatures OK"
	signedBy := func(keyID string) string { return "RSA/SHA256, Sat Aug  1 10:00:00 2026, Key ID " + keyID }
	current := signedBy("2784dbf388d19d46")

	r := runAgentInstall(t, keyFile, ok, current)
	url := "curl https://s3.us-east-1.amazonaws.com/amazon-ssm-us-east-1/" + dockerArgs(t)["SSM_AGENT_VERSION"] + "/linux_amd64/amazon-ssm-agent.rpm"
	if r.code != 0 || !strings.Contains(r.log, url) || strings.Count(r.log, "rpm --import blocks=1") != len(blocks) || !strings.Contains(r.log, "rpm -i") {
		t.Fatalf("the pinned keys and a good signature: exit %d, want 0, %d single-key imports, the download and the install\nstderr:\n%s\nlog:\n%s", r.code, len(blocks), r.stderr, r.log)
	}
	if r := runAgentInstall(t, keyFile, ok, signedBy("51a8e050d0052e5d")); r.code != 0 {
		t.Fatalf("signed by the previous key: exit %d\n%s", r.code, r.stderr)
	}

	refused := []struct {
		name           string
		key            []byte
		checksig, sign string
		want           string
	}{
		{"a key missing", []byte(blocks[0]), ok, current, "deploy/amazon-ssm-agent.gpg holds the keys"},
		{"an extra key", append(append([]byte{}, keyFile...), otherKey(t)...), ok, current, "deploy/amazon-ssm-agent.gpg holds the keys"},
		{"no key", []byte("nothing here\n"), ok, current, "deploy/amazon-ssm-agent.gpg holds the keys"},
		{"signature not verified", keyFile, "digests SIGNATURES NOT OK", current, "signature not verified"},
		{"another signer", keyFile, ok, signedBy("0123456789abcdef"), "not one of SSM_AGENT_KEY_FPRS"},
		{"no signer", keyFile, ok, "(none)", "not one of SSM_AGENT_KEY_FPRS"},
	}
	for _, tt := range refused {
		r := runAgentInstall(t, tt.key, tt.checksig, tt.sign)
		if r.code == 0 || !strings.Contains(r.stderr, tt.want) || strings.Contains(r.log, "rpm -i") {
			t.Errorf("%s: exit %d, want a failure saying %q before rpm -i\nstderr:\n%s\nlog:\n%s", tt.name, r.code, tt.want, r.stderr, r.log)
		}
	}
}

// otherKey is a fresh public key that is not AWS's.
func otherKey(t *testing.T) []byte {
	t.Helper()
	home := t.TempDir()
	gen := exec.Command("gpg", "--batch", "--homedir", home, "--passphrase", "", "--quick-gen-key", "Not AWS <x@example.com>", "ed25519", "sign", "never")
	if out, err := gen.CombinedOutput(); err != nil {
		t.Fatalf("gpg --quick-gen-key: %v\n%s", err, out)
	}
	out, err := exec.Command("gpg", "--batch", "--homedir", home, "--armor", "--export").Output()
	if err != nil || !bytes.Contains(out, []byte("BEGIN PGP PUBLIC KEY BLOCK")) {
		t.Fatalf("gpg --export: %v", err)
	}
	return append([]byte("\n"), out...)
}

func requireRootTools(t *testing.T, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root (a mount namespace for the Dockerfile step's /tmp and /var)")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not on PATH: %v (.ci/run installs it)", tool, err)
		}
	}
}
