package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

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

// healthcheck exits 0 only if the SSH listener answers with an SSH banner
// and, in SSM mode, the agent runs and the registration file exists. It
// reads the settings as the entrypoint does (never the keys) and finishes
// within a second. A configuration the entrypoint would refuse is unhealthy:
// no bastion runs with it.
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
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	if err := checkBanner(net.JoinHostPort(host, port), deadline); err != nil {
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

func checkBanner(addr string, deadline time.Time) error {
	c, err := net.DialTimeout("tcp", addr, time.Until(deadline))
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(deadline)
	// RFC 4253 4.2: the server may send other lines before its version
	// line; at most a few, and the line is at most 255 bytes.
	r := bufio.NewReaderSize(io.LimitReader(c, 8192), 512)
	for i := 0; i < 16; i++ {
		line, err := r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("no banner: %w", err)
		}
		if strings.HasPrefix(line, "SSH-2.0-") {
			// Answer with our own version line so the server sees a
			// polite client that went away, not garbage.
			fmt.Fprint(c, "SSH-2.0-bastion-healthcheck\r\n")
			return nil
		}
	}
	return fmt.Errorf("unexpected banner")
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
