// Command bastion is the PID 1 of an ECS/Fargate SSH bastion container:
// an embedded SSH jump server, the SSM agent's hybrid-activation lifecycle
// and a container init, in one static binary. Run with no arguments as the
// container entrypoint; see --help for subcommands and variables.
package main

import (
	"fmt"
	"os"

	"github.com/bastion-dev/bastion/entrypoint"
)

const usage = `usage: bastion [command]

Commands:
  (none)        run as the container entrypoint (SSH server, SSM agent, init)
  keygen [HOST] print a new ed25519 host key as the two environment values
                for Secrets Manager, with its fingerprint and known_hosts line
  healthcheck   exit 0 if the SSH listener answers (and, with SSM, the agent
                runs and the instance is registered); for HEALTHCHECK
  ssh-config (-name NAME | -tag K=V) [-alias HOST] [-region R] [-host-key FILE]
                find the bastion's Online managed instance and print a
                ~/.ssh/config block reaching it through Session Manager
  --help        this text

Environment variables:
`

func main() {
	args := os.Args[1:]
	cmd := ""
	if len(args) > 0 {
		cmd = args[0]
	}
	switch cmd {
	case "":
		os.Exit(run())
	case "-h", "-help", "--help", "help":
		fmt.Print(usage)
		entrypoint.PrintHelp(os.Stdout)
	case "keygen":
		os.Exit(keygen(os.Stdout, args[1:]))
	case "healthcheck":
		os.Exit(healthcheck(args[1:]))
	case "ssh-config":
		os.Exit(sshConfig(os.Stdout, os.Stderr, args[1:]))
	default:
		fmt.Fprintf(os.Stderr, "bastion: unknown command %q (see bastion --help)\n", cmd)
		os.Exit(2)
	}
}
