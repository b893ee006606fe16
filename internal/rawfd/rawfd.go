// Package rawfd reads and writes a raw descriptor, as handed out by
// syscall.RawConn.Read, on every system bastion builds for: a descriptor is
// an int on Unix and a Handle on Windows. The readers in sshd and
// internal/pipes run in the Linux entrypoint; Windows and macOS builds
// (the laptop subcommands) only need them to compile.
package rawfd
