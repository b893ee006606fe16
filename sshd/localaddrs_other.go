//go:build !linux

package sshd

import (
	"context"
	"log/slog"
	"time"
)

// watchAddrChanges polls where the kernel has no rtnetlink.
func watchAddrChanges(ctx context.Context, _ *slog.Logger, changed func()) {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			changed()
		}
	}
}
