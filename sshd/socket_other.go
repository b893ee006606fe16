//go:build !linux

package sshd

import (
	"syscall"

	"github.com/bastion-dev/bastion/internal/rawfd"
)

// Elsewhere than Linux (macOS and Windows builds of the laptop tools) the
// ordinary calls do.
func sysRead(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := rawfd.Read(fd, p)
	return errnoOf(n, err)
}

func sysWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := rawfd.Write(fd, p)
	return errnoOf(n, err)
}

func errnoOf(n int, err error) (int, syscall.Errno) {
	if err != nil {
		if e, ok := err.(syscall.Errno); ok {
			return 0, e
		}
		return 0, syscall.EIO
	}
	return n, 0
}
