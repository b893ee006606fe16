package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// agentConfig is the part of amazon-ssm-agent.json the fake uses. Decoding
// over defaults mirrors the real agent: unknown keys are ignored.
type agentConfig struct {
	Agent struct {
		Region        string
		ContainerMode bool
	}
	Identity struct {
		ConsumptionOrder []string
	}
	Ssm struct {
		Endpoint string
	}
}

var defaultConsumptionOrder = []string{"OnPrem", "EC2", "CustomIdentity"}

// loadConfig reads the config file; absent = defaults, invalid JSON = error
// (which stops the real agent's start-up).
func loadConfig() (agentConfig, error) {
	var cfg agentConfig
	cfg.Identity.ConsumptionOrder = defaultConsumptionOrder
	raw, err := os.ReadFile(configFile)
	if errors.Is(err, fs.ErrNotExist) {
		return cfg, nil
	}
	if err != nil {
		return cfg, fmt.Errorf("read %s: %w", configFile, err)
	}
	fmt.Printf("Applying config override from %s.\n", configFile)
	if err := json.Unmarshal(raw, &cfg); err != nil {
		fmt.Println("Failed to unmarshal config override. Fall back to default.")
		return cfg, err
	}
	if len(cfg.Identity.ConsumptionOrder) == 0 {
		cfg.Identity.ConsumptionOrder = defaultConsumptionOrder
	}
	return cfg, nil
}

// endpointURL turns Ssm.Endpoint into a base URL. Like the agent's SDK, a bare
// host means https; no endpoint means the public regional one.
func endpointURL(cfg agentConfig, region string) string {
	ep := strings.TrimSpace(cfg.Ssm.Endpoint)
	switch {
	case ep == "":
		return "https://ssm." + region + ".amazonaws.com"
	case strings.Contains(ep, "://"):
		return strings.TrimRight(ep, "/")
	default:
		return "https://" + strings.TrimRight(ep, "/")
	}
}

// serverInfo is the vault's RegistrationKey entry.
type serverInfo struct {
	InstanceID     string `json:"instanceID"`
	Region         string `json:"region"`
	PrivateKey     string `json:"privateKey"`
	PrivateKeyType string `json:"privateKeyType"`
	PrivateKeyDate string `json:"privateKeyCreatedDate"`
}

// readVault returns the stored identity; a missing vault is an empty one.
func readVault() serverInfo {
	var info serverInfo
	raw, err := os.ReadFile(vaultRegKey)
	if err != nil {
		return info
	}
	_ = json.Unmarshal(raw, &info)
	return info
}

// writeVault stores info; every vault entry, directories included, is 0600
// as the agent's file-system vault makes them.
func writeVault(info serverInfo) error {
	if err := os.MkdirAll(dataDir, 0o750); err != nil {
		return fmt.Errorf("create %s: %w", dataDir, err)
	}
	for _, dir := range []string{vaultDir, vaultStoreDir} {
		if err := os.MkdirAll(dir, 0o600); err != nil {
			return fmt.Errorf("create %s: %w", dir, err)
		}
		if err := os.Chmod(dir, 0o600); err != nil {
			return fmt.Errorf("chmod %s: %w", dir, err)
		}
	}
	raw, err := json.Marshal(info)
	if err != nil {
		return fmt.Errorf("marshal vault entry: %w", err)
	}
	if err := writeFile0600(vaultRegKey, raw); err != nil {
		return err
	}
	manifest, _ := json.Marshal(map[string]string{"RegistrationKey": vaultRegKey})
	return writeFile0600(vaultManifest, manifest)
}

func writeFile0600(path string, data []byte) error {
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	return nil
}

func splitLines(s string) []string { return strings.Split(s, "\n") }

func cut(s, sep string) (string, string, bool) { return strings.Cut(s, sep) }

func trimQuotes(s string) string { return strings.Trim(strings.TrimSpace(s), `"'`) }
