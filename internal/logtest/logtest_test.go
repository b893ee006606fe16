package logtest

import (
	"fmt"
	"log/slog"
	"testing"
	"time"
)

func TestFindMatchesAsText(t *testing.T) {
	log, buf := New(slog.LevelDebug)
	log.Info("tunnel", "bytes_up", 1048576, "ok", true, "to", "10.0.0.1:22", "ratio", 0.5)
	log.Debug("other", "bytes_up", 3)
	fmt.Fprintln(buf, "panic: not JSON")
	for _, tc := range []struct {
		msg   string
		match map[string]string
		want  int
	}{
		{"tunnel", nil, 1},
		{"tunnel", map[string]string{"bytes_up": "1048576", "ok": "true", "to": "10.0.0.1:22", "ratio": "0.5"}, 1},
		{"tunnel", map[string]string{"bytes_up": "1.048576e+06"}, 0},
		{"tunnel", map[string]string{"missing": ""}, 0},
		{"tunnel", map[string]string{"ok": "false"}, 0},
		{"other", map[string]string{"bytes_up": "3", "level": "DEBUG"}, 1},
		{"nothing", nil, 0},
	} {
		if got := len(buf.Find(tc.msg, tc.match)); got != tc.want {
			t.Errorf("Find(%q, %v) = %d records, want %d", tc.msg, tc.match, got, tc.want)
		}
	}
	recs := buf.Records()
	if len(recs) != 3 || recs[2]["raw"] != "panic: not JSON" {
		t.Fatalf("Records = %v", recs)
	}
}

func TestWaitFor(t *testing.T) {
	log, buf := New(slog.LevelInfo)
	go func() {
		time.Sleep(20 * time.Millisecond)
		log.Info("ready", "n", 7)
	}()
	if r := buf.WaitFor(t, 5*time.Second, "ready", map[string]string{"n": "7"}); Text(r["n"]) != "7" {
		t.Fatalf("WaitFor = %v", r)
	}
}

func TestFollowerReadsInOrder(t *testing.T) {
	log, buf := New(slog.LevelInfo)
	f := buf.Follow()
	log.Info("a", "n", 1)
	log.Info("b")
	log.Info("a", "n", 2)
	if r := f.Next(t, time.Second, "a"); Text(r["n"]) != "1" {
		t.Fatalf("first a: %v", r)
	}
	if r := f.Next(t, time.Second, "a"); Text(r["n"]) != "2" {
		t.Fatalf("second a: %v", r)
	}
	done := make(chan map[string]any)
	go func() { done <- f.Next(t, 5*time.Second, "a") }()
	log.Info("a", "n", 3)
	if r := <-done; Text(r["n"]) != "3" {
		t.Fatalf("third a, logged while waiting: %v", r)
	}
}
