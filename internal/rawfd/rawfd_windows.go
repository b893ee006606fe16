//go:build windows

package rawfd

import "syscall"

// Read is one ReadFile on the handle fd.
func Read(fd uintptr, p []byte) (int, error) {
	return syscall.Read(syscall.Handle(fd), p)
}

// Write is one WriteFile on the handle fd.
func Write(fd uintptr, p []byte) (int, error) {
	return syscall.Write(syscall.Handle(fd), p)
}
