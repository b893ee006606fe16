package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/bastion-dev/bastion/test/fakeaws"
)

// processRegistration follows core/agent_parser.go: prompt (only without -y
// and with a stored identity), key, vault emptied, API call, vault,
// registration file, success line.
func processRegistration(log *logger) int {
	if role != "" && (activationCode == "" || activationID == "") && region != "" {
		log.Errorf("Registration failed due to IAM role based registration is not supported by this fake agent")
		return 1
	}
	if activationCode == "" || activationID == "" || region == "" {
		if clear {
			return clearRegistration(log)
		}
		flagUsage()
		return 1
	}
	if !force && readVault().InstanceID != "" {
		ok, err := askForConfirmation()
		if err != nil {
			log.Errorf("Registration failed due to %v", err)
			return 1
		}
		if !ok {
			log.Infof("Registration canceled by user")
			return 1
		}
	}
	id, err := registerManagedInstance()
	if err != nil {
		log.Errorf("Registration failed due to %v", err)
		return 1
	}
	log.Infof("Successfully registered the instance with AWS SSM using Managed instance-id: %s", id)
	return 0
}

// askForConfirmation reads one token with fmt.Scanln, exactly like the real
// agent, so /dev/null gives "EOF" and an empty line "unexpected newline".
func askForConfirmation() (bool, error) {
	var response string
	fmt.Print("\nInstance already registered. Would you like to override existing with new registration information? [Yes/No]: ")
	if _, err := fmt.Scanln(&response); err != nil {
		return false, err
	}
	if len(response) > 0 {
		switch strings.ToLower(response[:1]) {
		case "y":
			return true, nil
		case "n":
			return false, nil
		}
	}
	return false, fmt.Errorf("Invalid response received.")
}

func registerManagedInstance() (string, error) {
	// RSA-2048 like the real agent (takes well under a second).
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", fmt.Errorf("error generating signing keys. %v", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return "", fmt.Errorf("error generating signing keys. %v", err)
	}
	publicKey := base64.StdEncoding.EncodeToString(pub)
	privateKey := base64.StdEncoding.EncodeToString(x509.MarshalPKCS1PrivateKey(key))
	keyDate := time.Now().UTC().Format("2006-01-02 15:04:05.999999999 -0700 MST")

	// Checking write access before registering: the old identity is lost
	// here even if the call below fails.
	if err := writeVault(serverInfo{PrivateKey: privateKey, PrivateKeyType: "Rsa", PrivateKeyDate: keyDate}); err != nil {
		return "", fmt.Errorf("Unable to save registration information. %v\nTry running as sudo/administrator.", err)
	}
	fingerprint := fakeaws.NewUUID()

	m := modes()
	if _, ok := m["register-hang"]; ok {
		// As if the API call never returned; the line (not the real
		// agent's) tells tests the hang has begun.
		fmt.Println("fake-agent: registration hangs (FAKE_AGENT_MODE=register-hang)")
		select {}
	}
	if _, ok := m["refuse-register"]; ok {
		host := "ssm." + region + ".amazonaws.com"
		return "", fmt.Errorf("error registering the instance with AWS SSM. RequestError: send request failed\n"+
			"caused by: Post \"https://%s/\": dial tcp: lookup %s on 127.0.0.11:53: no such host", host, host)
	}
	cfg, err := loadConfig()
	if err != nil {
		return "", fmt.Errorf("error registering the instance with AWS SSM. %v", err)
	}
	client := &ssmClient{endpoint: endpointURL(cfg, region), region: region, http: &http.Client{Timeout: 30 * time.Second}}
	var out struct{ InstanceId string }
	err = client.call(context.Background(), "RegisterManagedInstance", map[string]string{
		"ActivationCode": activationCode,
		"ActivationId":   activationID,
		"PublicKey":      publicKey,
		"PublicKeyType":  "Rsa",
		"Fingerprint":    fingerprint,
	}, &out)
	if err != nil {
		return "", fmt.Errorf("error registering the instance with AWS SSM. %v", err)
	}
	id := out.InstanceId
	if err := writeVault(serverInfo{InstanceID: id, Region: region, PrivateKey: privateKey, PrivateKeyType: "Rsa", PrivateKeyDate: keyDate}); err != nil {
		return id, fmt.Errorf("error persisting the instance registration information. %v", err)
	}
	reg, err := json.Marshal(map[string]string{"ManagedInstanceID": id, "Region": region})
	if err != nil {
		return "", fmt.Errorf("Failed to marshal registration info. %v", err)
	}
	// Plain WriteFile like the agent: the mode applies when the file is created.
	if err := os.WriteFile(registrationFile, reg, 0o600); err != nil {
		return "", fmt.Errorf("Failed to write registration info to file. %v", err)
	}
	return id, nil
}

func clearRegistration(log *logger) int {
	if err := writeVault(serverInfo{}); err != nil {
		log.Errorf("error clearing the instance registration information. %v\nTry running as sudo/administrator.", err)
		return 1
	}
	log.Infof("Registration information has been removed from the instance.")
	return 0
}
