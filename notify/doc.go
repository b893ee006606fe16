// Package notify posts session notifications to an incoming webhook (Slack,
// Mattermost, Teams-style): one JSON POST per connection burst, with a `text`
// line a person reads in the channel and an `event` object with the
// structured audit fields (the same names as the log lines).
//
// What is sent. Two kinds of events arrive through Notify: a session start
// (authentication accepted) and a tunnel open. They are gathered per SSH
// connection (Event.Conn) into one message: a session start and the tunnels
// its connection opens right after it make one message; one connection
// opening 50 tunnels makes one message listing each destination once with a
// count. A message waits for Window (default 500 ms) after its first event,
// so the session start's message goes out well within 2 s when the webhook is
// idle; events of a connection whose message has already left start a new
// one.
//
// Why coalescing and a rate. Slack accepts about one message per second per
// webhook and answers more with HTTP 429; a ProxyJump run with 20 forks, or a
// database client opening a tunnel per pool connection, would otherwise turn
// one person's action into dozens of rejected posts. So messages leave one at
// a time, the next no sooner than MinInterval (default 1 s) after the
// previous one was answered, which keeps arrivals at the webhook at least
// MinInterval apart whatever the network latency.
//
// Failures. A POST succeeds on any 2xx. HTTP 429 and 503 are retried after
// their Retry-After (seconds or an HTTP date, at most MaxRetryAfter), other
// 5xx, 408 and network errors after an exponential backoff, up to
// MaxAttempts; any other status (a 404 for a deleted webhook, a redirect) is
// final at once. Only one message is on the wire at a time, so while the
// webhook is rate-limiting or failing, new events keep merging into the
// waiting messages instead of adding posts. A POST that timed out may still
// have been posted: its retry can show the message twice, which is better
// for an audit trail than losing it.
//
// What is dropped and how it is reported. Notify never blocks and never
// waits for the network: it merges the event into the queue under a short
// lock and returns. The queue holds at most QueueSize messages (default
// 1000); an event that would need a new message when the queue is full is
// dropped and counted (Stats.DroppedQueueFull), and the drops are reported
// in one summary line at most once per ReportInterval. A message whose
// attempts are used up, or that the webhook refuses for good, is dropped and
// counted (Stats.DroppedFailed); the first one of a failure burst is logged
// with its reason, later ones are summarised, and a line says when delivery
// works again. When Run's context ends, the queued messages get FlushTimeout
// (default 2 s, so ECS's stopTimeout is not eaten) to leave; what is still
// queued then is counted (Stats.DroppedShutdown) and logged in one line.
//
// The notifier's own log lines: "notification dropped" (warn: the first
// message given up in a failure burst, with reason, status, attempts, conn,
// kind), "notifications still failing" (warn: the summary of the rest),
// "notifications delivered again" (info), "notifications dropped: queue full"
// (warn: dropped, dropped_total, queue_size), "notifications unsent at
// shutdown" (warn) and "notification retry" (debug).
//
// The URL is a credential (a Slack webhook URL lets anyone post to the
// channel): it is never logged, never part of an error this package returns
// or logs (net/http's errors quote the URL; they are reduced to a URL-free
// reason first), and plain http is refused unless it goes to a loopback
// address, checked again on the address actually dialed.
package notify
