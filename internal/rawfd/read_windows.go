//go:build windows

package rawfd

import "syscall"

// Read is one ReadFile on the handle fd.
func Read(fd uintptr, p []byte) (int, error) {
	return syscall.Read(syscall.Handle(fd), p)
}
