// Package webhook is a stand-in incoming webhook (Slack-like) for tests: an
// HTTP(S) server on 127.0.0.1 that records every POST with its arrival time
// and answers from a script (status, Retry-After, body, or never). Its URL
// has a secret-looking path token, so tests can assert that the token never
// reaches a log. Product code never imports it.
package webhook

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// Request is one POST as the receiver saw it.
type Request struct {
	At          time.Time // when the handler started (the request had arrived)
	Method      string
	Path        string
	ContentType string
	Body        []byte
	// Text and Event are the body's fields, if it was a JSON object.
	Text  string
	Event map[string]any
	// JSONErr is the decoding error, if the body was not JSON.
	JSONErr error
}

// Reply is how the receiver answers one request. The zero Reply is
// Slack's success: 200 with body "ok".
type Reply struct {
	Status     int
	Body       string
	RetryAfter string
	Location   string
	// Hang accepts the request and never answers (until the client gives
	// up or the receiver closes).
	Hang bool
}

// Receiver is a running stand-in webhook.
type Receiver struct {
	// URL to configure, e.g. http://127.0.0.1:PORT/services/T0.../B0.../TOKEN.
	URL string
	// Token is the URL's secret path segment.
	Token string
	// Server is the underlying httptest server (its Certificate() for TLS).
	Server *httptest.Server

	mu      sync.Mutex
	script  []Reply
	deflt   Reply
	reqs    []Request
	changed chan struct{} // closed and replaced on every request
	release chan struct{} // closed at Close: hanging handlers return
	closed  bool
}

// Start runs a plain-http receiver on 127.0.0.1 until the test ends.
func Start(t testing.TB) *Receiver { return start(t, false) }

// StartTLS runs an https receiver with httptest's self-signed certificate.
func StartTLS(t testing.TB) *Receiver { return start(t, true) }

func start(t testing.TB, useTLS bool) *Receiver {
	t.Helper()
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("webhook: token: %v", err)
	}
	r := &Receiver{
		Token:   "tok" + hex.EncodeToString(b[:]),
		changed: make(chan struct{}),
		release: make(chan struct{}),
	}
	h := http.HandlerFunc(r.serve)
	if useTLS {
		r.Server = httptest.NewTLSServer(h)
	} else {
		r.Server = httptest.NewServer(h)
	}
	r.URL = r.Server.URL + "/services/T0NOTIFY/B0NOTIFY/" + r.Token
	t.Cleanup(r.Close)
	return r
}

// Close releases hanging requests and stops the server.
func (r *Receiver) Close() {
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		close(r.release)
	}
	r.mu.Unlock()
	r.Server.CloseClientConnections()
	r.Server.Close()
}

// Script queues replies for the next requests, in order; after them the
// default reply applies.
func (r *Receiver) Script(replies ...Reply) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.script = append(r.script, replies...)
}

// SetDefault sets the reply used when the script is empty.
func (r *Receiver) SetDefault(reply Reply) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deflt = reply
}

func (r *Receiver) serve(w http.ResponseWriter, req *http.Request) {
	at := time.Now()
	body, _ := io.ReadAll(io.LimitReader(req.Body, 1<<20))
	rec := Request{At: at, Method: req.Method, Path: req.URL.Path, ContentType: req.Header.Get("Content-Type"), Body: body}
	var parsed struct {
		Text  string         `json:"text"`
		Event map[string]any `json:"event"`
	}
	if rec.JSONErr = json.Unmarshal(body, &parsed); rec.JSONErr == nil {
		rec.Text, rec.Event = parsed.Text, parsed.Event
	}

	r.mu.Lock()
	reply := r.deflt
	if len(r.script) > 0 {
		reply = r.script[0]
		r.script = r.script[1:]
	}
	r.reqs = append(r.reqs, rec)
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()

	if reply.Hang {
		select {
		case <-req.Context().Done():
		case <-r.release:
		}
		return
	}
	if reply.RetryAfter != "" {
		w.Header().Set("Retry-After", reply.RetryAfter)
	}
	if reply.Location != "" {
		w.Header().Set("Location", reply.Location)
	}
	status, text := reply.Status, reply.Body
	if status == 0 {
		status = http.StatusOK
	}
	if text == "" && status == http.StatusOK {
		text = "ok"
	}
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, text)
}

// Requests returns the requests received so far.
func (r *Receiver) Requests() []Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Request(nil), r.reqs...)
}

// Wait blocks until at least n requests have arrived and returns the first
// n; it fails the test after timeout.
func (r *Receiver) Wait(t testing.TB, n int, timeout time.Duration) []Request {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		if len(r.reqs) >= n {
			out := append([]Request(nil), r.reqs[:n]...)
			r.mu.Unlock()
			return out
		}
		changed, got := r.changed, len(r.reqs)
		r.mu.Unlock()
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("webhook: %d of %d requests after %v", got, n, timeout)
		}
	}
}

// Summary describes requests for a failure message.
func Summary(reqs []Request) string {
	var b strings.Builder
	for i, q := range reqs {
		b.WriteString(q.At.Format("15:04:05.000 "))
		b.WriteString(q.Text)
		if i < len(reqs)-1 {
			b.WriteByte('\n')
		}
	}
	return b.String()
}
