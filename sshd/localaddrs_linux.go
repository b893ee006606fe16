package sshd

import (
	"context"
	"log/slog"
	"os"

	"golang.org/x/sys/unix"
)

// watchAddrChanges calls changed after every address change the kernel
// announces on its rtnetlink address groups, until ctx ends.
func watchAddrChanges(ctx context.Context, log *slog.Logger, changed func()) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		log.Warn("cannot watch interface addresses; read at start only", "error", err.Error())
		return
	}
	sa := &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		log.Warn("cannot watch interface addresses; read at start only", "error", err.Error())
		return
	}
	// Through os.File the runtime poller waits for messages, and Close
	// wakes the read.
	f := os.NewFile(uintptr(fd), "rtnetlink")
	stop := context.AfterFunc(ctx, func() { f.Close() })
	defer stop()
	// Addresses may have changed between the first read and the bind.
	changed()
	buf := make([]byte, 16<<10)
	for {
		if _, err := f.Read(buf); err != nil {
			if ctx.Err() == nil {
				log.Warn("interface address watch ended", "error", err.Error())
			}
			return
		}
		changed()
	}
}
