package notify

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"
)

// Run delivers queued messages until ctx ends, then flushes for at most
// FlushTimeout and returns; the POST on the wire when ctx ends gets that
// time too, then is cut. All the work happens in the caller's goroutine:
// the package keeps no goroutine of its own, and Run closes its idle HTTP
// connections (whose goroutines net/http owns) on return. It returns nil,
// or an error if called a second time.
func (n *Notifier) Run(ctx context.Context) error {
	if !n.running.CompareAndSwap(false, true) {
		return errRunTwice
	}
	// Requests run under sendCtx, which lives FlushTimeout beyond ctx. The
	// timer is armed by ctx's end; if that races with the return below it
	// fires later and cancels an already cancelled context, nothing more.
	sendCtx, cancelSend := context.WithCancel(context.WithoutCancel(ctx))
	cut := time.AfterFunc(time.Hour, cancelSend)
	cut.Stop()
	stopWatch := context.AfterFunc(ctx, func() { cut.Reset(n.cfg.FlushTimeout) })
	defer func() {
		stopWatch()
		cut.Stop()
		cancelSend()
		n.transport.CloseIdleConnections()
	}()

	r := &runner{n: n, done: ctx.Done(), sendCtx: sendCtx, cut: sendCtx.Done()}
	for r.step() {
	}
	r.finish()
	return nil
}

// runner is Run's state; only Run's goroutine touches it.
type runner struct {
	n       *Notifier
	done    <-chan struct{} // ctx.Done() until noticed, then nil
	sendCtx context.Context
	cut     <-chan struct{} // closed FlushTimeout after ctx ended: stop now

	stopping bool
	flushBy  time.Time

	// nextAllowed: no POST starts before it (MinInterval after the last
	// answer, or what a Retry-After asked for).
	nextAllowed time.Time

	lastDropReport time.Time

	// A failure burst: consecutive messages given up. The first is logged
	// at once, the others summarised per ReportInterval.
	failStreak     uint64
	failUnreported uint64
	failSince      time.Time // start of the current summary window
	lastFailReason string

	unsent uint64 // messages cut by the shutdown while being retried
}

// step does one thing: send the head message if it is due, or wait for
// something to change. It returns false when Run should finish.
func (r *runner) step() bool {
	if r.sendCtx.Err() != nil {
		return false
	}
	select {
	case <-r.done:
		r.beginStop()
	default:
	}
	r.reportDrops(false)
	r.reportFailures(false)

	n := r.n
	n.mu.Lock()
	var head *message
	if len(n.queue) > 0 {
		head = n.queue[0]
	}
	n.mu.Unlock()

	if head == nil {
		if r.stopping {
			return false
		}
		r.wait(time.Time{})
		return true
	}
	at := r.nextAllowed
	if !r.stopping && head.due.After(at) {
		at = head.due // flushing skips the coalescing window
	}
	if r.stopping && at.After(r.flushBy) {
		return false
	}
	if time.Now().Before(at) {
		r.wait(at)
		return true
	}

	// Only Run removes messages, so the head is still head. Once it is out
	// of byKey, Notify cannot reach it: render reads it without the lock.
	n.mu.Lock()
	n.queue[0] = nil
	n.queue = n.queue[1:]
	if n.byKey[head.key] == head {
		delete(n.byKey, head.key)
	}
	n.mu.Unlock()
	r.deliver(head)
	return true
}

// wait blocks until `until` (zero: no deadline), a poke from Notify, the end
// of ctx, or the end of a summary window, whichever is first.
func (r *runner) wait(until time.Time) {
	next := until
	for _, t := range []time.Time{r.dropReportAt(), r.failReportAt()} {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	var timeout <-chan time.Time
	if !next.IsZero() {
		t := time.NewTimer(time.Until(next))
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-timeout:
	case <-r.n.wake:
	case <-r.done:
		r.beginStop()
	case <-r.cut:
	}
}

// beginStop: ctx ended. From now on messages leave without waiting for
// their window, and only while they fit before flushBy. (flushBy is when
// Run noticed; the cut of sendCtx, armed when ctx ended, bounds it anyway.)
func (r *runner) beginStop() {
	r.stopping = true
	r.flushBy = time.Now().Add(r.n.cfg.FlushTimeout)
	r.done = nil
}

// sleepUntil waits for t, reporting meanwhile; false if t is beyond the
// flush deadline.
func (r *runner) sleepUntil(t time.Time) bool {
	for {
		if r.sendCtx.Err() != nil || r.stopping && t.After(r.flushBy) {
			return false
		}
		if !time.Now().Before(t) {
			return true
		}
		r.wait(t)
		r.reportDrops(false)
		r.reportFailures(false)
	}
}

// deliver posts m, retrying as the answers allow.
func (r *runner) deliver(m *message) {
	cfg := r.n.cfg
	if m.conn.Principal == "" && m.conn.SSMSessionID != "" && cfg.PrincipalOf != nil {
		m.conn.Principal = capLen(cfg.PrincipalOf(m.conn.SSMSessionID), maxFieldLen)
	}
	body, err := render(m, cfg.Name)
	if err != nil {
		r.giveUp(m, result{reason: err.Error()}, 0)
		return
	}
	for attempt := 1; ; attempt++ {
		if attempt > 1 {
			r.n.retried.Add(1)
		}
		res := r.post(body)
		now := time.Now()
		r.nextAllowed = now.Add(cfg.MinInterval)
		if res.ok {
			r.delivered()
			return
		}
		if res.cancelled {
			r.unsent++
			return
		}
		if !res.retry || attempt >= cfg.MaxAttempts {
			r.giveUp(m, res, attempt)
			return
		}
		wait := res.retryAfter
		if wait < 0 {
			wait = r.backoff(attempt)
		}
		if t := now.Add(wait); t.After(r.nextAllowed) {
			r.nextAllowed = t
		}
		r.n.log.Debug("notification retry", "conn", m.conn.Conn, "attempt", attempt, "reason", res.reason,
			"wait_ms", wait.Milliseconds())
		if !r.sleepUntil(r.nextAllowed) {
			r.unsent++
			return
		}
	}
}

// backoff before retry number attempt (1 = the first retry): Backoff
// doubled per retry, capped, in [d/2, d] so bastions sharing a webhook do
// not retry in step.
func (r *runner) backoff(attempt int) time.Duration {
	d := r.n.cfg.Backoff
	for i := 1; i < attempt && d < r.n.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, r.n.cfg.MaxBackoff)
	return d/2 + rand.N(d/2+1)
}

// result of one POST. retryAfter < 0: none given.
type result struct {
	ok, retry, cancelled bool
	retryAfter           time.Duration
	status               int
	reason               string // never contains the URL
}

func (r *runner) post(body []byte) result {
	cfg := r.n.cfg
	ctx, cancel := context.WithTimeout(r.sendCtx, cfg.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.n.url.String(), bytes.NewReader(body))
	if err != nil {
		return result{retryAfter: -1, reason: "cannot build the request"}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "bastion-notify")
	resp, err := r.n.client.Do(req)
	if err != nil {
		res := result{retryAfter: -1, reason: reason(err, r.n.url)}
		switch {
		case r.sendCtx.Err() != nil:
			res.cancelled = true
		case errors.Is(err, errNotLoopback):
			// final: retrying cannot change where the name points
		default:
			res.retry = true
		}
		return res
	}
	defer resp.Body.Close()
	// Read a little for the reason, drain a bounded rest so the connection
	// can be reused.
	head, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))

	res := result{status: resp.StatusCode, retryAfter: -1, reason: fmt.Sprintf("HTTP %d", resp.StatusCode)}
	if tok := r.safeToken(string(head)); tok != "" {
		res.reason += " " + tok
	}
	switch code := resp.StatusCode; {
	case code >= 200 && code < 300:
		res.ok = true
	case code == http.StatusTooManyRequests, code == http.StatusServiceUnavailable:
		res.retry = true
		if d, ok := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
			res.retryAfter = min(d, cfg.MaxRetryAfter)
		}
	case code == http.StatusRequestTimeout, code >= 500:
		res.retry = true
	}
	return res
}

// safeToken returns a short response body worth logging (Slack answers
// errors as "invalid_token", "no_service", "channel_is_archived"), or "" if
// the body is anything else, in particular if it echoes part of the URL.
func (r *runner) safeToken(s string) string {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > 64 {
		return ""
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || c == ' ') {
			return ""
		}
	}
	if redact(s, r.n.url) != s {
		return ""
	}
	return s
}

func (r *runner) delivered() {
	r.n.sent.Add(1)
	if r.failStreak == 0 {
		return
	}
	r.reportFailures(true)
	r.n.log.Info("notifications delivered again", "dropped_while_failing", r.failStreak)
	r.failStreak = 0
}

func (r *runner) giveUp(m *message, res result, attempts int) {
	r.n.droppedFailed.Add(1)
	r.failStreak++
	r.lastFailReason = res.reason
	if r.failStreak == 1 {
		attrs := []any{"reason", res.reason, "attempts", attempts, "conn", m.conn.Conn, "kind", kindOf(m)}
		if res.status != 0 {
			attrs = append(attrs, "status", res.status)
		}
		r.n.log.Warn("notification dropped", attrs...)
		r.failSince = time.Now()
		return
	}
	if r.failUnreported == 0 {
		r.failSince = time.Now()
	}
	r.failUnreported++
}

func kindOf(m *message) Kind {
	if m.start {
		return KindSessionStart
	}
	return KindTunnelOpen
}

func (r *runner) failReportAt() time.Time {
	if r.failUnreported == 0 {
		return time.Time{}
	}
	return r.failSince.Add(r.n.cfg.ReportInterval)
}

// reportFailures logs the messages given up since the last line, once their
// window is over (or now, if final).
func (r *runner) reportFailures(final bool) {
	at := r.failReportAt()
	if at.IsZero() || !final && time.Now().Before(at) {
		return
	}
	r.n.log.Warn("notifications still failing", "dropped", r.failUnreported,
		"dropped_while_failing", r.failStreak, "reason", r.lastFailReason)
	r.failUnreported = 0
}

func (r *runner) dropReportAt() time.Time {
	n := r.n
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.unreported == 0 {
		return time.Time{}
	}
	at := n.firstDrop.Add(n.cfg.ReportInterval)
	if next := r.lastDropReport.Add(n.cfg.ReportInterval); next.After(at) {
		at = next
	}
	return at
}

// reportDrops logs the queue-full drops of a window in one line.
func (r *runner) reportDrops(final bool) {
	at := r.dropReportAt()
	if at.IsZero() || !final && time.Now().Before(at) {
		return
	}
	n := r.n
	n.mu.Lock()
	k := n.unreported
	n.unreported = 0
	n.mu.Unlock()
	r.lastDropReport = time.Now()
	n.log.Warn("notifications dropped: queue full", "dropped", k,
		"dropped_total", n.droppedQueue.Load(), "queue_size", n.cfg.QueueSize)
}

// finish closes the queue, counts what is left and writes the last lines.
func (r *runner) finish() {
	n := r.n
	n.mu.Lock()
	left := uint64(len(n.queue))
	n.queue = nil
	n.byKey = map[string]*message{}
	n.closed = true
	n.mu.Unlock()
	n.droppedShutdown.Add(left + r.unsent)
	r.reportDrops(true)
	r.reportFailures(true)
	if total := left + r.unsent; total > 0 {
		n.log.Warn("notifications unsent at shutdown", "dropped", total,
			"flush_timeout", n.cfg.FlushTimeout.String())
	}
}
