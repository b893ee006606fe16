// Package e2e drives the real bastion binary with real peers: the OpenSSH
// client (ssh -J, -W, -L, scp, rsync), an OpenSSH sshd as the jump target,
// TCP services on loopback, PID and mount namespaces, the fake SSM API and
// the fake amazon-ssm-agent.
package e2e

import (
	"os"
	"testing"

	"github.com/bastion-dev/bastion/test/harness"
)

func TestMain(m *testing.M) {
	code := m.Run()
	harness.Cleanup()
	os.Exit(code)
}
