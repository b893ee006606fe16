package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-dev/bastion/entrypoint"
	"github.com/bastion-dev/bastion/internal/procfs"
	"github.com/bastion-dev/bastion/ssm"
)

// What the healthcheck looks at in SSM mode: the agent's real registration
// file and process name (variables only so that tests can point them
// elsewhere).
var (
	registrationFile = ssm.RegistrationFile
	agentName        = ssm.DefaultAgentPath
)

// healthBudget is the whole check's deadline: Docker and ECS run it every
// few seconds and it must never pile up.
const healthBudget = 900 * time.Millisecond

// healthcheck exits 0 only if this bastion answers SSH on its address
// (the key exchange proves the host key it published in its run state, so
// another SSH server on the port does not pass) and, in SSM mode, the agent
// runs and the registration file exists. It reads the settings as the
// entrypoint does (never the keys) and finishes within a second. A
// configuration the entrypoint would refuse is unhealthy: no bastion runs
// with it.
func healthcheck(args []string) int {
	if len(args) != 0 {
		fmt.Fprintln(os.Stderr, "usage: bastion healthcheck")
		return 2
	}
	deadline := time.Now().Add(healthBudget)
	cfg, err := entrypoint.LoadSettings()
	if err != nil {
		fmt.Fprintf(os.Stderr, "unhealthy: %v\n", err)
		return 1
	}
	host, port, err := net.SplitHostPort(cfg.Env.SSHAddr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "unhealthy: BASTION_SSH_ADDR: want host:port")
		return 1
	}
	st, err := readRunState()
	if err != nil {
		fmt.Fprintf(os.Stderr, "unhealthy: %v\n", err)
		return 1
	}
	if port == "0" {
		// Any free port: the one it got is in the run state.
		if _, p, err := net.SplitHostPort(st.SSHAddr); err == nil {
			port = p
		}
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	hostKey, _, _, _, err := gossh.ParseAuthorizedKey([]byte(st.HostKey))
	if err != nil {
		fmt.Fprintf(os.Stderr, "unhealthy: run state: bad host key: %v\n", err)
		return 1
	}
	if err := checkSSH(net.JoinHostPort(host, port), hostKey, deadline); err != nil {
		fmt.Fprintf(os.Stderr, "unhealthy: ssh: %v\n", err)
		return 1
	}
	if cfg.SSM {
		if _, err := os.Stat(registrationFile); err != nil {
			fmt.Fprintf(os.Stderr, "unhealthy: ssm: %s missing\n", registrationFile)
			return 1
		}
		if !processRunning(agentName) {
			fmt.Fprintf(os.Stderr, "unhealthy: ssm: %s not running\n", agentName)
			return 1
		}
	}
	fmt.Println("healthy")
	return 0
}

var errWrongHostKey = errors.New("the SSH server on this address is not this bastion (its host key differs from the one the bastion published)")

// checkSSH runs a key exchange with addr and checks the server's host key
// is want. Authenticating is not the point: the exchange alone proves the
// server holds the private key.
func checkSSH(addr string, want gossh.PublicKey, deadline time.Time) error {
	c, err := net.DialTimeout("tcp", addr, time.Until(deadline))
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(deadline)
	proved := false
	cfg := &gossh.ClientConfig{
		User:          "healthcheck",
		ClientVersion: "SSH-2.0-bastion-healthcheck",
		HostKeyCallback: func(_ string, _ net.Addr, key gossh.PublicKey) error {
			if !bytes.Equal(key.Marshal(), want.Marshal()) {
				return errWrongHostKey
			}
			proved = true
			return nil
		},
	}
	_, _, _, err = gossh.NewClientConn(c, addr, cfg)
	if proved {
		return nil
	}
	if err == nil {
		return errors.New("the server accepted an unauthenticated client")
	}
	return err
}

// processRunning looks for a live (not zombie) process by command name.
func processRunning(name string) bool {
	procs, _ := procfs.All()
	for _, p := range procs {
		if p.Comm == procfs.Comm(name) && p.Alive() {
			return true
		}
	}
	return false
}
