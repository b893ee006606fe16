package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/bastion-dev/bastion/internal/atomicfile"
)

// runState is what a running bastion publishes for `bastion healthcheck`:
// where it listens and the host key it proves itself with, so that another
// SSH server on the port cannot pass for it. It holds nothing secret.
type runState struct {
	PID     int    `json:"pid"`
	SSHAddr string `json:"ssh_addr"`
	HostKey string `json:"host_key"` // authorized_keys format
}

// runStateFiles are where the state goes, the first that works: /run is
// the runtime directory; /dev/shm is a tmpfs even on a read-only root file
// system. A variable only so that tests can point it elsewhere.
var runStateFiles = []string{"/run/bastion/ssh.json", "/dev/shm/bastion/ssh.json"}

// writeRunState writes st atomically to the first usable place and
// returns its path.
func writeRunState(st runState) (string, error) {
	data, err := json.Marshal(st)
	if err != nil {
		return "", err
	}
	var errs []error
	for _, path := range runStateFiles {
		if err := atomicfile.Write(path, data, 0o644); err != nil {
			errs = append(errs, err)
			continue
		}
		return path, nil
	}
	return "", fmt.Errorf("run state for the healthcheck: %w", errors.Join(errs...))
}

// readRunState reads the first state file present.
func readRunState() (runState, error) {
	for _, path := range runStateFiles {
		data, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return runState{}, err
		}
		var st runState
		if err := json.Unmarshal(data, &st); err != nil || st.HostKey == "" {
			return runState{}, fmt.Errorf("%s is not a bastion run state", path)
		}
		return st, nil
	}
	return runState{}, fmt.Errorf("no bastion is running here (%s is missing)", runStateFiles[0])
}
