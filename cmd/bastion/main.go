// Command bastion is the PID 1 of an ECS/Fargate SSH bastion container:
// an embedded SSH jump server, the SSM agent's hybrid-activation lifecycle
// and a container init, in one static binary. Run with no arguments as the
// container entrypoint; see --help for subcommands and variables.
//
// The entrypoint is Linux-only (run_linux.go); keygen, ssh-config and
// --help also build and work on macOS and Windows, an operator's laptop.
package main

import (
	"fmt"
	"io"
	"os"

	"github.com/bastion-dev/bastion/entrypoint"
)

const usage = `usage: bastion [command]

Commands:
  (none)        run as the container entrypoint (SSH server, SSM agent, init);
                Linux only
  keygen [HOST] print a new ed25519 host key as the two environment values
                for Secrets Manager, with its fingerprint and known_hosts line
  healthcheck   exit 0 if the SSH listener answers (and, with SSM, the agent
                runs and the instance is registered); for HEALTHCHECK
  ssh-config (-name NAME | -tag K=V) [-alias HOST] [-region R] [-host-key FILE]
                find the bastion's Online managed instance and print a
                ~/.ssh/config block reaching it through Session Manager
  --help        this text; COMMAND --help explains one command

Environment variables:
`

const keygenUsage = `usage: bastion keygen [HOST]

Prints a new ed25519 host key as SSH_PRIVATE_HOST_KEY_BASE64ENCODED and
SSH_PUBLIC_HOST_KEY_BASE64ENCODED, the values to store in Secrets Manager,
with its SHA256 fingerprint and, as a comment, a known_hosts line naming
HOST (default "bastion", the HostKeyAlias that bastion ssh-config writes).
Every other line is a comment, so the output is also an environment file:
docker run --env-file FILE, or set -a; . FILE; set +a in a shell.
`

const healthcheckUsage = `usage: bastion healthcheck

Exits 0 if the SSH listener on BASTION_SSH_ADDR answers with an SSH banner
and, with SSM on, amazon-ssm-agent runs and the instance is registered;
exits 1 with one line saying what is wrong otherwise. It finishes within a
second: the image's HEALTHCHECK and the ECS task definition run it.
`

// exitUsage is a subcommand's exit code for bad arguments.
const exitUsage = 2

func main() {
	os.Exit(dispatch(os.Stdout, os.Stderr, os.Args[1:]))
}

// dispatch runs the command args name and returns the exit code. Asked for
// help (-h, -help or --help anywhere in its arguments), a command prints its
// usage on stdout and does nothing else.
func dispatch(stdout, stderr io.Writer, args []string) int {
	cmd := ""
	if len(args) > 0 {
		cmd = args[0]
	}
	var rest []string
	if len(args) > 1 {
		rest = args[1:]
	}
	switch cmd {
	case "":
		return run()
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		entrypoint.PrintHelp(stdout)
		return 0
	case "keygen":
		if helpRequested(rest) {
			fmt.Fprint(stdout, keygenUsage)
			return 0
		}
		return keygen(stdout, stderr, rest)
	case "healthcheck":
		if helpRequested(rest) {
			fmt.Fprint(stdout, healthcheckUsage)
			return 0
		}
		return healthcheck(rest)
	case "ssh-config":
		return sshConfig(stdout, stderr, rest)
	default:
		fmt.Fprintf(stderr, "bastion: unknown command %q (see bastion --help)\n", cmd)
		return exitUsage
	}
}

// helpRequested reports whether args ask for help; "--" ends the options.
func helpRequested(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-h", "-help", "--help":
			return true
		}
	}
	return false
}

// offLinuxMessage is what the entrypoint says on another system: it is a
// container init, built on macOS and Windows only for the laptop tools.
func offLinuxMessage(goos string) string {
	return fmt.Sprintf("bastion: the entrypoint needs Linux (it is the init of a container); on %s only "+
		"bastion keygen, bastion ssh-config and bastion --help work", goos)
}
