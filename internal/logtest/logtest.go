// Package logtest collects JSON log lines (log/slog's JSONHandler, or a
// process's output) for tests and finds or waits for records in them. Only
// tests and test/harness import it.
package logtest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Buffer is an io.Writer that keeps everything written to it; safe for
// concurrent use by loggers, processes' output copiers and readers.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// New returns a logger writing JSON records at level and above to a new
// Buffer.
func New(level slog.Level) (*slog.Logger, *Buffer) {
	b := &Buffer{}
	return slog.New(slog.NewJSONHandler(b, &slog.HandlerOptions{Level: level})), b
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Records returns the lines written so far, each parsed as a JSON object;
// a line that is not one (a panic, a child's plain output) is returned as
// {"raw": line}.
func (b *Buffer) Records() []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader([]byte(b.String())))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		m := map[string]any{}
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			m = map[string]any{"raw": sc.Text()}
		}
		out = append(out, m)
	}
	return out
}

// Find returns the records whose msg is msg and whose fields include every
// key of match with the same value written as text (see Text).
func (b *Buffer) Find(msg string, match map[string]string) []map[string]any {
	var out []map[string]any
	for _, r := range b.Records() {
		if r["msg"] == msg && Matches(r, match) {
			out = append(out, r)
		}
	}
	return out
}

// Has reports whether a record with msg and match was written.
func (b *Buffer) Has(msg string, match map[string]string) bool {
	return len(b.Find(msg, match)) > 0
}

// WaitFor waits up to timeout for a record with msg and match and returns
// the first; the test fails with the whole log otherwise.
func (b *Buffer) WaitFor(t testing.TB, timeout time.Duration, msg string, match map[string]string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if found := b.Find(msg, match); len(found) > 0 {
			return found[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log record %q with %v within %v; log:\n%s", msg, match, timeout, b.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Follower reads a Buffer's records in order, each at most once: for a
// test that expects a sequence (the same message several times).
type Follower struct {
	b    *Buffer
	next int // index of the first record not yet returned or skipped
}

// Follow returns a Follower at the start of b.
func (b *Buffer) Follow() *Follower { return &Follower{b: b} }

// Next waits up to timeout for the next record with msg, skipping the
// others before it, and returns it; the test fails with the whole log
// otherwise.
func (f *Follower) Next(t testing.TB, timeout time.Duration, msg string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		recs := f.b.Records()
		for ; f.next < len(recs); f.next++ {
			if recs[f.next]["msg"] == msg {
				f.next++
				return recs[f.next-1]
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no further log record %q within %v; log:\n%s", msg, timeout, f.b.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Matches reports whether record r has every field of match, compared as
// text. A field match names but r lacks never matches, even against "".
func Matches(r map[string]any, match map[string]string) bool {
	for k, want := range match {
		got, ok := r[k]
		if !ok || Text(got) != want {
			return false
		}
	}
	return true
}

// Text writes a decoded JSON value as match compares it: numbers in plain
// decimal (1048576, not fmt's 1.048576e+06), true and false, strings as
// they are.
func Text(v any) string {
	if f, ok := v.(float64); ok {
		return strconv.FormatFloat(f, 'f', -1, 64)
	}
	return fmt.Sprint(v)
}
