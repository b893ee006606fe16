// Package entrypoint turns the container's environment into a validated
// Config: settings through envconfig, secrets decoded and then removed from
// the environment. Errors name the variable (and line), never the value.
package entrypoint

import (
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kelseyhightower/envconfig"
)

// Env holds every variable bastion reads, with its default and meaning.
// The three key variables stay plain strings here because envconfig's parse
// errors print values; they are decoded afterwards.
type Env struct {
	// Keys (seed 000 names).
	HostKey        string `envconfig:"SSH_PRIVATE_HOST_KEY_BASE64ENCODED" desc:"SSH host private key (PEM or OpenSSH), base64 or plain; required with SSM; unset locally = ephemeral ed25519 key" secret:"true"`
	HostPublicKey  string `envconfig:"SSH_PUBLIC_HOST_KEY_BASE64ENCODED" desc:"SSH host public key, base64 or plain; optional, must match the private key" secret:"true"`
	AuthorizedKeys string `envconfig:"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED" desc:"authorized_keys file (sshd(8) format and options), base64 or plain; required unless a live source below is set, then only the set to start with" secret:"true"`

	// Live keys.
	KeysSecret  string        `envconfig:"BASTION_AUTHORIZED_KEYS_SECRET" desc:"Secrets Manager secret id or ARN whose value is an authorized_keys file (text or base64), re-read every BASTION_KEYS_REFRESH and on SIGHUP; removed keys lose their connections"`
	KeysFile    string        `envconfig:"BASTION_AUTHORIZED_KEYS_FILE" desc:"path of an authorized_keys file, re-read every BASTION_KEYS_REFRESH and on SIGHUP (replace it by rename); removed keys lose their connections"`
	KeysRefresh time.Duration `envconfig:"BASTION_KEYS_REFRESH" default:"60s" desc:"how often the live authorized keys are checked (the secret's version, the file's content)"`

	// Notifications.
	NotifyURL string `envconfig:"BASTION_NOTIFY_URL" desc:"incoming-webhook URL (Slack, Mattermost, Teams) for a message per session start and its tunnels; https (http only to loopback); a secret: never logged, hidden from children" secret:"true"`

	// SSH server.
	SSHAddr              string        `envconfig:"BASTION_SSH_ADDR" default:":22" desc:"SSH listen address"`
	Allow                string        `envconfig:"BASTION_ALLOW" desc:"allowed tunnel destinations: comma-separated CIDRs or host names, each with optional :port or :lo-hi; empty = any except loopback, 0.0.0.0/8, link-local (metadata and credential endpoints), fe80::/10, fd00:ec2::/32, which only an entry inside them opens"`
	HandshakeTimeout     time.Duration `envconfig:"BASTION_HANDSHAKE_TIMEOUT" default:"30s" desc:"deadline for SSH handshake plus authentication"`
	MaxAuthTries         int           `envconfig:"BASTION_MAX_AUTH_TRIES" default:"6" desc:"authentication attempts per connection"`
	MaxStartups          string        `envconfig:"BASTION_MAX_STARTUPS" default:"100:30:200" desc:"unauthenticated connections in total, as sshd's MaxStartups start:rate:full (from start, refuse rate% rising to 100% at full) or one hard limit; refused before the handshake"`
	MaxStartupsPerSource string        `envconfig:"BASTION_MAX_STARTUPS_PER_SOURCE" default:"24:30:48" desc:"unauthenticated connections per SSM session (for connections from a session worker) or per client address, start:rate:full or one number; the healthcheck has slots of its own"`
	MaxTunnelsPerConn    int           `envconfig:"BASTION_MAX_TUNNELS_PER_CONN" default:"100" desc:"open tunnels per SSH connection"`
	MaxTunnels           int           `envconfig:"BASTION_MAX_TUNNELS" default:"0" desc:"open tunnels in all; one key may hold half; 0 = from the memory limit (each tunnel may buffer about 2.3 MiB: a 512 MiB task gets about 130)"`
	MaxConnectionsPerKey int           `envconfig:"BASTION_MAX_CONNECTIONS_PER_KEY" default:"64" desc:"authenticated connections per key (a certificate counts as its key)"`
	IdleTimeout          time.Duration `envconfig:"BASTION_IDLE_TIMEOUT" default:"0" desc:"close a connection whose tunnels moved no byte for this long (keepalives do not count); 0 = off"`
	MaxConnectionAge     time.Duration `envconfig:"BASTION_MAX_CONNECTION_AGE" default:"0" desc:"close a connection this long after it authenticated, whatever it is doing; 0 = off"`
	KeepaliveInterval    time.Duration `envconfig:"BASTION_KEEPALIVE_INTERVAL" default:"15s" desc:"keepalive probe interval (like ClientAliveInterval); 0 disables"`
	KeepaliveCountMax    int           `envconfig:"BASTION_KEEPALIVE_COUNT_MAX" default:"3" desc:"unanswered keepalives before a connection is dropped"`
	DialTimeout          time.Duration `envconfig:"BASTION_DIAL_TIMEOUT" default:"10s" desc:"timeout for connecting to a tunnel destination"`
	DrainTimeout         time.Duration `envconfig:"BASTION_DRAIN_TIMEOUT" default:"10s" desc:"grace for open tunnels at shutdown before they are cut"`

	// Process.
	StopTimeout time.Duration `envconfig:"BASTION_STOP_TIMEOUT" default:"30s" desc:"whole shutdown budget, counted from SIGTERM; set it to the task definition's stopTimeout (Fargate default 30s, max 120s); at least 5s with SSM"`
	LogLevel    string        `envconfig:"BASTION_LOG_LEVEL" default:"info" desc:"debug, info, warn or error"`
	LogFormat   string        `envconfig:"BASTION_LOG_FORMAT" default:"json" desc:"json (one object per line, for log shipping) or text (key=value, for reading in a terminal)"`

	// SSM (seed 004 names).
	SSM                 string        `envconfig:"BASTION_SSM" default:"auto" desc:"auto = SSM on when INSTANCE_IAM_ROLE is set; off forces it off; on requires INSTANCE_IAM_ROLE"`
	InstanceIAMRole     string        `envconfig:"INSTANCE_IAM_ROLE" desc:"IAM role name for the SSM agent (hybrid activation); setting it turns SSM on"`
	InstanceName        string        `envconfig:"INSTANCE_NAME" desc:"managed instance name; empty = <task family>-<task id> from ECS metadata"`
	Region              string        `envconfig:"AWS_REGION" desc:"AWS region; required with SSM"`
	LogGroup            string        `envconfig:"CLOUDWATCH_RECEIVER_LOG_GROUP" desc:"CloudWatch Logs group for the agent's logs; empty = console only"`
	SSMTags             string        `envconfig:"BASTION_SSM_TAGS" desc:"extra tags for the managed instance: key=value,key=value"`
	RequireAdvancedTier bool          `envconfig:"BASTION_SSM_REQUIRE_ADVANCED_TIER" default:"true" desc:"refuse to start unless the account's activation tier is advanced (needed for Session Manager on hybrid instances)"`
	OrphanSweep         bool          `envconfig:"BASTION_SSM_ORPHAN_SWEEP" default:"true" desc:"at start, deregister this service's managed instances left ConnectionLost by tasks that ECS reports stopped (ecs:DescribeTasks)"`
	OrphanAfter         time.Duration `envconfig:"BASTION_SSM_ORPHAN_AFTER" default:"15m" desc:"how long an instance must be ConnectionLost before the sweep asks ECS whether its task stopped; at least 10m"`
	ReadyTimeout        time.Duration `envconfig:"BASTION_SSM_READY_TIMEOUT" default:"2m" desc:"how long to wait for the managed instance to show Online"`
	AgentRestarts       int           `envconfig:"BASTION_SSM_AGENT_RESTARTS" default:"3" desc:"restarts of an agent that dies unexpectedly before bastion exits non-zero"`
	AgentTaskRole       bool          `envconfig:"BASTION_AGENT_KEEP_TASK_ROLE" default:"false" desc:"let the agent (and so SSM sessions) inherit bastion's AWS credentials: the task role's AWS_CONTAINER_CREDENTIALS_* and AWS_CONTAINER_AUTHORIZATION_TOKEN*, and AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE, AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE, AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN; false drops them for the agent's -register and its run"`
	EndpointSSM         string        `envconfig:"AWS_ENDPOINT_URL_SSM" desc:"SSM endpoint override (standard AWS SDK variable); also given to the agent"`
	EndpointECS         string        `envconfig:"AWS_ENDPOINT_URL_ECS" desc:"ECS endpoint override (standard AWS SDK variable), for the orphan sweep's DescribeTasks"`
	Endpoint            string        `envconfig:"AWS_ENDPOINT_URL" desc:"endpoint override for every AWS service (standard AWS SDK variable)"`
	MetadataURI         string        `envconfig:"ECS_CONTAINER_METADATA_URI_V4" desc:"set by ECS; task metadata for the instance name and tags"`
}

// SecretVars are the variables removed from the environment after decoding:
// the fields of Env tagged secret:"true".
var SecretVars = secretVars()

func secretVars() []string {
	var names []string
	t := reflect.TypeOf(Env{})
	for i := 0; i < t.NumField(); i++ {
		if f := t.Field(i); f.Tag.Get("secret") == "true" {
			names = append(names, f.Tag.Get("envconfig"))
		}
	}
	return names
}

// Variable describes one environment variable for --help and the README.
type Variable struct {
	Name, Default, Description string
}

// Variables lists every variable bastion reads, in declaration order.
func Variables() []Variable {
	t := reflect.TypeOf(Env{})
	vars := make([]Variable, 0, t.NumField())
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		vars = append(vars, Variable{
			Name:        f.Tag.Get("envconfig"),
			Default:     f.Tag.Get("default"),
			Description: f.Tag.Get("desc"),
		})
	}
	return vars
}

// PrintHelp writes the variable table.
func PrintHelp(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VARIABLE\tDEFAULT\tMEANING")
	for _, v := range Variables() {
		def := v.Default
		if def == "" {
			def = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", v.Name, def, v.Description)
	}
	tw.Flush()
}

// readEnv fills Env through envconfig, rewriting its errors so that they
// name the variable and the expected form, never the value.
func readEnv() (Env, error) {
	var e Env
	if err := envconfig.Process("", &e); err != nil {
		var pe *envconfig.ParseError
		if errors.As(err, &pe) {
			return Env{}, fmt.Errorf("entrypoint: %s: not a valid %s", pe.KeyName, typeWord(pe.TypeName))
		}
		return Env{}, fmt.Errorf("entrypoint: %w", err)
	}
	return e, nil
}

// LoadSettings reads and validates every variable as Load does except the
// three key variables, which it neither decodes nor removes from the
// environment; the returned Config has no host key and no authorized keys.
// It is for subcommands that run beside the entrypoint in the same
// container (bastion healthcheck) and must agree with it on defaults and on
// whether SSM is on.
func LoadSettings() (*Config, error) {
	env, err := readEnv()
	if err != nil {
		return nil, err
	}
	env.HostKey, env.HostPublicKey, env.AuthorizedKeys = "", "", ""
	cfg := &Config{}
	if err := cfg.validate(&env); err != nil {
		return nil, err
	}
	cfg.Env = env
	return cfg, nil
}

func typeWord(t string) string {
	switch t {
	case "Duration", "time.Duration":
		return "duration (for example 30s, 2m)"
	case "bool":
		return "boolean (true or false)"
	case "int":
		return "whole number"
	}
	return t
}

// UnknownBastionVars returns BASTION_* variables that are set but not known:
// most likely typos of a known name.
func UnknownBastionVars(environ []string) []string {
	known := map[string]bool{}
	for _, v := range Variables() {
		known[v.Name] = true
	}
	var unknown []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "BASTION_") && !known[name] {
			unknown = append(unknown, name)
		}
	}
	sort.Strings(unknown)
	return unknown
}

// unsetSecrets removes the key variables from this process's environment so
// that no child can inherit them.
func unsetSecrets() {
	for _, name := range SecretVars {
		os.Unsetenv(name)
	}
}
