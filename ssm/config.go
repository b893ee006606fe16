package ssm

import (
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Fixed paths used by amazon-ssm-agent on Linux. They are the real paths;
// tests that need them run in a mount namespace.
const (
	// RegistrationFile is written by "amazon-ssm-agent -register" once the
	// registration has been accepted: {"ManagedInstanceID":"mi-…","Region":"…"}.
	RegistrationFile = "/var/lib/amazon/ssm/registration"
	// IPCDir holds the agent's IPC channels; stale ones from an earlier run of
	// the same container confuse a new agent, so it is removed before start.
	IPCDir = "/var/lib/amazon/ssm/ipc"
	// SeelogPath is the agent's logging configuration.
	SeelogPath = "/etc/amazon/ssm/seelog.xml"
	// AgentConfigPath is the agent's application configuration.
	AgentConfigPath = "/etc/amazon/ssm/amazon-ssm-agent.json"
)

// Tag keys put on the activation, and thereby on the managed instance it
// registers. The orphan sweep selects instances by TagCluster and TagFamily,
// and IAM policies may use them in ssm:resourceTag/<key> conditions: they are
// part of the product's contract.
const (
	TagCluster   = "bastion:ecs-cluster"  // ECS cluster name (after the last "/" of the ARN)
	TagTaskARN   = "bastion:ecs-task-arn" // ECS task ARN
	TagFamily    = "bastion:ecs-family"   // task definition family
	TagManagedBy = "bastion:managed-by"   // always TagManagedByValue
	// TagManagedByValue is the value of TagManagedBy.
	TagManagedByValue = "bastion"
	// reservedTagPrefix marks the keys above; user tags may not use it.
	reservedTagPrefix = "bastion:"
)

// EnvRequireAdvancedTier is the variable users set to "false" to run without
// the advanced-instances tier; it is named in the preflight error.
const EnvRequireAdvancedTier = "BASTION_SSM_REQUIRE_ADVANCED_TIER"

// Defaults applied by New to zero fields of Config.
const (
	DefaultOrphanAfter    = 15 * time.Minute
	DefaultReadyTimeout   = 2 * time.Minute
	DefaultActivationTTL  = time.Hour
	DefaultAgentPath      = "amazon-ssm-agent"
	DefaultRestarts       = 3
	DefaultRestartBackoff = 2 * time.Second

	// MinOrphanAfter is the least ConnectionLost time that makes an
	// instance an orphan candidate: two of the agent's 5-minute ping
	// intervals, so that one missed ping never does.
	MinOrphanAfter = 10 * time.Minute

	// MaxActivationTTL is the service's limit: an activation can expire at
	// most 30 days ahead. The model documents no minimum; the activation is
	// deleted right after the registration anyway.
	MaxActivationTTL = 30 * 24 * time.Hour
)

// Config configures the lifecycle. Zero durations and an empty AgentPath
// take the defaults above; booleans are taken as given, so start from
// DefaultConfig to get RequireAdvancedTier and OrphanSweep on.
type Config struct {
	// Region is the AWS region (AWS_REGION). Required.
	Region string
	// IAMRole is the NAME of the role the agent assumes (INSTANCE_IAM_ROLE),
	// at most 64 characters, with its path if it has one
	// ("service-role/Name"), never an ARN. It must trust ssm.amazonaws.com.
	// Required.
	IAMRole string
	// InstanceName is the managed instance's name (INSTANCE_NAME). Empty: the
	// ECS task's "<family>-<task id>", or the host name when not on ECS.
	// Characters the service refuses are replaced with "-", and the name is
	// cut to 256 characters.
	InstanceName string
	// LogGroup is the CloudWatch Logs group of the agent's logs
	// (CLOUDWATCH_RECEIVER_LOG_GROUP). Empty: no CloudWatch receiver.
	LogGroup string
	// Tags are extra tags for the activation and the managed instance. Keys
	// starting with "bastion:" are reserved and refused.
	Tags map[string]string
	// RequireAdvancedTier makes a "standard" activation tier an error (Session
	// Manager needs "advanced" for mi- instances). False: warn and go on.
	RequireAdvancedTier bool
	// OrphanSweep deregisters, at Start, instances of the same ECS cluster and
	// family whose PingStatus is ConnectionLost since at least OrphanAfter
	// (at least MinOrphanAfter) and whose ECS task has stopped.
	OrphanSweep bool
	OrphanAfter time.Duration
	// ReadyTimeout bounds the wait for PingStatus Online after the agent
	// starts.
	ReadyTimeout time.Duration
	// ActivationTTL sets the activation's ExpirationDate to now+TTL; at most
	// MaxActivationTTL.
	ActivationTTL time.Duration
	// Endpoint is the SSM endpoint our SDK uses when overridden
	// (AWS_ENDPOINT_URL_SSM or AWS_ENDPOINT_URL). It is rendered as
	// Ssm.Endpoint so the agent (and its -register) talks to the same
	// endpoint. Empty: the regional default.
	Endpoint string
	// MetadataURI is ECS_CONTAINER_METADATA_URI_V4. Empty: not on ECS, so no
	// ECS tags and no orphan sweep.
	MetadataURI string
	// AgentPath is the agent executable, looked up on PATH when it has no
	// slash.
	AgentPath string
	// Restarts is how often an agent that exits unexpectedly is restarted
	// before Run gives up; 0 means DefaultRestarts, negative means never.
	// The count starts over once the agent has run for 10 minutes.
	Restarts int
	// RestartBackoff is the first pause before a restart; it doubles, up to
	// 30 s.
	RestartBackoff time.Duration
	// Clock returns the current time; nil means time.Now.
	Clock func() time.Time
}

// DefaultConfig returns a Config with every default set, including
// RequireAdvancedTier and OrphanSweep.
func DefaultConfig() Config {
	return Config{
		RequireAdvancedTier: true,
		OrphanSweep:         true,
		OrphanAfter:         DefaultOrphanAfter,
		ReadyTimeout:        DefaultReadyTimeout,
		ActivationTTL:       DefaultActivationTTL,
		AgentPath:           DefaultAgentPath,
		Restarts:            DefaultRestarts,
		RestartBackoff:      DefaultRestartBackoff,
	}
}

// withDefaults returns a copy of c with zero fields defaulted.
func (c Config) withDefaults() Config {
	if c.OrphanAfter <= 0 {
		c.OrphanAfter = DefaultOrphanAfter
	}
	if c.ReadyTimeout <= 0 {
		c.ReadyTimeout = DefaultReadyTimeout
	}
	if c.ActivationTTL <= 0 {
		c.ActivationTTL = DefaultActivationTTL
	}
	if c.AgentPath == "" {
		c.AgentPath = DefaultAgentPath
	}
	switch {
	case c.Restarts == 0:
		c.Restarts = DefaultRestarts
	case c.Restarts < 0:
		c.Restarts = 0
	}
	if c.RestartBackoff <= 0 {
		c.RestartBackoff = DefaultRestartBackoff
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	tags := make(map[string]string, len(c.Tags))
	for k, v := range c.Tags {
		tags[k] = v
	}
	c.Tags = tags
	return c
}

// tagPattern is the service's pattern for tag keys and values and for
// DefaultInstanceName.
var tagPattern = regexp.MustCompile(`^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$`)

// instanceIDPattern is the form of a managed instance id.
var instanceIDPattern = regexp.MustCompile(`^mi-[0-9a-f]{17}$`)

// logGroupPattern is CloudWatch Logs' pattern for log group names.
var logGroupPattern = regexp.MustCompile(`^[.\-_/#A-Za-z0-9]{1,512}$`)

// Validate reports the first unusable field, naming its variable, by the
// service's rules (IamRole a role name of at most 64 characters;
// DefaultInstanceName and tags at most 256 and 128/256 characters of
// letters, digits, spaces and _.:/=+-@). It is the one copy of these rules:
// entrypoint calls it before any AWS call, Start again. Zero durations
// count as their defaults.
func (c Config) Validate() error {
	if c.Region == "" {
		return fmt.Errorf("ssm: AWS_REGION is required")
	}
	if err := checkIAMRole(c.IAMRole); err != nil {
		return err
	}
	if utf8.RuneCountInString(c.InstanceName) > 256 || !tagPattern.MatchString(c.InstanceName) {
		return fmt.Errorf("ssm: INSTANCE_NAME must have at most 256 letters, digits, spaces and _.:/=+-@")
	}
	if c.LogGroup != "" && !logGroupPattern.MatchString(c.LogGroup) {
		return fmt.Errorf("ssm: CLOUDWATCH_RECEIVER_LOG_GROUP is not a valid log group name")
	}
	if c.OrphanAfter != 0 && c.OrphanAfter < MinOrphanAfter {
		return fmt.Errorf("ssm: BASTION_SSM_ORPHAN_AFTER must be at least %v (two of the agent's 5-minute pings), so a live task's missed ping never gets it deregistered", MinOrphanAfter)
	}
	if c.ActivationTTL > MaxActivationTTL {
		return fmt.Errorf("ssm: activation TTL %v exceeds the service's maximum of 30 days", c.ActivationTTL)
	}
	for k, v := range c.Tags {
		if err := CheckUserTag(k, v); err != nil {
			return err
		}
	}
	return nil
}

// checkIAMRole: CreateActivation's IamRole is a role name (with its path,
// if any) of at most 64 characters; an ARN is the common mistake.
func checkIAMRole(role string) error {
	switch {
	case role == "":
		return fmt.Errorf("ssm: INSTANCE_IAM_ROLE is required")
	case strings.Contains(role, ":"):
		return fmt.Errorf("ssm: INSTANCE_IAM_ROLE must be a role name (or path/name), not an ARN")
	case strings.ContainsFunc(role, unicode.IsSpace):
		return fmt.Errorf("ssm: INSTANCE_IAM_ROLE must be a role name (or path/name): role names have no spaces")
	case utf8.RuneCountInString(role) > 64:
		return fmt.Errorf("ssm: INSTANCE_IAM_ROLE must be a role name of at most 64 characters")
	}
	return nil
}

// CheckUserTag reports whether k=v is usable as a user tag: the service's
// lengths and pattern, and neither AWS's "aws:" nor bastion's own prefix.
// entrypoint calls it for BASTION_SSM_TAGS before any AWS call.
func CheckUserTag(k, v string) error {
	if err := validateTag(k, v); err != nil {
		return err
	}
	if strings.HasPrefix(k, reservedTagPrefix) {
		return fmt.Errorf("ssm: tag key %q: the prefix %q is reserved for bastion's own tags", k, reservedTagPrefix)
	}
	return nil
}

func validateTag(k, v string) error {
	switch {
	case k == "" || utf8.RuneCountInString(k) > 128:
		return fmt.Errorf("ssm: tag key %q must have 1 to 128 characters", k)
	case utf8.RuneCountInString(v) > 256:
		return fmt.Errorf("ssm: tag %q: value longer than 256 characters", k)
	case strings.HasPrefix(strings.ToLower(k), "aws:"):
		return fmt.Errorf("ssm: tag key %q: the prefix \"aws:\" is reserved by AWS", k)
	case !tagPattern.MatchString(k):
		return fmt.Errorf("ssm: tag key %q has characters outside letters, digits, spaces and _.:/=+-@", k)
	case !tagPattern.MatchString(v):
		return fmt.Errorf("ssm: tag %q: value has characters outside letters, digits, spaces and _.:/=+-@", k)
	}
	return nil
}

// sanitizeName makes s acceptable as DefaultInstanceName: runes outside the
// service's pattern become "-", surrounding spaces are trimmed, and the
// result is cut to 256 runes.
func sanitizeName(s string) string {
	var b strings.Builder
	n := 0
	for _, r := range strings.TrimSpace(s) {
		if n == 256 {
			break
		}
		if !tagPattern.MatchString(string(r)) {
			r = '-'
		}
		b.WriteRune(r)
		n++
	}
	return strings.TrimSpace(b.String())
}

// cutRunes returns s cut to at most n runes.
func cutRunes(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n])
}
