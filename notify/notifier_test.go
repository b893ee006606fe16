package notify

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/test/webhook"
)

// With the defaults, a session start and the tunnels right after it reach
// the webhook as one Slack-compatible POST within 2 s.
func TestSessionStartDelivered(t *testing.T) {
	t.Parallel()
	rcv := webhook.Start(t)
	logs, log := newLog()
	n := startNotifier(t, Config{URL: rcv.URL, Log: log, Name: "bastion-test"})

	start := time.Now()
	n.Notify(ssmStart())
	for i := range 3 {
		n.Notify(tunnel(ssmStart(), "db.internal:5432", time.Duration(i)*time.Millisecond))
	}
	req := rcv.Wait(t, 1, 5*time.Second)[0]
	if lat := req.At.Sub(start); lat > 2*time.Second {
		t.Errorf("first POST %v after the session start, want ≤ 2s", lat)
	}
	t.Logf("session start to POST: %v", req.At.Sub(start))

	if req.Method != http.MethodPost || req.ContentType != "application/json" || req.JSONErr != nil {
		t.Errorf("method %s, content type %q, JSON error %v", req.Method, req.ContentType, req.JSONErr)
	}
	if !strings.HasSuffix(req.Path, rcv.Token) {
		t.Errorf("posted to %q", req.Path)
	}
	want := "alice (" + aliceARN + ") connected to bastion-test via SSM session " + aliceSSM +
		" from 127.0.0.1; tunnels: db.internal:5432 ×3"
	if req.Text != want {
		t.Errorf("text:\n got %s\nwant %s", req.Text, want)
	}
	if req.Event["kind"] != "session_start" || req.Event["principal"] != aliceARN || req.Event["tunnels"] != 3.0 {
		t.Errorf("event = %v", req.Event)
	}

	// One message: the next POST is a later connection's.
	n.Notify(keyStart())
	if got := rcv.Wait(t, 2, 5*time.Second)[1]; got.Event["conn"] != "c2" {
		t.Errorf("second POST is %v, want conn c2's", got.Event)
	}
	n.stop(t) // the counters are final once Run has returned
	if s := n.Stats(); s.Sent != 2 || s.Accepted != 5 || s.Dropped != 0 || s.Retried != 0 {
		t.Errorf("stats = %+v", s)
	}
	noSecret(t, "log", logs.String(), rcv)
}

// TestPrincipalKnownLater: a session whose principal was not yet known when
// its events were taken (the lookup runs off the handshake's path) is
// named by it when the message leaves, after its coalescing window.
func TestPrincipalKnownLater(t *testing.T) {
	t.Parallel()
	rcv := webhook.Start(t)
	_, log := newLog()
	var asked atomic.Int32
	cfg := fastConfig(rcv.URL, log)
	cfg.PrincipalOf = func(id string) string {
		asked.Add(1)
		if id == aliceSSM {
			return aliceARN
		}
		return ""
	}
	n := startNotifier(t, cfg)
	e := ssmStart()
	e.Principal = "" // not looked up yet
	n.Notify(e)
	n.Notify(keyStart()) // no SSM session: nothing to ask
	reqs := rcv.Wait(t, 2, 5*time.Second)
	if reqs[0].Event["principal"] != aliceARN || !strings.Contains(reqs[0].Text, aliceARN) {
		t.Errorf("first message: %q %v", reqs[0].Text, reqs[0].Event)
	}
	if _, ok := reqs[1].Event["principal"]; ok {
		t.Errorf("a key without a session got a principal: %v", reqs[1].Event)
	}
	if got := asked.Load(); got != 1 {
		t.Errorf("PrincipalOf asked %d times, want once (the session without one)", got)
	}
}

// One connection opening 50 tunnels makes one POST; a tunnel after that
// message left makes a new, tunnel-only one.
func TestCoalesceTunnels(t *testing.T) {
	t.Parallel()
	rcv := webhook.Start(t)
	_, log := newLog()
	cfg := fastConfig(rcv.URL, log)
	cfg.Window = 300 * time.Millisecond // 50 Notify calls take microseconds
	n := startNotifier(t, cfg)

	start := time.Now()
	n.Notify(sessionStart("c1", "alice"))
	for i := range 50 {
		n.Notify(tunnelOpen("c1", "alice", fmt.Sprintf("db%d.internal:5432", i%5)))
	}
	first := rcv.Wait(t, 1, 5*time.Second)[0]
	// The message waited for the window: what comes within it merges.
	if waited := first.At.Sub(start); waited < cfg.Window {
		t.Errorf("first POST %v after the session start, before the %v window closed", waited, cfg.Window)
	}
	if first.Event["kind"] != "session_start" || first.Event["tunnels"] != 50.0 {
		t.Fatalf("first POST event = %v", first.Event)
	}
	dests, _ := first.Event["destinations"].([]any)
	if len(dests) != 5 {
		t.Fatalf("destinations = %v", dests)
	}
	for _, d := range dests {
		if d.(map[string]any)["count"] != 10.0 {
			t.Errorf("destination %v", d)
		}
	}
	if !strings.Contains(first.Text, "db0.internal:5432 ×10") {
		t.Errorf("text = %s", first.Text)
	}

	n.Notify(tunnelOpen("c1", "alice", "cache.internal:6379"))
	second := rcv.Wait(t, 2, 5*time.Second)[1]
	if second.Event["kind"] != "tunnel_open" || second.Event["conn"] != "c1" || second.Event["tunnels"] != 1.0 {
		t.Errorf("second POST event = %v", second.Event)
	}
	n.stop(t)
	if s := n.Stats(); s.Sent != 2 || s.Accepted != 52 {
		t.Errorf("stats = %+v", s)
	}
}

// A burst from many connections leaves one message per connection, in
// order, each arriving at least MinInterval after the previous one.
func TestRateLimit(t *testing.T) {
	t.Parallel()
	rcv := webhook.Start(t)
	_, log := newLog()
	cfg := fastConfig(rcv.URL, log)
	cfg.MinInterval = 200 * time.Millisecond
	n := startNotifier(t, cfg)

	const conns = 6
	for i := range conns {
		c := fmt.Sprintf("c%d", i)
		n.Notify(sessionStart(c, "user"+c))
		n.Notify(tunnelOpen(c, "user"+c, "db:5432"))
	}
	reqs := rcv.Wait(t, conns, 10*time.Second)
	for i, r := range reqs {
		if r.Event["conn"] != fmt.Sprintf("c%d", i) || r.Event["tunnels"] != 1.0 {
			t.Errorf("POST %d: event %v", i, r.Event)
		}
		if i == 0 {
			continue
		}
		// The sender starts a POST MinInterval after the previous answer,
		// and a handler starts before it answers: arrivals are at least
		// MinInterval apart whatever the latency.
		if gap := r.At.Sub(reqs[i-1].At); gap < cfg.MinInterval {
			t.Errorf("POST %d arrived %v after the previous one, want ≥ %v\n%s", i, gap, cfg.MinInterval, webhook.Summary(reqs))
		}
	}
}

// 429 and 503 are retried no earlier than their Retry-After, in seconds or
// as an HTTP date; a Retry-After beyond MaxRetryAfter is cut to it.
func TestRetryAfter(t *testing.T) {
	tests := []struct {
		name          string
		status        int
		retryAfter    func() string
		maxRetryAfter time.Duration
		wantMin       func(first webhook.Request, header string) time.Time
		wantMax       time.Duration
	}{
		{"429 seconds", http.StatusTooManyRequests, func() string { return "1" }, 0,
			func(f webhook.Request, _ string) time.Time { return f.At.Add(time.Second) }, 5 * time.Second},
		{"503 seconds", http.StatusServiceUnavailable, func() string { return "1" }, 0,
			func(f webhook.Request, _ string) time.Time { return f.At.Add(time.Second) }, 5 * time.Second},
		{"429 HTTP date", http.StatusTooManyRequests,
			func() string { return time.Now().Add(2 * time.Second).UTC().Format(http.TimeFormat) }, 0,
			func(_ webhook.Request, h string) time.Time { d, _ := http.ParseTime(h); return d }, 5 * time.Second},
		{"429 for an hour is cut to MaxRetryAfter", http.StatusTooManyRequests, func() string { return "3600" },
			300 * time.Millisecond,
			func(f webhook.Request, _ string) time.Time { return f.At.Add(300 * time.Millisecond) }, 5 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rcv := webhook.Start(t)
			logs, log := newLog()
			header := tt.retryAfter()
			rcv.Script(webhook.Reply{Status: tt.status, Body: "rate_limited", RetryAfter: header})
			cfg := fastConfig(rcv.URL, log)
			cfg.MaxRetryAfter = tt.maxRetryAfter
			n := startNotifier(t, cfg)
			n.Notify(sessionStart("c1", "alice"))

			reqs := rcv.Wait(t, 2, 10*time.Second)
			earliest := tt.wantMin(reqs[0], header)
			if reqs[1].At.Before(earliest) {
				t.Errorf("retry at %v, before %v (Retry-After %q)", reqs[1].At, earliest, header)
			}
			if gap := reqs[1].At.Sub(reqs[0].At); gap > tt.wantMax {
				t.Errorf("retry %v after the first POST", gap)
			}
			if string(reqs[1].Body) != string(reqs[0].Body) {
				t.Errorf("retry body differs")
			}
			logs.WaitFor(t, 10*time.Second, "notification retry", nil)
			n.stop(t)
			if s := n.Stats(); s.Sent != 1 || s.Retried != 1 || s.Dropped != 0 {
				t.Errorf("stats = %+v", s)
			}
			noSecret(t, "log", logs.String(), rcv)
		})
	}
}

// Server errors are retried with backoff until one succeeds.
func TestRetryServerErrors(t *testing.T) {
	t.Parallel()
	rcv := webhook.Start(t)
	logs, log := newLog()
	rcv.Script(webhook.Reply{Status: 500, Body: "oops"}, webhook.Reply{Status: 502}, webhook.Reply{Status: 408})
	n := startNotifier(t, fastConfig(rcv.URL, log))
	n.Notify(sessionStart("c1", "alice"))

	reqs := rcv.Wait(t, 4, 10*time.Second)
	for _, r := range reqs[1:] {
		if string(r.Body) != string(reqs[0].Body) {
			t.Errorf("retry body differs")
		}
	}
	n.stop(t)
	if s := n.Stats(); s.Sent != 1 || s.Retried != 3 || s.Dropped != 0 {
		t.Errorf("stats = %+v", s)
	}
	if len(logs.Find("notification retry", nil)) != 3 || len(logs.Find("notification dropped", nil)) != 0 {
		t.Errorf("log:\n%s", logs)
	}
	noSecret(t, "log", logs.String(), rcv)
}

// A message whose attempts are used up is dropped and counted; a failure
// burst is logged once with its reason, then summarised, then a line says
// delivery works again.
func TestGiveUp(t *testing.T) {
	t.Parallel()
	rcv := webhook.Start(t)
	logs, log := newLog()
	rcv.SetDefault(webhook.Reply{Status: 500, Body: "internal_error"})
	cfg := fastConfig(rcv.URL, log)
	cfg.MaxAttempts = 3
	cfg.ReportInterval = 100 * time.Millisecond
	n := startNotifier(t, cfg)

	n.Notify(sessionStart("c1", "alice"))
	r := logs.WaitFor(t, 10*time.Second, "notification dropped", nil)
	for k, v := range map[string]any{"reason": "HTTP 500 internal_error", "attempts": 3.0, "status": 500.0,
		"conn": "c1", "kind": "session_start", "level": "WARN"} {
		if r[k] != v {
			t.Errorf("dropped line %s = %v, want %v", k, r[k], v)
		}
	}
	if got := len(rcv.Requests()); got != 3 {
		t.Errorf("%d POSTs, want 3", got)
	}

	n.Notify(sessionStart("c2", "bob"))
	s := logs.WaitFor(t, 10*time.Second, "notifications still failing", nil)
	if s["dropped"] != 1.0 || s["dropped_while_failing"] != 2.0 || s["reason"] != "HTTP 500 internal_error" {
		t.Errorf("summary line = %v", s)
	}
	if got := len(logs.Find("notification dropped", nil)); got != 1 {
		t.Errorf("%d 'notification dropped' lines, want 1 per burst", got)
	}

	rcv.SetDefault(webhook.Reply{})
	n.Notify(sessionStart("c3", "carol"))
	if a := logs.WaitFor(t, 10*time.Second, "notifications delivered again", nil); a["dropped_while_failing"] != 2.0 {
		t.Errorf("recovery line = %v", a)
	}
	if st := n.Stats(); st.Sent != 1 || st.DroppedFailed != 2 || st.Dropped != 2 || st.Retried != 4 {
		t.Errorf("stats = %+v", st)
	}
	if got := len(rcv.Requests()); got != 7 {
		t.Errorf("%d POSTs, want 3+3+1", got)
	}
	noSecret(t, "log", logs.String(), rcv)
}

// Answers that retrying cannot change are final after one POST; a redirect
// is not followed.
func TestFinalAnswers(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		reply      func(self, other *webhook.Receiver) webhook.Reply
		wantReason string
	}{
		{"404 deleted webhook", func(_, _ *webhook.Receiver) webhook.Reply { return webhook.Reply{Status: 404, Body: "no_service"} },
			"HTTP 404 no_service"},
		{"403", func(_, _ *webhook.Receiver) webhook.Reply {
			return webhook.Reply{Status: 403, Body: "action_prohibited"}
		},
			"HTTP 403 action_prohibited"},
		{"400 body echoing the URL's token is not logged", func(self, _ *webhook.Receiver) webhook.Reply {
			return webhook.Reply{Status: 400, Body: self.Token}
		}, "HTTP 400"},
		{"302 not followed", func(_, other *webhook.Receiver) webhook.Reply {
			return webhook.Reply{Status: 302, Location: other.URL}
		}, "HTTP 302"},
		{"307 not followed", func(_, other *webhook.Receiver) webhook.Reply {
			return webhook.Reply{Status: 307, Location: other.URL}
		}, "HTTP 307"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rcv, other := webhook.Start(t), webhook.Start(t)
			logs, log := newLog()
			rcv.SetDefault(tt.reply(rcv, other))
			n := startNotifier(t, fastConfig(rcv.URL, log))
			n.Notify(sessionStart("c1", "alice"))
			r := logs.WaitFor(t, 10*time.Second, "notification dropped", nil)
			if r["reason"] != tt.wantReason || r["attempts"] != 1.0 {
				t.Errorf("dropped line = %v, want reason %q", r, tt.wantReason)
			}
			n.stop(t)
			if got := len(rcv.Requests()); got != 1 {
				t.Errorf("%d POSTs, want 1", got)
			}
			if got := len(other.Requests()); got != 0 {
				t.Errorf("redirect followed: %d POSTs at its target", got)
			}
			if s := n.Stats(); s.DroppedFailed != 1 || s.Retried != 0 {
				t.Errorf("stats = %+v", s)
			}
			noSecret(t, "log", logs.String(), rcv)
			noSecret(t, "log", logs.String(), other)
		})
	}
}

// Network-level failures are retried, then dropped with a reason that names
// neither the URL nor its host and port.
func TestNetworkFailures(t *testing.T) {
	t.Parallel()
	t.Run("connection refused", func(t *testing.T) {
		t.Parallel()
		rcv := webhook.Start(t)
		rcv.Close() // nothing listens on its port any more
		logs, log := newLog()
		cfg := fastConfig(rcv.URL, log)
		cfg.MaxAttempts = 2
		n := startNotifier(t, cfg)
		n.Notify(sessionStart("c1", "alice"))
		if r := logs.WaitFor(t, 10*time.Second, "notification dropped", nil); r["reason"] != "connection refused" || r["attempts"] != 2.0 {
			t.Errorf("dropped line = %v", r)
		}
		noSecret(t, "log", logs.String(), rcv)
	})
	t.Run("timeout", func(t *testing.T) {
		t.Parallel()
		rcv := webhook.Start(t)
		rcv.SetDefault(webhook.Reply{Hang: true})
		logs, log := newLog()
		cfg := fastConfig(rcv.URL, log)
		cfg.MaxAttempts = 2
		cfg.RequestTimeout = 200 * time.Millisecond
		n := startNotifier(t, cfg)
		n.Notify(sessionStart("c1", "alice"))
		if r := logs.WaitFor(t, 10*time.Second, "notification dropped", nil); r["reason"] != "timeout" {
			t.Errorf("dropped line = %v", r)
		}
		if got := len(rcv.Requests()); got != 2 {
			t.Errorf("%d POSTs, want 2", got)
		}
		noSecret(t, "log", logs.String(), rcv)
	})
	t.Run("TLS unknown authority", func(t *testing.T) {
		t.Parallel()
		rcv := webhook.StartTLS(t)
		logs, log := newLog()
		cfg := fastConfig(rcv.URL, log)
		cfg.MaxAttempts = 1
		n := startNotifier(t, cfg)
		n.Notify(sessionStart("c1", "alice"))
		if r := logs.WaitFor(t, 10*time.Second, "notification dropped", nil); r["reason"] != "tls: certificate signed by an unknown authority" {
			t.Errorf("dropped line = %v", r)
		}
		if got := len(rcv.Requests()); got != 0 {
			t.Errorf("%d requests passed an unverified handshake", got)
		}
		noSecret(t, "log", logs.String(), rcv)
	})
	t.Run("TLS verified", func(t *testing.T) {
		t.Parallel()
		rcv := webhook.StartTLS(t)
		logs, log := newLog()
		cfg := fastConfig(rcv.URL, log)
		cfg.RootCAs = x509.NewCertPool()
		cfg.RootCAs.AddCert(rcv.Server.Certificate())
		n := startNotifier(t, cfg)
		n.Notify(sessionStart("c1", "alice"))
		if r := rcv.Wait(t, 1, 5*time.Second)[0]; r.Event["conn"] != "c1" {
			t.Errorf("event = %v", r.Event)
		}
		noSecret(t, "log", logs.String(), rcv)
	})
}

// Plain http is checked again on the address dialed: were "localhost" to
// resolve elsewhere, the dial is refused (before connect: no packet leaves)
// and the message is final at once.
func TestPlainHTTPDialCheck(t *testing.T) {
	t.Parallel()
	rcv := webhook.Start(t)
	logs, log := newLog()
	n, err := New(fastConfig(rcv.URL, log))
	if err != nil {
		t.Fatal(err)
	}
	// As if the name had resolved to 192.0.2.1 (TEST-NET-1).
	inner := n.transport.DialContext
	n.transport.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return inner(ctx, network, "192.0.2.1:80")
	}
	runNotifier(t, n)
	n.Notify(sessionStart("c1", "alice"))
	if r := logs.WaitFor(t, 10*time.Second, "notification dropped", nil); r["reason"] != "refused: plain http only to a loopback address" || r["attempts"] != 1.0 {
		t.Errorf("dropped line = %v", r)
	}
	noSecret(t, "log", logs.String(), rcv)
}

// A full queue drops events that would need a new message, counts them and
// reports them in one line; events merging into waiting messages are kept.
func TestQueueOverflow(t *testing.T) {
	t.Parallel()
	rcv := webhook.Start(t)
	logs, log := newLog()
	cfg := fastConfig(rcv.URL, log)
	cfg.QueueSize = 5
	cfg.ReportInterval = 200 * time.Millisecond
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Before Run: the queue fills and stays full while the burst comes.
	for i := range 5 {
		n.Notify(sessionStart(fmt.Sprintf("c%d", i), "alice"))
	}
	for i := range 100 {
		n.Notify(sessionStart(fmt.Sprintf("d%d", i), "mallory"))
	}
	for i := range 50 {
		n.Notify(tunnelOpen(fmt.Sprintf("c%d", i%5), "alice", "db:5432"))
	}
	if s := n.Stats(); s.DroppedQueueFull != 100 || s.Dropped != 100 || s.Accepted != 55 || s.Queued != 5 {
		t.Fatalf("stats = %+v", s)
	}

	r := runNotifier(t, n)
	line := logs.WaitFor(t, 10*time.Second, "notifications dropped: queue full", nil)
	if line["dropped"] != 100.0 || line["dropped_total"] != 100.0 || line["queue_size"] != 5.0 || line["level"] != "WARN" {
		t.Errorf("drop line = %v", line)
	}
	reqs := rcv.Wait(t, 5, 10*time.Second)
	for i, q := range reqs {
		if q.Event["conn"] != fmt.Sprintf("c%d", i) || q.Event["tunnels"] != 10.0 {
			t.Errorf("POST %d: %v", i, q.Event)
		}
	}
	r.stop(t)
	if got := len(logs.Find("notifications dropped: queue full", nil)); got != 1 {
		t.Errorf("%d drop lines, want 1:\n%s", got, logs)
	}
	if got := len(rcv.Requests()); got != 5 {
		t.Errorf("%d POSTs, want 5", got)
	}
	noSecret(t, "log", logs.String(), rcv)
}

// A webhook that accepts and never answers costs Notify nothing, and Run
// still returns within FlushTimeout (the default, 2 s) of its context's end,
// counting what it could not send.
func TestHangingWebhook(t *testing.T) {
	t.Parallel()
	rcv := webhook.Start(t)
	rcv.SetDefault(webhook.Reply{Hang: true})
	logs, log := newLog()
	n := startNotifier(t, Config{URL: rcv.URL, Log: log})

	n.Notify(sessionStart("c0", "alice"))
	rcv.Wait(t, 1, 5*time.Second) // Run is now stuck in that POST

	const calls = 20000
	durs := make([]time.Duration, calls)
	for i := range calls {
		e := tunnelOpen(fmt.Sprintf("c%d", 1+i%500), "alice", fmt.Sprintf("db%d:5432", i%7))
		if i%40 == 0 {
			e.Kind = KindSessionStart
		}
		t0 := time.Now()
		n.Notify(e)
		durs[i] = time.Since(t0)
	}
	slices.Sort(durs)
	var total time.Duration
	for _, d := range durs {
		total += d
	}
	mean, p99, maxD := total/calls, durs[calls*99/100], durs[calls-1]
	t.Logf("Notify with the webhook hanging: mean %v, p50 %v, p99 %v, max %v over %d calls", mean, durs[calls/2], p99, maxD, calls)
	// A Notify that waited on the webhook would take seconds; these bounds
	// are for a lock and a map update, with the race detector on.
	if mean > 50*time.Microsecond || maxD > 100*time.Millisecond {
		t.Errorf("Notify: mean %v, max %v", mean, maxD)
	}

	took := n.stop(t)
	t.Logf("Run returned %v after cancel", took)
	if took < 2*time.Second-50*time.Millisecond || took > 3*time.Second {
		// Not before: the POST on the wire gets the whole flush time.
		t.Errorf("Run returned %v after cancel, want ≈ FlushTimeout (2s)", took)
	}
	s := n.Stats()
	if s.Sent != 0 || s.DroppedShutdown != 501 || s.Queued != 0 {
		t.Errorf("stats = %+v, want 500 queued + 1 on the wire unsent", s)
	}
	if r := logs.WaitFor(t, 10*time.Second, "notifications unsent at shutdown", nil); r["dropped"] != 501.0 {
		t.Errorf("unsent line = %v", r)
	}
	n.Notify(sessionStart("late", "alice"))
	if s := n.Stats(); s.DroppedShutdown != 502 {
		t.Errorf("event after Run: stats = %+v", s)
	}
	noSecret(t, "log", logs.String(), rcv)
}

// When Run's context ends, waiting messages leave at once (the coalescing
// window no longer applies) while they fit in FlushTimeout at MinInterval;
// the rest are counted.
func TestFlushOnShutdown(t *testing.T) {
	t.Parallel()
	rcv := webhook.Start(t)
	logs, log := newLog()
	cfg := fastConfig(rcv.URL, log)
	cfg.Window = time.Hour
	cfg.MinInterval = 5 * time.Second
	cfg.FlushTimeout = 900 * time.Millisecond
	n := startNotifier(t, cfg)
	for i := range 3 {
		n.Notify(sessionStart(fmt.Sprintf("c%d", i), "alice"))
	}
	took := n.stop(t)
	if took > cfg.FlushTimeout+500*time.Millisecond {
		t.Errorf("Run returned %v after cancel", took)
	}
	reqs := rcv.Requests()
	if len(reqs) != 1 || reqs[0].Event["conn"] != "c0" {
		t.Fatalf("flushed %d POSTs: %s", len(reqs), webhook.Summary(reqs))
	}
	if s := n.Stats(); s.Sent != 1 || s.DroppedShutdown != 2 {
		t.Errorf("stats = %+v", s)
	}
	if r := logs.WaitFor(t, 10*time.Second, "notifications unsent at shutdown", nil); r["dropped"] != 2.0 {
		t.Errorf("unsent line = %v", r)
	}
}

func TestRunTwice(t *testing.T) {
	rcv := webhook.Start(t)
	_, log := newLog()
	n, err := New(fastConfig(rcv.URL, log))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := n.Run(ctx); err != nil {
		t.Fatalf("first Run = %v", err)
	}
	if err := n.Run(context.Background()); err != errRunTwice {
		t.Errorf("second Run = %v", err)
	}
}

func TestNewRejects(t *testing.T) {
	rcv := webhook.Start(t)
	for _, tt := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"negative MinInterval", func(c *Config) { c.MinInterval = -1 }, "MinInterval"},
		{"negative FlushTimeout", func(c *Config) { c.FlushTimeout = -time.Second }, "FlushTimeout"},
		{"negative QueueSize", func(c *Config) { c.QueueSize = -1 }, "QueueSize"},
		{"negative MaxAttempts", func(c *Config) { c.MaxAttempts = -3 }, "MaxAttempts"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{URL: rcv.URL}
			tt.mod(&cfg)
			_, err := New(cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v", err)
			}
			noSecret(t, "error", err.Error(), rcv)
		})
	}
}

// Events without a connection id are gathered by user, client and key;
// other kinds are ignored.
func TestNotifyKeys(t *testing.T) {
	rcv := webhook.Start(t)
	_, log := newLog()
	n, err := New(fastConfig(rcv.URL, log))
	if err != nil {
		t.Fatal(err)
	}
	a := sessionStart("", "alice")
	b := sessionStart("", "bob")
	n.Notify(a)
	n.Notify(tunnelOpen("", "alice", "db:5432"))
	n.Notify(b)
	n.Notify(Event{Kind: "session_end", Conn: "x"})
	if s := n.Stats(); s.Queued != 2 || s.Accepted != 3 {
		t.Errorf("stats = %+v", s)
	}
}
