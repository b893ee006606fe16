//go:build windows

package ssm

import (
	"os/exec"
	"syscall"
)

// ownProcessGroup is Windows's counterpart of Setpgid. The lifecycle runs
// only in the Linux entrypoint; this keeps the package building for the
// laptop subcommands (bastion ssh-config).
func ownProcessGroup(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.CreationFlags |= syscall.CREATE_NEW_PROCESS_GROUP
}
