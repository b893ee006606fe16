package authkeys

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws/arn"

	"github.com/bastion-dev/bastion/sshd"
)

// The variables that configure the live sources; errors and log lines name
// them.
const (
	EnvSecret  = "BASTION_AUTHORIZED_KEYS_SECRET"
	EnvFile    = "BASTION_AUTHORIZED_KEYS_FILE"
	EnvRefresh = "BASTION_KEYS_REFRESH"
)

// Defaults applied by New to zero fields of Config.
const (
	DefaultRefresh      = 60 * time.Second
	DefaultRetryMin     = time.Second
	DefaultCallTimeout  = 30 * time.Second
	DefaultStartTimeout = time.Minute
)

// InitialVersion is the version name of Config.Initial in logs and in
// Start's result.
const InitialVersion = "initial"

// maxFileSize bounds what is read from the file source. A Secrets Manager
// value is at most 64 KiB; a thousand RSA-4096 keys take about 750 KiB.
const maxFileSize = 4 << 20

// Config says where the live authorized_keys set comes from. Exactly one of
// SecretID and File is set.
type Config struct {
	// SecretID is a Secrets Manager secret name or ARN (EnvSecret) whose
	// SecretString is an authorized_keys file, as text or base64.
	SecretID string
	// File is the path of an authorized_keys file (EnvFile), as text or
	// base64; it is re-read whole and applied when its content changes.
	File string
	// Region is the AWS region for SecretID (AWS_REGION). An ARN's own
	// region wins: Secrets Manager serves a secret only in its region.
	// Required with a secret name.
	Region string
	// Refresh is how often the source is checked (EnvRefresh). Zero:
	// DefaultRefresh. It also caps the retry backoff.
	Refresh time.Duration
	// RetryMin is the delay before the first retry of a failed check; it
	// doubles per failure up to Refresh. Zero: DefaultRetryMin.
	RetryMin time.Duration
	// CallTimeout bounds each Secrets Manager call, the SDK's own retries
	// included. Zero: DefaultCallTimeout.
	CallTimeout time.Duration
	// StartTimeout bounds Start when there is no Initial set. Zero:
	// DefaultStartTimeout.
	StartTimeout time.Duration
	// Initial is the set to serve until the first version is read
	// (ROOT_PUBLIC_SSH_KEY_BASE64ENCODED's keys), so that an outage at start
	// does not stop the bastion. Empty: Start waits for the source.
	Initial []sshd.AuthorizedKey
	// Decode turns a version's content into authorized_keys text; its error
	// names name and never the value. Required: cmd/bastion passes
	// entrypoint.DecodeAuthorizedKeys, so a version reads exactly like
	// ROOT_PUBLIC_SSH_KEY_BASE64ENCODED.
	Decode func(name, value string) ([]byte, error)
	// Logger receives JSON-friendly records; nil discards them.
	Logger *slog.Logger
}

// withDefaults checks c and fills its zero fields.
func (c Config) withDefaults() (Config, error) {
	if c.SecretID == "" && c.File == "" {
		return c, fmt.Errorf("authkeys: set %s or %s", EnvSecret, EnvFile)
	}
	if err := CheckSource(c.SecretID, c.File, c.Region); err != nil {
		return c, err
	}
	switch {
	case c.Decode == nil:
		return c, errors.New("authkeys: Config.Decode is required")
	case c.Refresh < 0:
		return c, fmt.Errorf("authkeys: %s: must be a positive duration", EnvRefresh)
	case c.RetryMin < 0 || c.CallTimeout < 0 || c.StartTimeout < 0:
		return c, errors.New("authkeys: RetryMin, CallTimeout and StartTimeout must not be negative")
	}
	if c.SecretID != "" {
		c.Region, _ = secretRegion(c.SecretID, c.Region) // checked above
	}
	if c.Refresh == 0 {
		c.Refresh = DefaultRefresh
	}
	if c.RetryMin == 0 {
		c.RetryMin = DefaultRetryMin
	}
	if c.CallTimeout == 0 {
		c.CallTimeout = DefaultCallTimeout
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = DefaultStartTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// CheckSource refuses what no Watcher could read: both sources set, a
// secret ARN of the wrong shape, or a secret name without a region. The
// entrypoint calls it too, so that such a value stops the start before
// anything else happens.
func CheckSource(secretID, file, region string) error {
	if secretID != "" && file != "" {
		return fmt.Errorf("authkeys: %s and %s are both set: choose one source of truth", EnvSecret, EnvFile)
	}
	if secretID != "" {
		if _, err := secretRegion(secretID, region); err != nil {
			return err
		}
	}
	return nil
}

// secretRegion is the region to ask for id: an ARN's own, else region.
func secretRegion(id, region string) (string, error) {
	if strings.HasPrefix(id, "arn:") {
		a, err := arn.Parse(id)
		if err != nil || a.Service != "secretsmanager" || a.Region == "" || !strings.HasPrefix(a.Resource, "secret:") {
			return "", fmt.Errorf("authkeys: %s: not a Secrets Manager secret ARN (arn:aws:secretsmanager:<region>:<account>:secret:<name>)", EnvSecret)
		}
		return a.Region, nil
	}
	if region == "" {
		return "", fmt.Errorf("authkeys: AWS_REGION is required with %s (or give the secret's ARN)", EnvSecret)
	}
	return region, nil
}
