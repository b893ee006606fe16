package ssm

import (
	"context"
	"errors"
	"fmt"
	"os"
)

// clearStale removes what an earlier run of this container left on the
// same filesystem: its managed instance is deregistered (the new
// registration overwrites the agent's vault, "-register -y", so "-clear"
// is not needed) and the registration file is removed, so that a file seen
// after "-register" is the new one.
func (l *Lifecycle) clearStale(ctx context.Context) error {
	file := l.path(RegistrationFile)
	old, err := readRegistration(file)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		l.log.Warn("unreadable registration file removed", "step", "stale", "error", err.Error())
	case old.ManagedInstanceID != "":
		gone, err := l.deregisterInstance(ctx, old.ManagedInstanceID)
		switch {
		case err != nil:
			l.log.Warn("previous instance not deregistered; the orphan sweep of a later task will", "step", "stale",
				"instance_id", old.ManagedInstanceID, "error", err.Error())
		case gone:
			l.log.Info("previous instance was already deregistered", "step", "stale", "instance_id", old.ManagedInstanceID)
		default:
			l.log.Info("previous instance deregistered", "step", "stale", "instance_id", old.ManagedInstanceID)
		}
	}
	if err := os.Remove(file); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("ssm: remove stale registration file: %w", err)
	}
	return nil
}
