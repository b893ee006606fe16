package entrypoint

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"github.com/bastion-dev/bastion/authkeys"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-dev/bastion/notify"
	"github.com/bastion-dev/bastion/sshd"
	"github.com/bastion-dev/bastion/ssm"
)

// Config is the validated start-up configuration.
type Config struct {
	Env              Env // with the secret fields emptied
	HostSigner       gossh.Signer
	HostKeyEphemeral bool
	AuthorizedKeys   []sshd.AuthorizedKey
	Allow            []sshd.AllowEntry
	// MaxStartups and MaxStartupsPerSource are the parsed limits.
	MaxStartups, MaxStartupsPerSource sshd.Startups
	SSM                               bool
	SSMTags                           map[string]string
	LogLevel                          slog.Level
	// Warnings are for the log once it exists: unknown BASTION_* names (with
	// the closest known one), host names in BASTION_ALLOW, the ephemeral
	// host key.
	Warnings []Warning
}

// Warning is a start-up warning with its structured attributes.
type Warning struct {
	Msg   string
	Attrs []any
}

// MinStopTimeoutSSM is the least BASTION_STOP_TIMEOUT with SSM on: what
// cmd/bastion's stop plan needs after SIGTERM besides the optional steps
// (1 s exit margin, 1.5 s for the process sweep, ssm.DeregisterFloor for the
// deregistration). cmd/bastion's tests check the sum.
const MinStopTimeoutSSM = 5 * time.Second

// Load reads and validates the environment. The key variables are removed
// from the process environment before it returns, whatever the outcome.
// Nothing here talks to AWS: every error comes before any side effect.
func Load() (*Config, error) {
	env, err := readEnv()
	unsetSecrets()
	if err != nil {
		return nil, err
	}
	cfg := &Config{}
	for _, name := range UnknownBastionVars(os.Environ()) {
		cfg.Warnings = append(cfg.Warnings, Warning{Msg: "unknown variable ignored (typo?)",
			Attrs: []any{"variable", name, "did_you_mean", ClosestVariable(name)}})
	}
	if err := cfg.validate(&env); err != nil {
		return nil, err
	}
	if err := cfg.decodeKeys(&env); err != nil {
		return nil, err
	}
	env.HostKey, env.HostPublicKey, env.AuthorizedKeys = "", "", ""
	cfg.Env = env
	return cfg, nil
}

func (c *Config) validate(e *Env) error {
	if _, _, err := net.SplitHostPort(e.SSHAddr); err != nil {
		return fmt.Errorf("entrypoint: BASTION_SSH_ADDR: want host:port or :port")
	}
	positive := []struct {
		name string
		d    time.Duration
	}{
		{"BASTION_HANDSHAKE_TIMEOUT", e.HandshakeTimeout},
		{"BASTION_DIAL_TIMEOUT", e.DialTimeout},
		{"BASTION_DRAIN_TIMEOUT", e.DrainTimeout},
		{"BASTION_SSM_ORPHAN_AFTER", e.OrphanAfter},
		{"BASTION_SSM_READY_TIMEOUT", e.ReadyTimeout},
	}
	for _, p := range positive {
		if p.d <= 0 {
			return fmt.Errorf("entrypoint: %s: must be a positive duration", p.name)
		}
	}
	if e.KeepaliveInterval < 0 {
		return errors.New("entrypoint: BASTION_KEEPALIVE_INTERVAL: must be 0 (off) or positive")
	}
	if e.KeepaliveInterval == 0 {
		e.KeepaliveInterval = -1 // sshd: negative disables
	}
	if e.StopTimeout < time.Second || e.StopTimeout > 120*time.Second {
		return errors.New("entrypoint: BASTION_STOP_TIMEOUT: must be between 1s and 120s (ECS's stopTimeout range)")
	}
	if e.DrainTimeout >= e.StopTimeout {
		return errors.New("entrypoint: BASTION_DRAIN_TIMEOUT: must be shorter than BASTION_STOP_TIMEOUT")
	}
	counts := []struct {
		name string
		n    int
	}{
		{"BASTION_MAX_AUTH_TRIES", e.MaxAuthTries},
		{"BASTION_MAX_TUNNELS_PER_CONN", e.MaxTunnelsPerConn},
		{"BASTION_MAX_CONNECTIONS_PER_KEY", e.MaxConnectionsPerKey},
		{"BASTION_KEEPALIVE_COUNT_MAX", e.KeepaliveCountMax},
	}
	for _, p := range counts {
		if p.n < 1 {
			return fmt.Errorf("entrypoint: %s: must be at least 1", p.name)
		}
	}
	for _, st := range []struct {
		name, value string
		into        *sshd.Startups
	}{
		{"BASTION_MAX_STARTUPS", e.MaxStartups, &c.MaxStartups},
		{"BASTION_MAX_STARTUPS_PER_SOURCE", e.MaxStartupsPerSource, &c.MaxStartupsPerSource},
	} {
		l, err := sshd.ParseStartups(st.value)
		if err != nil {
			return fmt.Errorf("entrypoint: %s: %w", st.name, err)
		}
		*st.into = l
	}
	for _, d := range []struct {
		name string
		d    time.Duration
	}{{"BASTION_IDLE_TIMEOUT", e.IdleTimeout}, {"BASTION_MAX_CONNECTION_AGE", e.MaxConnectionAge}} {
		if d.d < 0 {
			return fmt.Errorf("entrypoint: %s: must be 0 (off) or positive", d.name)
		}
	}
	if e.MaxTunnels < 0 {
		return errors.New("entrypoint: BASTION_MAX_TUNNELS: must be 0 (from the memory limit) or positive")
	}
	if e.AgentRestarts < 0 {
		return errors.New("entrypoint: BASTION_SSM_AGENT_RESTARTS: must be 0 or more")
	}
	switch e.LogFormat {
	case "json", "text":
	default:
		return errors.New("entrypoint: BASTION_LOG_FORMAT: want json or text")
	}
	if err := authkeys.CheckSource(e.KeysSecret, e.KeysFile, e.Region); err != nil {
		return fmt.Errorf("entrypoint: %w", err)
	}
	if e.KeysRefresh < time.Second {
		return errors.New("entrypoint: BASTION_KEYS_REFRESH: must be at least 1s")
	}
	if e.NotifyURL != "" {
		if err := notify.ValidateURL(e.NotifyURL); err != nil {
			return fmt.Errorf("entrypoint: BASTION_NOTIFY_URL: %w", err)
		}
	}
	if err := c.LogLevel.UnmarshalText([]byte(e.LogLevel)); err != nil {
		return errors.New("entrypoint: BASTION_LOG_LEVEL: want debug, info, warn or error")
	}
	allow, err := sshd.ParseAllowList(e.Allow)
	if err != nil {
		return fmt.Errorf("entrypoint: BASTION_ALLOW: %w", err)
	}
	c.Allow = allow
	if names := hostEntries(allow); names != "" {
		// A name that resolves to loopback, link-local (the metadata
		// endpoints) or this host stays denied: decisions are made on the
		// dialed address, and only an address entry opens those ranges.
		c.Warnings = append(c.Warnings, Warning{
			Msg:   "BASTION_ALLOW: host-name entries never open a denied range: a name that resolves to loopback, link-local or an address of this host stays denied; only an address entry inside the range opens it (e.g. 127.0.0.1/32:22)",
			Attrs: []any{"variable", "BASTION_ALLOW", "host_entries", names},
		})
	}

	switch strings.ToLower(e.SSM) {
	case "auto", "":
		c.SSM = e.InstanceIAMRole != ""
	case "off", "false", "0":
		c.SSM = false
	case "on", "true", "1":
		if e.InstanceIAMRole == "" {
			return errors.New("entrypoint: INSTANCE_IAM_ROLE: required when BASTION_SSM=on")
		}
		c.SSM = true
	default:
		return errors.New("entrypoint: BASTION_SSM: want auto, on or off")
	}
	tags, err := parseTags(e.SSMTags)
	if err != nil {
		return fmt.Errorf("entrypoint: BASTION_SSM_TAGS: %w", err)
	}
	c.SSMTags = tags
	if c.SSM {
		if e.Region == "" {
			return errors.New("entrypoint: AWS_REGION: required when SSM is on (INSTANCE_IAM_ROLE is set)")
		}
		if e.StopTimeout < MinStopTimeoutSSM {
			return fmt.Errorf("entrypoint: BASTION_STOP_TIMEOUT: must be at least %v with SSM on: the stop needs that to deregister the managed instance, sweep processes and exit before ECS's SIGKILL", MinStopTimeoutSSM)
		}
		// The service's rules have one home, in ssm.
		if err := ssmConfig(e, tags).Validate(); err != nil {
			return fmt.Errorf("entrypoint: %w", err)
		}
	}
	return nil
}

// SSMConfig is the SSM lifecycle's part of the configuration.
func (c *Config) SSMConfig() ssm.Config { return ssmConfig(&c.Env, c.SSMTags) }

func ssmConfig(e *Env, tags map[string]string) ssm.Config {
	endpoint := e.EndpointSSM
	if endpoint == "" {
		endpoint = e.Endpoint
	}
	scfg := ssm.DefaultConfig()
	scfg.Region = e.Region
	scfg.IAMRole = e.InstanceIAMRole
	scfg.InstanceName = e.InstanceName
	scfg.LogGroup = e.LogGroup
	scfg.Tags = tags
	scfg.RequireAdvancedTier = e.RequireAdvancedTier
	scfg.OrphanSweep = e.OrphanSweep
	scfg.OrphanAfter = e.OrphanAfter
	scfg.ReadyTimeout = e.ReadyTimeout
	scfg.Endpoint = endpoint
	scfg.MetadataURI = e.MetadataURI
	scfg.Restarts = e.AgentRestarts
	if e.AgentRestarts == 0 {
		scfg.Restarts = -1 // ssm: negative = never restart
	}
	return scfg
}

// hostEntries lists BASTION_ALLOW's host-name entries, comma-separated.
func hostEntries(allow []sshd.AllowEntry) string {
	var names []string
	for _, e := range allow {
		if e.Host != "" {
			names = append(names, e.String())
		}
	}
	return strings.Join(names, ",")
}

func parseTags(s string) (map[string]string, error) {
	tags := map[string]string{}
	for i, kv := range strings.Split(s, ",") {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" {
			return nil, fmt.Errorf("entry %d: want key=value", i+1)
		}
		if err := ssm.CheckUserTag(k, v); err != nil {
			return nil, fmt.Errorf("entry %d: %w", i+1, err)
		}
		tags[k] = v
	}
	return tags, nil
}

func (c *Config) decodeKeys(e *Env) error {
	const (
		privName = "SSH_PRIVATE_HOST_KEY_BASE64ENCODED"
		pubName  = "SSH_PUBLIC_HOST_KEY_BASE64ENCODED"
		authName = "ROOT_PUBLIC_SSH_KEY_BASE64ENCODED"
	)
	// Authorized keys first: without them nothing else matters. With a
	// live source they are only the set to start with, and may be absent.
	live := e.KeysSecret != "" || e.KeysFile != ""
	switch {
	case strings.TrimSpace(e.AuthorizedKeys) != "":
		data, err := DecodeAuthorizedKeys(authName, e.AuthorizedKeys)
		if err != nil {
			return err
		}
		keys, err := sshd.ParseAuthorizedKeys(data)
		if err != nil {
			return fmt.Errorf("entrypoint: %s %w", authName, err)
		}
		if len(keys) == 0 {
			return fmt.Errorf("entrypoint: %s: no keys (only blank lines or comments)", authName)
		}
		c.AuthorizedKeys = keys
	case !live:
		return fmt.Errorf("entrypoint: %s is not set (nor BASTION_AUTHORIZED_KEYS_SECRET or BASTION_AUTHORIZED_KEYS_FILE): refusing to start a bastion nobody is authorized to use", authName)
	}

	if strings.TrimSpace(e.HostKey) == "" {
		if c.SSM {
			return fmt.Errorf("entrypoint: %s: required when SSM is on (clients pin the host key; an ephemeral one would change at every task start)", privName)
		}
		if strings.TrimSpace(e.HostPublicKey) != "" {
			return fmt.Errorf("entrypoint: %s is set but %s is not", pubName, privName)
		}
		signer, err := EphemeralHostKey()
		if err != nil {
			return err
		}
		c.HostSigner, c.HostKeyEphemeral = signer, true
		c.Warnings = append(c.Warnings, Warning{
			Msg:   "no host key configured: using an ephemeral ed25519 key; clients will see a new host key at every start (bastion keygen makes a permanent one)",
			Attrs: []any{"variable", privName, "fingerprint", gossh.FingerprintSHA256(signer.PublicKey())},
		})
		return nil
	}
	signer, err := ParseHostKey(privName, e.HostKey)
	if err != nil {
		return err
	}
	if strings.TrimSpace(e.HostPublicKey) != "" {
		pubText, err := decodeText(pubName, e.HostPublicKey, publicKey, true)
		if err != nil {
			return err
		}
		pub, _, _, rest, err := gossh.ParseAuthorizedKey(pubText)
		if err != nil || len(strings.TrimSpace(string(rest))) != 0 {
			return fmt.Errorf("entrypoint: %s: not a single public key in OpenSSH format", pubName)
		}
		if string(pub.Marshal()) != string(signer.PublicKey().Marshal()) {
			return fmt.Errorf("entrypoint: %s does not match %s (%s vs %s)", pubName, privName,
				gossh.FingerprintSHA256(pub), gossh.FingerprintSHA256(signer.PublicKey()))
		}
	}
	c.HostSigner = signer
	return nil
}

// ParseHostKey decodes a host private key value (base64 or plain PEM /
// OpenSSH text) into a signer: ed25519, ECDSA or RSA ≥ 2048, with RSA
// restricted to rsa-sha2-* signatures.
func ParseHostKey(name, value string) (gossh.Signer, error) {
	pemText, err := decodeText(name, value, privateKey, true)
	if err != nil {
		return nil, err
	}
	raw, err := gossh.ParseRawPrivateKey(pemText)
	if err != nil {
		var pm *gossh.PassphraseMissingError
		if errors.As(err, &pm) {
			return nil, fmt.Errorf("entrypoint: %s: the key is protected by a passphrase; store it unencrypted (ssh-keygen -p -N '' -f KEY)", name)
		}
		return nil, fmt.Errorf("entrypoint: %s: not a private key in PEM or OpenSSH format", name)
	}
	signer, err := gossh.NewSignerFromKey(raw)
	if err != nil {
		return nil, fmt.Errorf("entrypoint: %s: unsupported key type", name)
	}
	switch signer.PublicKey().Type() {
	case gossh.KeyAlgoED25519, gossh.KeyAlgoECDSA256, gossh.KeyAlgoECDSA384, gossh.KeyAlgoECDSA521:
		return signer, nil
	case gossh.KeyAlgoRSA:
		if err := sshd.CheckKeyStrength(signer.PublicKey()); err != nil {
			return nil, fmt.Errorf("entrypoint: %s: %w", name, err)
		}
		as, ok := signer.(gossh.AlgorithmSigner)
		if !ok {
			return nil, fmt.Errorf("entrypoint: %s: RSA key cannot sign with SHA-2", name)
		}
		return gossh.NewSignerWithAlgorithms(as, []string{gossh.KeyAlgoRSASHA512, gossh.KeyAlgoRSASHA256})
	default:
		return nil, fmt.Errorf("entrypoint: %s: %s host keys are not accepted (use ed25519, ECDSA or RSA ≥ 2048)", name, signer.PublicKey().Type())
	}
}

// EphemeralHostKey makes a fresh ed25519 host key.
func EphemeralHostKey() (gossh.Signer, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("entrypoint: generate host key: %w", err)
	}
	return gossh.NewSignerFromKey(priv)
}
