// Package authkeys keeps the authorized_keys set current from a live
// source: a Secrets Manager secret (BASTION_AUTHORIZED_KEYS_SECRET) or a
// file (BASTION_AUTHORIZED_KEYS_FILE), checked every BASTION_KEYS_REFRESH
// and at once on Reload (SIGHUP).
//
// A new version replaces the set only whole: it is decoded and parsed
// completely first, and one bad line, or no key at all, rejects it (the log
// names the source, the version and the line, never the content), so a
// typo never locks everyone out. A failed check (Secrets Manager down,
// access denied, file missing) keeps the current set and is retried with
// backoff.
//
// It imports sshd for the key type and parser only; cmd/bastion hands it
// the decoder (entrypoint.DecodeAuthorizedKeys) and a callback that swaps
// the server's set.
package authkeys

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/bastion-dev/bastion/sshd"
)

// Watcher reads one source. Call Start once, then Run; Reload and Version
// may be called from any goroutine.
type Watcher struct {
	cfg    Config
	src    source
	log    *slog.Logger
	reload chan struct{}

	mu       sync.Mutex
	seen     string               // version read last, accepted or rejected
	current  string               // version of keys; "" = none yet
	keys     []sshd.AuthorizedKey // the set in force
	failures int                  // failed checks in a row
	lastErr  error                // why the last check did not apply a version
}

// New checks cfg and prepares its source. With a secret it loads the AWS
// configuration (credential chain, region, endpoint overrides), which
// makes no network call; nothing is read before Start.
func New(ctx context.Context, cfg Config) (*Watcher, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	var src source
	if cfg.SecretID != "" {
		if src, err = newSecretSource(ctx, cfg.SecretID, cfg.Region, cfg.CallTimeout); err != nil {
			return nil, err
		}
	} else {
		src = &fileSource{path: cfg.File}
	}
	w := &Watcher{
		cfg:    cfg,
		src:    src,
		log:    cfg.Logger.With("variable", src.variable(), "source", src.name()),
		reload: make(chan struct{}, 1),
	}
	if len(cfg.Initial) > 0 {
		w.keys, w.current = cfg.Initial, InitialVersion
	}
	return w, nil
}

// Start returns the set to begin serving with. With an Initial set it
// returns that set and InitialVersion at once, and Run reads the source
// right away. Without one it reads the source until a version is accepted
// (failures retried with backoff, rejected versions waited out) and
// returns it; after StartTimeout, or when ctx ends, it gives up with an
// error naming the variable and the last reason, because a bastion that
// nobody may use is no use.
func (w *Watcher) Start(ctx context.Context) ([]sshd.AuthorizedKey, string, error) {
	w.mu.Lock()
	keys, version := w.keys, w.current
	w.mu.Unlock()
	if version != "" {
		return keys, version, nil
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, w.cfg.StartTimeout)
	defer cancel()
	for attempt := 1; ; attempt++ {
		wait := w.backoff(attempt)
		if keys, version, ok := w.check(ctx, func(int) time.Duration { return wait }); ok {
			return keys, version, nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			if parent.Err() != nil {
				return nil, "", fmt.Errorf("authkeys: %s: start: %w", w.src.variable(), parent.Err())
			}
			w.mu.Lock()
			last := w.lastErr
			w.mu.Unlock()
			if last == nil {
				last = fmt.Errorf("no answer from the source: %w", ctx.Err())
			}
			return nil, "", fmt.Errorf("authkeys: %s: no usable authorized keys within %v: %w", w.src.variable(), w.cfg.StartTimeout, last)
		case <-w.reload:
			t.Stop()
		case <-t.C:
		}
	}
}

// Run checks the source every Refresh, and at once after Reload, until ctx
// ends (then it returns nil). Each accepted version is handed to apply,
// on Run's goroutine, in order; apply receives the whole new set, which it
// must not modify (the watcher diffs the next version against it). A failed
// check is retried after RetryMin, doubling up to Refresh, while the
// current set stays.
func (w *Watcher) Run(ctx context.Context, apply func(keys []sshd.AuthorizedKey, version string)) error {
	if apply == nil {
		return errors.New("authkeys: Run needs an apply callback")
	}
	w.mu.Lock()
	next := w.cfg.Refresh
	if w.current == InitialVersion || w.current == "" {
		next = 0 // the initial set is a stand-in: read the source now
	}
	w.mu.Unlock()
	t := time.NewTimer(next)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.reload:
			t.Stop() // Go 1.23 timers: Reset below discards a stale tick
		case <-t.C:
		}
		if keys, version, ok := w.check(ctx, w.backoff); ok {
			apply(keys, version)
		}
		if ctx.Err() != nil {
			return nil
		}
		next := w.cfg.Refresh
		if n := w.failureCount(); n > 0 {
			next = w.backoff(n)
		}
		t.Reset(next)
	}
}

// Reload asks for a check now (SIGHUP). It never blocks; requests made
// while one is pending are one request.
func (w *Watcher) Reload() {
	select {
	case w.reload <- struct{}{}:
	default:
	}
}

// Version is the version in force: InitialVersion, the secret's version id,
// or "sha256:<16 hex digits>" of the file; "" before Start.
func (w *Watcher) Version() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.current
}

// backoff is the delay before retry n (1-based): RetryMin doubled per
// failure, at most Refresh.
func (w *Watcher) backoff(n int) time.Duration {
	d := w.cfg.RetryMin
	for i := 1; i < n && d < w.cfg.Refresh; i++ {
		d *= 2
	}
	return min(d, w.cfg.Refresh)
}

func (w *Watcher) failureCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.failures
}

// check reads the source once and returns a version to apply: one that was
// accepted and differs from the set in force. retryIn is the wait its
// caller will make after a failure (given the failures so far), for the
// log line.
func (w *Watcher) check(ctx context.Context, retryIn func(failures int) time.Duration) ([]sshd.AuthorizedKey, string, bool) {
	w.mu.Lock()
	seen := w.seen
	w.mu.Unlock()

	r, err := w.src.read(ctx, seen)
	if err != nil {
		if ctx.Err() != nil {
			return nil, "", false // shutting down: not a failure of the source
		}
		w.mu.Lock()
		w.failures++
		w.lastErr = err
		n := w.failures
		w.mu.Unlock()
		w.log.Warn("authorized keys check failed; keeping the current set",
			"error", err.Error(), "failures", n, "retry_in", retryIn(n).String(), "version", w.Version())
		return nil, "", false
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failures > 0 {
		w.log.Info("authorized keys check recovered", "after_failures", w.failures)
		w.failures = 0
	}
	if r.version == w.seen {
		w.log.Debug("authorized keys unchanged", "version", r.version)
		return nil, "", false
	}
	w.seen = r.version
	if r.version == w.current {
		// Back to the version in force after a rejected one.
		w.lastErr = nil
		w.log.Info("authorized keys back to the version in force", "version", r.version)
		return nil, "", false
	}
	keys, rej := parse(w.cfg.Decode, w.src.variable(), r)
	if rej != nil {
		w.lastErr = fmt.Errorf("version %s rejected: %w", r.version, rej)
		attrs := []any{"version", r.version, "error", rej.Error(), "version_in_force", w.current}
		if rej.Line > 0 {
			attrs = append(attrs, "line", rej.Line)
		}
		w.log.Error("authorized keys version rejected; keeping the current set", attrs...)
		return nil, "", false
	}
	added, removed, changed := diff(w.keys, keys)
	w.log.Info("authorized keys applied", "version", r.version, "previous_version", w.current, "keys", len(keys),
		"added", added, "removed", removed, "changed", changed)
	w.keys, w.current, w.lastErr = keys, r.version, nil
	return keys, r.version, true
}
