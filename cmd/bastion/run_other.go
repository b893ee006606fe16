//go:build !linux

package main

import (
	"fmt"
	"os"
	"runtime"
)

// exitNotLinux is the entrypoint's exit code off Linux.
const exitNotLinux = 1

// run stands in for the Linux entrypoint: reaping, signal handling and the
// SSM agent's lifecycle are Linux's (see run_linux.go).
func run() int {
	fmt.Fprintln(os.Stderr, offLinuxMessage(runtime.GOOS))
	return exitNotLinux
}
