package notify

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/internal/logtest"
	"github.com/bastion-dev/bastion/test/webhook"
)

func newLog() (*logtest.Buffer, *slog.Logger) {
	log, logs := logtest.New(slog.LevelDebug)
	return logs, log
}

// noSecret fails if the log (or any string) holds the receiver's URL or a
// part of it: the token, the path, the host:port.
func noSecret(t *testing.T, what, s string, rcv *webhook.Receiver) {
	t.Helper()
	for _, part := range []string{rcv.URL, rcv.Token, "/services/T0NOTIFY", "T0NOTIFY", "B0NOTIFY",
		strings.TrimPrefix(strings.TrimPrefix(rcv.Server.URL, "http://"), "https://")} {
		if strings.Contains(s, part) {
			t.Errorf("%s contains %q:\n%s", what, part, s)
		}
	}
}

// fastConfig is a Config for tests: the timing knobs short, so a test takes
// milliseconds, except where a test sets them itself.
func fastConfig(url string, log *slog.Logger) Config {
	return Config{
		URL:            url,
		Log:            log,
		MinInterval:    time.Millisecond,
		Window:         5 * time.Millisecond,
		Backoff:        10 * time.Millisecond,
		MaxBackoff:     40 * time.Millisecond,
		RequestTimeout: 5 * time.Second,
		FlushTimeout:   500 * time.Millisecond,
		ReportInterval: time.Hour,
	}
}

// start makes a notifier and runs it until the test ends; stop cancels Run
// and waits for it, returning how long that took.
type running struct {
	*Notifier
	cancel context.CancelFunc
	done   chan struct{}
}

func startNotifier(t *testing.T, cfg Config) *running {
	t.Helper()
	n, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return runNotifier(t, n)
}

func runNotifier(t *testing.T, n *Notifier) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Notifier: n, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		if err := n.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	t.Cleanup(func() { r.stop(t) })
	return r
}

func (r *running) stop(t *testing.T) time.Duration {
	t.Helper()
	start := time.Now()
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("Run did not return 10 s after cancel")
	}
	return time.Since(start)
}

func sessionStart(conn, user string) Event {
	return Event{Kind: KindSessionStart, Conn: conn, User: user, Fingerprint: "SHA256:" + conn,
		Comment: user + "@laptop", Client: "127.0.0.1:40000"}
}

func tunnelOpen(conn, user, dest string) Event {
	e := sessionStart(conn, user)
	e.Kind = KindTunnelOpen
	e.Destination = dest
	return e
}
