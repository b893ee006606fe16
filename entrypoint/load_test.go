package entrypoint

import (
	"encoding/base64"
	"os"
	"slices"
	"strings"
	"testing"
)

// cleanEnv unsets every variable bastion reads (restored after the test)
// and sets the given ones.
func cleanEnv(t *testing.T, set map[string]string) {
	t.Helper()
	for _, v := range Variables() {
		t.Setenv(v.Name, "")
		os.Unsetenv(v.Name)
	}
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, "BASTION_") {
			t.Setenv(name, "")
			os.Unsetenv(name)
		}
	}
	for k, v := range set {
		t.Setenv(k, v)
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func assertSecretsUnset(t *testing.T) {
	t.Helper()
	for _, name := range SecretVars {
		if v, ok := os.LookupEnv(name); ok {
			t.Errorf("%s still set (%d bytes)", name, len(v))
		}
		for _, kv := range os.Environ() {
			if strings.HasPrefix(kv, name+"=") {
				t.Errorf("%s still in os.Environ", name)
			}
		}
	}
}

func TestLoad(t *testing.T) {
	hostPEM := readTestdata(t, "host_ed25519")
	hostPub := readTestdata(t, "host_ed25519.pub")
	otherPub := readTestdata(t, "other_ed25519.pub")
	ak := readTestdata(t, "authorized_keys")
	const secretMarker = "ZZSECRETZZ"
	tests := []struct {
		name    string
		env     map[string]string
		wantErr []string // substrings; nil = success
		secrets []string // must not appear in the error
		check   func(t *testing.T, c *Config)
	}{
		{
			name: "base64 everything",
			env: map[string]string{
				"SSH_PRIVATE_HOST_KEY_BASE64ENCODED": b64(hostPEM),
				"SSH_PUBLIC_HOST_KEY_BASE64ENCODED":  b64(hostPub),
				"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED":  b64(ak),
				"BASTION_ALLOW":                      "10.0.0.0/8:443,db.internal",
			},
			check: func(t *testing.T, c *Config) {
				if c.HostKeyEphemeral || c.HostSigner == nil || len(c.AuthorizedKeys) != 1 || len(c.Allow) != 2 {
					t.Errorf("config %+v", c)
				}
				if c.Env.HostKey != "" || c.Env.HostPublicKey != "" || c.Env.AuthorizedKeys != "" {
					t.Error("secret fields kept in Config.Env")
				}
				if c.SSM {
					t.Error("SSM on without INSTANCE_IAM_ROLE")
				}
			},
		},
		{
			name: "plain text everything",
			env: map[string]string{
				"SSH_PRIVATE_HOST_KEY_BASE64ENCODED": hostPEM,
				"SSH_PUBLIC_HOST_KEY_BASE64ENCODED":  hostPub,
				"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED":  ak,
			},
		},
		{
			name: "ephemeral host key when unset and SSM off",
			env:  map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": b64(ak), "BASTION_SSM": "off", "INSTANCE_IAM_ROLE": "role"},
			check: func(t *testing.T, c *Config) {
				if !c.HostKeyEphemeral || c.HostSigner == nil {
					t.Fatal("no ephemeral host key")
				}
				found := false
				for _, w := range c.Warnings {
					found = found || strings.Contains(w.Msg, "ephemeral")
				}
				if !found {
					t.Errorf("no ephemeral-key warning in %+v", c.Warnings)
				}
			},
		},
		{
			name: "host key required with SSM",
			env: map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": b64(ak), "BASTION_SSM": "on",
				"INSTANCE_IAM_ROLE": "bastion-ssm", "AWS_REGION": "eu-west-1"},
			wantErr: []string{"SSH_PRIVATE_HOST_KEY_BASE64ENCODED", "required when SSM is on"},
		},
		{
			name: "host key required with SSM auto",
			env: map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": b64(ak),
				"INSTANCE_IAM_ROLE": "bastion-ssm", "AWS_REGION": "eu-west-1"},
			wantErr: []string{"SSH_PRIVATE_HOST_KEY_BASE64ENCODED", "required when SSM is on"},
		},
		{
			name: "public key mismatch",
			env: map[string]string{
				"SSH_PRIVATE_HOST_KEY_BASE64ENCODED": b64(hostPEM),
				"SSH_PUBLIC_HOST_KEY_BASE64ENCODED":  b64(otherPub),
				"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED":  b64(ak),
			},
			wantErr: []string{"SSH_PUBLIC_HOST_KEY_BASE64ENCODED does not match SSH_PRIVATE_HOST_KEY_BASE64ENCODED", "SHA256:"},
			secrets: []string{hostPEM, otherPub, hostPub},
		},
		{
			name: "public key without private key",
			env: map[string]string{
				"SSH_PUBLIC_HOST_KEY_BASE64ENCODED": b64(hostPub),
				"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": b64(ak),
			},
			wantErr: []string{"SSH_PUBLIC_HOST_KEY_BASE64ENCODED is set but SSH_PRIVATE_HOST_KEY_BASE64ENCODED is not"},
			secrets: []string{hostPub},
		},
		{
			name: "public key is two keys",
			env: map[string]string{
				"SSH_PRIVATE_HOST_KEY_BASE64ENCODED": b64(hostPEM),
				"SSH_PUBLIC_HOST_KEY_BASE64ENCODED":  b64(hostPub + otherPub),
				"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED":  b64(ak),
			},
			wantErr: []string{"SSH_PUBLIC_HOST_KEY_BASE64ENCODED: not a single public key"},
			secrets: []string{hostPEM, hostPub},
		},
		{
			name:    "authorized keys unset",
			env:     map[string]string{"SSH_PRIVATE_HOST_KEY_BASE64ENCODED": b64(hostPEM)},
			wantErr: []string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED is not set"},
			secrets: []string{hostPEM},
		},
		{
			name:    "authorized keys only comments",
			env:     map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": b64("# nobody\n")},
			wantErr: []string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED: no keys"},
		},
		{
			name:    "authorized keys bad line",
			env:     map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": b64(ak + "\n# x\nagent-fwd " + ak)},
			wantErr: []string{"entrypoint: ROOT_PUBLIC_SSH_KEY_BASE64ENCODED line 4: unknown option \"agent-fwd\""},
		},
		{
			name:    "authorized keys garbage line with secret",
			env:     map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": b64(ak + secretMarker + "\n")},
			wantErr: []string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED line 2"},
			secrets: []string{secretMarker},
		},
		{
			name:    "private key pasted as authorized keys",
			env:     map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": b64(hostPEM)},
			wantErr: []string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED: holds a private key, where public keys belong"},
			secrets: []string{hostPEM},
		},
		{
			name:    "private key pasted plain as authorized keys",
			env:     map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": hostPEM},
			wantErr: []string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED: holds a private key, where public keys belong"},
			secrets: []string{hostPEM},
		},
		{
			name:    "private key after an authorized key",
			env:     map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": ak + "\n" + hostPEM},
			wantErr: []string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED: holds a private key, where public keys belong"},
			secrets: []string{hostPEM},
		},
		{
			name: "private key as the host public key",
			env: map[string]string{
				"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED":  b64(ak),
				"SSH_PRIVATE_HOST_KEY_BASE64ENCODED": b64(hostPEM),
				"SSH_PUBLIC_HOST_KEY_BASE64ENCODED":  b64(hostPEM),
			},
			wantErr: []string{"SSH_PUBLIC_HOST_KEY_BASE64ENCODED: holds a private key, where public keys belong"},
			secrets: []string{hostPEM},
		},
		{
			name:    "path to a public key",
			env:     map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": "~/.ssh/id_ed25519.pub"},
			wantErr: []string{`ROOT_PUBLIC_SSH_KEY_BASE64ENCODED: looks like a file path: pass the file's contents (e.g. ROOT_PUBLIC_SSH_KEY_BASE64ENCODED="$(cat FILE)")`},
		},
		{
			name:    "path to authorized_keys",
			env:     map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": "/home/x/.ssh/authorized_keys"},
			wantErr: []string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED: looks like a file path"},
		},
		{
			name: "host key garbage",
			env: map[string]string{
				"SSH_PRIVATE_HOST_KEY_BASE64ENCODED": secretMarker + "!!",
				"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED":  b64(ak),
			},
			wantErr: []string{"SSH_PRIVATE_HOST_KEY_BASE64ENCODED"},
			secrets: []string{secretMarker},
		},
		{
			name: "host key is a public key",
			env: map[string]string{
				"SSH_PRIVATE_HOST_KEY_BASE64ENCODED": b64(hostPub),
				"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED":  b64(ak),
			},
			wantErr: []string{"SSH_PRIVATE_HOST_KEY_BASE64ENCODED"},
			secrets: []string{hostPub},
		},
		{
			name: "envconfig duration error names the variable, not the value",
			env: map[string]string{
				"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": b64(ak),
				"BASTION_HANDSHAKE_TIMEOUT":         "30" + secretMarker,
			},
			wantErr: []string{"entrypoint: BASTION_HANDSHAKE_TIMEOUT: not a valid duration"},
			secrets: []string{secretMarker},
		},
		{
			name: "envconfig int error",
			env: map[string]string{
				"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": b64(ak),
				"BASTION_MAX_CONNECTIONS_PER_KEY":   "many" + secretMarker,
			},
			wantErr: []string{"entrypoint: BASTION_MAX_CONNECTIONS_PER_KEY: not a valid whole number"},
			secrets: []string{secretMarker},
		},
		{
			name: "max startups not start:rate:full",
			env: map[string]string{
				"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": b64(ak),
				"BASTION_MAX_STARTUPS_PER_SOURCE":   "10:30" + secretMarker,
			},
			wantErr: []string{"entrypoint: BASTION_MAX_STARTUPS_PER_SOURCE: want start:rate:full"},
			secrets: []string{secretMarker},
		},
		{
			name: "envconfig bool error",
			env: map[string]string{
				"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": b64(ak),
				"BASTION_SSM_REQUIRE_ADVANCED_TIER": "maybe" + secretMarker,
			},
			wantErr: []string{"entrypoint: BASTION_SSM_REQUIRE_ADVANCED_TIER: not a valid boolean"},
			secrets: []string{secretMarker},
		},
		{
			name: "bad allow list",
			env: map[string]string{
				"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": b64(ak),
				"BASTION_ALLOW":                     "10.0.0.0/33",
			},
			wantErr: []string{"entrypoint: BASTION_ALLOW: entry 1"},
		},
		{
			name: "ssm rules come from ssm: log group",
			env: map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": b64(ak), "SSH_PRIVATE_HOST_KEY_BASE64ENCODED": b64(hostPEM),
				"INSTANCE_IAM_ROLE": "bastion-ssm", "AWS_REGION": "eu-west-1", "CLOUDWATCH_RECEIVER_LOG_GROUP": `a"b`},
			wantErr: []string{"entrypoint: ssm: CLOUDWATCH_RECEIVER_LOG_GROUP"},
		},
		{
			name: "ssm rules come from ssm: instance name",
			env: map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": b64(ak), "SSH_PRIVATE_HOST_KEY_BASE64ENCODED": b64(hostPEM),
				"INSTANCE_IAM_ROLE": "bastion-ssm", "AWS_REGION": "eu-west-1", "INSTANCE_NAME": "jump#1"},
			wantErr: []string{"entrypoint: ssm: INSTANCE_NAME"},
		},
		{
			name: "ssm rules come from ssm: role as ARN",
			env: map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": b64(ak), "SSH_PRIVATE_HOST_KEY_BASE64ENCODED": b64(hostPEM),
				"INSTANCE_IAM_ROLE": "arn:aws:iam::123456789012:role/x", "AWS_REGION": "eu-west-1"},
			wantErr: []string{"entrypoint: ssm: INSTANCE_IAM_ROLE", "not an ARN"},
		},
		{
			name: "stop timeout too short to deregister",
			env: map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": b64(ak), "SSH_PRIVATE_HOST_KEY_BASE64ENCODED": b64(hostPEM),
				"INSTANCE_IAM_ROLE": "bastion-ssm", "AWS_REGION": "eu-west-1", "BASTION_STOP_TIMEOUT": "4s", "BASTION_DRAIN_TIMEOUT": "1s"},
			wantErr: []string{"entrypoint: BASTION_STOP_TIMEOUT: must be at least 5s with SSM on"},
		},
		{
			name: "orphan threshold too short",
			env: map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": b64(ak), "SSH_PRIVATE_HOST_KEY_BASE64ENCODED": b64(hostPEM),
				"INSTANCE_IAM_ROLE": "bastion-ssm", "AWS_REGION": "eu-west-1", "BASTION_SSM_ORPHAN_AFTER": "5m"},
			wantErr: []string{"BASTION_SSM_ORPHAN_AFTER must be at least 10m0s"},
		},
		{
			name: "drain not shorter than stop",
			env: map[string]string{
				"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": b64(ak),
				"BASTION_DRAIN_TIMEOUT":             "30s",
				"BASTION_STOP_TIMEOUT":              "30s",
			},
			wantErr: []string{"BASTION_DRAIN_TIMEOUT: must be shorter than BASTION_STOP_TIMEOUT"},
		},
		{
			name: "both key sources",
			env: map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": b64(ak),
				"BASTION_AUTHORIZED_KEYS_SECRET": "bastion/keys", "AWS_REGION": "us-east-1", "BASTION_AUTHORIZED_KEYS_FILE": "/keys"},
			wantErr: []string{"BASTION_AUTHORIZED_KEYS_SECRET and BASTION_AUTHORIZED_KEYS_FILE are both set"},
		},
		{
			name:    "key secret name without a region",
			env:     map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": b64(ak), "BASTION_AUTHORIZED_KEYS_SECRET": "bastion/keys"},
			wantErr: []string{"AWS_REGION is required with BASTION_AUTHORIZED_KEYS_SECRET"},
		},
		{
			name: "key secret ARN of another service",
			env: map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": b64(ak),
				"BASTION_AUTHORIZED_KEYS_SECRET": "arn:aws:ssm:us-east-1:123456789012:parameter/keys"},
			wantErr: []string{"BASTION_AUTHORIZED_KEYS_SECRET: not a Secrets Manager secret ARN"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cleanEnv(t, tt.env)
			c, err := Load()
			assertSecretsUnset(t)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("Load succeeded, want error with %q", tt.wantErr)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q, want it to contain %q", err, w)
					}
				}
				for _, s := range tt.secrets {
					assertNoSecret(t, err.Error(), s)
				}
				for _, name := range SecretVars {
					if v := tt.env[name]; len(v) > 8 && strings.Contains(err.Error(), strings.TrimSpace(v)) {
						t.Errorf("error %q carries the value of %s", err, name)
					}
				}
				if c != nil {
					t.Error("config returned with an error")
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

func TestLoadWarnsUnknownBastionVars(t *testing.T) {
	cleanEnv(t, map[string]string{
		"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": b64(readTestdata(t, "authorized_keys")),
		"BASTION_FOO":                       "1",
		"BASTION_ALOW":                      "10.0.0.0/8",
	})
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	var names, closest []any
	for _, w := range c.Warnings {
		if strings.Contains(w.Msg, "unknown variable") {
			names = append(names, w.Attrs[1])
			if w.Attrs[2] != "did_you_mean" {
				t.Errorf("warning %+v: no did_you_mean", w)
			}
			closest = append(closest, w.Attrs[3])
		}
	}
	if !slices.Equal(names, []any{"BASTION_ALOW", "BASTION_FOO"}) {
		t.Errorf("unknown-variable warnings for %v", names)
	}
	if closest[0] != "BASTION_ALLOW" {
		t.Errorf("BASTION_ALOW: did_you_mean %v, want BASTION_ALLOW", closest[0])
	}
}

func TestUnknownBastionVars(t *testing.T) {
	tests := []struct {
		name    string
		environ []string
		want    []string
	}{
		{"none", []string{"PATH=/bin", "HOME=/root"}, nil},
		{"known", []string{"BASTION_ALLOW=x", "BASTION_SSM=off"}, nil},
		{"unknown sorted", []string{"BASTION_FOO=1", "BASTION_ALLOW=x", "BASTION_BAR="}, []string{"BASTION_BAR", "BASTION_FOO"}},
		{"not a BASTION_ name", []string{"XBASTION_FOO=1", "bastion_foo=1"}, nil},
		{"no value", []string{"BASTION_TYPO"}, []string{"BASTION_TYPO"}},
		{"the key variables are known", append([]string{}, "SSH_PRIVATE_HOST_KEY_BASE64ENCODED=x"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := UnknownBastionVars(tt.environ); !slices.Equal(got, tt.want) {
				t.Errorf("UnknownBastionVars = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestVariablesDocumented(t *testing.T) {
	seen := map[string]bool{}
	for _, v := range Variables() {
		if v.Name == "" || v.Description == "" {
			t.Errorf("variable %+v lacks a name or description", v)
		}
		if seen[v.Name] {
			t.Errorf("%s listed twice", v.Name)
		}
		seen[v.Name] = true
	}
	for _, s := range SecretVars {
		if !seen[s] {
			t.Errorf("secret %s not among Variables", s)
		}
	}
	if want := []string{"SSH_PRIVATE_HOST_KEY_BASE64ENCODED", "SSH_PUBLIC_HOST_KEY_BASE64ENCODED",
		"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED", "BASTION_NOTIFY_URL"}; !slices.Equal(SecretVars, want) {
		t.Errorf("SecretVars = %q, want %q", SecretVars, want)
	}
	var b strings.Builder
	PrintHelp(&b)
	for name := range seen {
		if !strings.Contains(b.String(), name) {
			t.Errorf("help lacks %s", name)
		}
	}
}

// TestLoadSettings: the settings a subcommand reads are Load's (defaults,
// the SSM switch, the same refusals), and the key variables stay where they
// are, undecoded: even a value Load would refuse does not matter.
func TestLoadSettings(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		addr    string
		ssm     bool
		wantErr string
	}{
		{name: "defaults", addr: ":22"},
		{name: "address", env: map[string]string{"BASTION_SSH_ADDR": "127.0.0.1:2222"}, addr: "127.0.0.1:2222"},
		{name: "role turns SSM on", env: map[string]string{"INSTANCE_IAM_ROLE": "r", "AWS_REGION": "eu-west-1"}, addr: ":22", ssm: true},
		{name: "BASTION_SSM=on", env: map[string]string{"BASTION_SSM": "on", "INSTANCE_IAM_ROLE": "r", "AWS_REGION": "eu-west-1"}, addr: ":22", ssm: true},
		{name: "BASTION_SSM=1", env: map[string]string{"BASTION_SSM": "1", "INSTANCE_IAM_ROLE": "r", "AWS_REGION": "eu-west-1"}, addr: ":22", ssm: true},
		{name: "BASTION_SSM=off", env: map[string]string{"BASTION_SSM": "off", "INSTANCE_IAM_ROLE": "r"}, addr: ":22"},
		{name: "BASTION_SSM=on without a role", env: map[string]string{"BASTION_SSM": "on"}, wantErr: "INSTANCE_IAM_ROLE: required when BASTION_SSM=on"},
		{name: "bad address", env: map[string]string{"BASTION_SSH_ADDR": "nonsense"}, wantErr: "BASTION_SSH_ADDR"},
		{name: "bad duration", env: map[string]string{"BASTION_DRAIN_TIMEOUT": "soon"}, wantErr: "BASTION_DRAIN_TIMEOUT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{
				"SSH_PRIVATE_HOST_KEY_BASE64ENCODED": "not a key",
				"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED":  "not keys either",
			}
			for k, v := range tc.env {
				env[k] = v
			}
			cleanEnv(t, env)
			c, err := LoadSettings()
			for _, name := range []string{"SSH_PRIVATE_HOST_KEY_BASE64ENCODED", "ROOT_PUBLIC_SSH_KEY_BASE64ENCODED"} {
				if os.Getenv(name) != env[name] {
					t.Errorf("%s changed in the environment", name)
				}
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("LoadSettings = %+v, %v; want an error naming %s", c, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Env.SSHAddr != tc.addr || c.SSM != tc.ssm {
				t.Fatalf("LoadSettings: address %q, SSM %v; want %q, %v", c.Env.SSHAddr, c.SSM, tc.addr, tc.ssm)
			}
			if c.Env.HostKey != "" || c.Env.AuthorizedKeys != "" || c.HostSigner != nil || c.AuthorizedKeys != nil {
				t.Fatalf("LoadSettings returned keys: %+v", c)
			}
		})
	}
}

func TestClosestVariable(t *testing.T) {
	tests := []struct{ typo, want string }{
		{"BASTION_ALOW", "BASTION_ALLOW"},
		{"BASTION_ALLOWW", "BASTION_ALLOW"},
		{"BASTION_ALLOWED", "BASTION_ALLOW"},
		{"BASTION_LOGLEVEL", "BASTION_LOG_LEVEL"},
		{"BASTION_LOG_FMT", "BASTION_LOG_FORMAT"},
		{"BASTION_SSH_ADR", "BASTION_SSH_ADDR"},
		{"BASTION_STOPTIMEOUT", "BASTION_STOP_TIMEOUT"},
		{"BASTION_IDLE_TIMOUT", "BASTION_IDLE_TIMEOUT"},
		{"BASTION_SMM", "BASTION_SSM"},
	}
	for _, tt := range tests {
		if got := ClosestVariable(tt.typo); got != tt.want {
			t.Errorf("ClosestVariable(%q) = %q, want %q", tt.typo, got, tt.want)
		}
	}
}

func TestEditDistance(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"", "", 0}, {"a", "", 1}, {"", "abc", 3}, {"kitten", "sitting", 3},
		{"BASTION_ALOW", "BASTION_ALLOW", 1}, {"abc", "abc", 0}, {"ab", "ba", 2},
	}
	for _, tt := range tests {
		if got := editDistance(tt.a, tt.b); got != tt.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
		if got := editDistance(tt.b, tt.a); got != tt.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tt.b, tt.a, got, tt.want)
		}
	}
}

// TestLoadWarnsAllowHostNames: a host-name entry in BASTION_ALLOW is named
// in one warning that says only an address entry opens a denied range;
// address entries alone give none.
func TestLoadWarnsAllowHostNames(t *testing.T) {
	ak := b64(readTestdata(t, "authorized_keys"))
	warning := func(allow string) *Warning {
		cleanEnv(t, map[string]string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED": ak, "BASTION_ALLOW": allow})
		c, err := Load()
		if err != nil {
			t.Fatal(err)
		}
		var found *Warning
		for i, w := range c.Warnings {
			if strings.HasPrefix(w.Msg, "BASTION_ALLOW: host-name entries") {
				if found != nil {
					t.Fatalf("two host-name warnings: %+v", c.Warnings)
				}
				found = &c.Warnings[i]
			}
		}
		return found
	}
	w := warning("10.0.0.0/8,localhost:22,db.internal:5432-5433,127.0.0.1/32:22")
	if w == nil {
		t.Fatal("no warning for host-name entries")
	}
	if !strings.Contains(w.Msg, "only an address entry inside the range opens it") ||
		!slices.Equal(w.Attrs, []any{"variable", "BASTION_ALLOW", "host_entries", "localhost:22,db.internal:5432-5433"}) {
		t.Errorf("warning %+v", *w)
	}
	if w := warning("10.0.0.0/8,127.0.0.1/32:22"); w != nil {
		t.Errorf("warning without host names: %+v", *w)
	}
}

func TestLooksLikePath(t *testing.T) {
	ak := readTestdata(t, "authorized_keys")
	pem := readTestdata(t, "host_ed25519")
	tests := []struct {
		in   string
		want bool
	}{
		{"~/.ssh/id_ed25519.pub", true},
		{"/home/x/.ssh/authorized_keys", true},
		{"/Users/Jane Doe/.ssh/id_rsa.pub", true},
		{"./keys/team.pub", true},
		{"../authorized_keys", true},
		{"$HOME/.ssh/id_ed25519.pub", true},
		{`C:\Users\me\.ssh\id_ed25519.pub`, true},
		{"id_ed25519.pub", true},
		{"authorized_keys", true},
		{"host.pem", true},
		{"keys/id_ecdsa.pub", true},
		{strings.TrimSpace(ak), false},
		{b64(ak), false},
		{base64.RawURLEncoding.EncodeToString([]byte(ak)), false},
		{strings.TrimSpace(pem), false},
		{b64(pem), false},
		{"restrict,permitopen=\"db:5432\" " + strings.TrimSpace(ak), false},
		{"# comment\n" + ak, false},
		{"", false},
		{"hello", false},
		{"id_rsa", false}, // valid base64: left to the decoder
		{`%USERPROFILE%\.ssh\id_ed25519.pub`, true},
		{"%%%not-base64%%%", false},
	}
	for _, tt := range tests {
		if got := looksLikePath(tt.in); got != tt.want {
			t.Errorf("looksLikePath(%.40q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}
