//go:build unix

package rawfd

import "syscall"

// Read is one read(2) on fd: EAGAIN when nothing is buffered on a
// non-blocking descriptor, 0 at end of file.
func Read(fd uintptr, p []byte) (int, error) {
	return syscall.Read(int(fd), p)
}

// Write is one write(2) on fd: EAGAIN when a non-blocking descriptor's
// buffer is full.
func Write(fd uintptr, p []byte) (int, error) {
	return syscall.Write(int(fd), p)
}
