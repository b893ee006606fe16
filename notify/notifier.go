package notify

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// Config of a Notifier. Zero values mean the documented defaults.
type Config struct {
	// URL of the incoming webhook (BASTION_NOTIFY_URL); see ValidateURL.
	URL string
	// Log receives the notifier's own lines (drops, failures, recovery);
	// nil means slog.Default(). The URL is never logged.
	Log *slog.Logger
	// Name is how the text and the event call this bastion; "" = "bastion".
	Name string
	// PrincipalOf returns the IAM principal of an SSM session once it is
	// known, "" before. A connection's events are taken as they happen, and
	// the principal is looked up off the handshake's path, so the first
	// events of a session may lack it: the message asks again when it
	// leaves, after its coalescing window. nil: events are sent as taken.
	PrincipalOf func(ssmSessionID string) string

	// MinInterval is the least time between the answer to one POST and the
	// start of the next (default 1 s: Slack's rate per webhook).
	MinInterval time.Duration
	// Window is how long a connection's first event waits for the ones that
	// follow it before its message may leave (default 500 ms).
	Window time.Duration
	// QueueSize is how many messages (one per connection burst) may wait;
	// events that merge into a waiting message take no room (default 1000).
	QueueSize int

	// MaxAttempts per message, the first included (default 5).
	MaxAttempts int
	// Backoff is the wait before the first retry, doubled for each further
	// one (with jitter) up to MaxBackoff (defaults 1 s and 30 s).
	Backoff    time.Duration
	MaxBackoff time.Duration
	// MaxRetryAfter caps the wait a 429 or 503 asks for (default 60 s): a
	// mistaken "Retry-After: 86400" must not silence notifications for a day.
	MaxRetryAfter time.Duration

	// RequestTimeout bounds one POST, connection and TLS handshake included
	// (default 10 s).
	RequestTimeout time.Duration
	// FlushTimeout is how long Run keeps sending queued messages after its
	// context ends (default 2 s).
	FlushTimeout time.Duration
	// ReportInterval is the window over which repeated drops and failures
	// are summarised into one log line (default 10 s).
	ReportInterval time.Duration

	// RootCAs verifies the webhook's certificate; nil means the system's
	// roots (SSL_CERT_FILE and SSL_CERT_DIR apply).
	RootCAs *x509.CertPool
}

const (
	defaultName           = "bastion"
	defaultMinInterval    = time.Second
	defaultWindow         = 500 * time.Millisecond
	defaultQueueSize      = 1000
	defaultMaxAttempts    = 5
	defaultBackoff        = time.Second
	defaultMaxBackoff     = 30 * time.Second
	defaultMaxRetryAfter  = 60 * time.Second
	defaultRequestTimeout = 10 * time.Second
	defaultFlushTimeout   = 2 * time.Second
	defaultReportInterval = 10 * time.Second
)

// Notifier queues events and posts them to the webhook. Notify may be
// called from any goroutine, before, during or after Run; one Run delivers.
type Notifier struct {
	cfg       Config
	url       *url.URL
	log       *slog.Logger
	client    *http.Client
	transport *http.Transport

	mu         sync.Mutex
	queue      []*message          // FIFO, so also in due order
	byKey      map[string]*message // the waiting message of each connection
	unreported uint64              // queue-full drops not logged yet
	firstDrop  time.Time           // when the first of them happened
	closed     bool                // Run has returned
	wake       chan struct{}       // tells Run the queue head or the drops changed

	running atomic.Bool

	accepted, sent, retried                      atomic.Uint64
	droppedQueue, droppedFailed, droppedShutdown atomic.Uint64
}

// Stats are the notifier's counters since New.
type Stats struct {
	Accepted uint64 // events Notify queued or merged
	Sent     uint64 // messages the webhook accepted (2xx)
	Retried  uint64 // POSTs repeated after a failed one
	Queued   int    // messages waiting now

	// Dropped is DroppedQueueFull + DroppedFailed + DroppedShutdown.
	Dropped uint64
	// DroppedQueueFull counts events refused because QueueSize messages
	// were waiting.
	DroppedQueueFull uint64
	// DroppedFailed counts messages given up: attempts used up, or a final
	// answer (4xx other than 408/429, a redirect).
	DroppedFailed uint64
	// DroppedShutdown counts messages still queued (or in a retry that did
	// not fit) when Run's flush ended, and events notified after Run
	// returned.
	DroppedShutdown uint64
}

// New checks cfg and returns a Notifier. Errors never quote the URL.
func New(cfg Config) (*Notifier, error) {
	u, err := parseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"MinInterval", &cfg.MinInterval, defaultMinInterval},
		{"Window", &cfg.Window, defaultWindow},
		{"Backoff", &cfg.Backoff, defaultBackoff},
		{"MaxBackoff", &cfg.MaxBackoff, defaultMaxBackoff},
		{"MaxRetryAfter", &cfg.MaxRetryAfter, defaultMaxRetryAfter},
		{"RequestTimeout", &cfg.RequestTimeout, defaultRequestTimeout},
		{"FlushTimeout", &cfg.FlushTimeout, defaultFlushTimeout},
		{"ReportInterval", &cfg.ReportInterval, defaultReportInterval},
	} {
		if *d.v < 0 {
			return nil, fmt.Errorf("notify: %s is negative (%v)", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	for _, c := range []struct {
		name string
		v    *int
		def  int
	}{
		{"QueueSize", &cfg.QueueSize, defaultQueueSize},
		{"MaxAttempts", &cfg.MaxAttempts, defaultMaxAttempts},
	} {
		if *c.v < 0 {
			return nil, fmt.Errorf("notify: %s is negative (%d)", c.name, *c.v)
		}
		if *c.v == 0 {
			*c.v = c.def
		}
	}
	if cfg.Name == "" {
		cfg.Name = defaultName
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	cfg.URL = "" // u holds it; the copy in cfg would only be one more place to leak from
	tr := newTransport(u, cfg)
	return &Notifier{
		cfg:       cfg,
		url:       u,
		log:       log,
		transport: tr,
		client: &http.Client{
			Transport: tr,
			// A webhook that redirects is misconfigured; following it would
			// send the event (and, for a 307, the body) somewhere the
			// operator did not name, perhaps over plain http.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		byKey: map[string]*message{},
		wake:  make(chan struct{}, 1),
	}, nil
}

func newTransport(u *url.URL, cfg Config) *http.Transport {
	dialer := &net.Dialer{Timeout: cfg.RequestTimeout / 2, KeepAlive: 30 * time.Second}
	if u.Scheme == "http" {
		dialer.Control = dialLoopbackOnly
	}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: cfg.RootCAs},
		TLSHandshakeTimeout:   cfg.RequestTimeout / 2,
		ResponseHeaderTimeout: cfg.RequestTimeout,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          1,
		MaxIdleConnsPerHost:   1,
		IdleConnTimeout:       90 * time.Second,
	}
}

// Notify queues e and returns at once: it takes a short lock, never waits
// for the network or for Run, and never fails. Events of another Kind are
// ignored. When the queue is full the event is dropped and counted.
func (n *Notifier) Notify(e Event) {
	if e.Kind != KindSessionStart && e.Kind != KindTunnelOpen {
		return
	}
	now := time.Now()
	if e.Time.IsZero() {
		e.Time = now
	}
	e = e.capped()
	key := e.Conn
	if key == "" {
		key = "\x00" + e.User + "\x00" + e.Client + "\x00" + e.Fingerprint
	}

	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		n.droppedShutdown.Add(1)
		return
	}
	m := n.byKey[key]
	if m == nil && len(n.queue) >= n.cfg.QueueSize {
		first := n.unreported == 0
		if first {
			n.firstDrop = now
		}
		n.unreported++
		n.mu.Unlock()
		n.droppedQueue.Add(1)
		if first {
			n.poke()
		}
		return
	}
	created := m == nil
	if created {
		m = &message{key: key, due: now.Add(n.cfg.Window)}
		n.byKey[key] = m
		n.queue = append(n.queue, m)
	}
	m.add(e)
	n.mu.Unlock()
	n.accepted.Add(1)
	if created {
		n.poke()
	}
}

func (n *Notifier) poke() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// Stats returns the counters.
func (n *Notifier) Stats() Stats {
	n.mu.Lock()
	queued := len(n.queue)
	n.mu.Unlock()
	s := Stats{
		Accepted:         n.accepted.Load(),
		Sent:             n.sent.Load(),
		Retried:          n.retried.Load(),
		Queued:           queued,
		DroppedQueueFull: n.droppedQueue.Load(),
		DroppedFailed:    n.droppedFailed.Load(),
		DroppedShutdown:  n.droppedShutdown.Load(),
	}
	s.Dropped = s.DroppedQueueFull + s.DroppedFailed + s.DroppedShutdown
	return s
}

// errRunTwice: one Run owns the queue.
var errRunTwice = errors.New("notify: Run called twice")
