package sshd

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
	"unicode/utf8"
)

// maxFieldLen bounds a log field whose text the client chooses (user name,
// key comment, certificate id, identification string): a 100 KB key id must
// not make a 100 KB log line.
const maxFieldLen = 256

// capField cuts s to maxFieldLen bytes, on a rune boundary, and says how
// much it dropped.
func capField(s string) string {
	if len(s) <= maxFieldLen {
		return s
	}
	cut := maxFieldLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s…[%d more bytes]", s[:cut], len(s)-cut)
}

// Repeated refusals are summarised: the first refusalBurst lines of one
// kind from one source within refusalWindow are logged as they come, the
// rest are counted and reported in one line when the window ends. A client
// that makes hundreds of refused attempts then costs a few lines, not
// hundreds, and the counts still say what happened.
const (
	refusalBurst  = 10
	refusalWindow = 10 * time.Second
)

type refusalKey struct {
	msg, source string
}

type refusalWindowState struct {
	level              slog.Level
	logged, suppressed int
	timer              *time.Timer
}

// refusalLog rate-limits refusal lines per (message, source).
type refusalLog struct {
	log *slog.Logger

	mu      sync.Mutex
	windows map[refusalKey]*refusalWindowState
	stopped bool
}

func newRefusalLog(log *slog.Logger) *refusalLog {
	return &refusalLog{log: log, windows: map[refusalKey]*refusalWindowState{}}
}

// warn logs msg at warning level unless source has had refusalBurst of them
// in the current window; then it only counts.
func (r *refusalLog) warn(msg, source string, attrs ...any) {
	r.emit(slog.LevelWarn, msg, source, attrs)
}

// info is warn at info level (audit lines of refused attempts).
func (r *refusalLog) info(msg, source string, attrs ...any) {
	r.emit(slog.LevelInfo, msg, source, attrs)
}

func (r *refusalLog) emit(level slog.Level, msg, source string, attrs []any) {
	k := refusalKey{msg, source}
	r.mu.Lock()
	w := r.windows[k]
	if w == nil {
		w = &refusalWindowState{level: level}
		r.windows[k] = w
		if !r.stopped {
			w.timer = time.AfterFunc(refusalWindow, func() { r.flush(k) })
		}
	}
	if w.logged >= refusalBurst {
		w.suppressed++
		r.mu.Unlock()
		return
	}
	w.logged++
	r.mu.Unlock()
	r.log.Log(context.Background(), level, msg, attrs...)
}

// flush ends a window and reports what it held back.
func (r *refusalLog) flush(k refusalKey) {
	r.mu.Lock()
	w := r.windows[k]
	delete(r.windows, k)
	r.mu.Unlock()
	if w != nil && w.suppressed > 0 {
		r.log.Log(context.Background(), w.level, "repeated lines suppressed", "suppressed_msg", k.msg, "source", k.source,
			"count", w.suppressed, "window", refusalWindow.String())
	}
}

// stop reports every open window now; later refusals are logged unsummarised
// only up to the burst (no timers start after stop).
func (r *refusalLog) stop() {
	r.mu.Lock()
	r.stopped = true
	var keys []refusalKey
	for k, w := range r.windows {
		if w.timer != nil && w.timer.Stop() {
			keys = append(keys, k)
		}
	}
	r.mu.Unlock()
	for _, k := range keys {
		r.flush(k)
	}
}
