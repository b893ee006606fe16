package notify

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Kind says what happened.
type Kind string

const (
	// KindSessionStart: authentication was accepted on a connection.
	KindSessionStart Kind = "session_start"
	// KindTunnelOpen: a tunnel (direct-tcpip) was established.
	KindTunnelOpen Kind = "tunnel_open"
)

// Event is one session start or tunnel open, with the connection's audit
// fields (the values the auth and tunnel log lines carry).
type Event struct {
	Kind Kind
	// Conn identifies the SSH connection; events with the same Conn are
	// gathered into one message. An empty Conn gathers by user, client and
	// key instead.
	Conn string
	// Time of the event; zero means when Notify was called.
	Time time.Time

	User        string
	Fingerprint string // SHA256 fingerprint of the key (or the certificate's key)
	Comment     string // the authorized_keys comment, if any
	CertID      string // the certificate's key id, when a certificate authenticated

	Principal    string // IAM principal ARN behind the SSM session, when known
	SSMSessionID string // SSM session id, when the connection came through one
	Client       string // the peer address, host:port

	// Destination is the tunnel's requested host:port (KindTunnelOpen only).
	Destination string
}

// Limits on what one message carries: the text stays one readable line and
// a connection opening tunnels to thousands of places costs bounded memory.
const (
	maxDestinations = 20
	maxFieldLen     = 256
	maxTextLen      = 3000
)

// message is one connection's events waiting to be posted.
type message struct {
	key   string
	conn  Event     // connection fields, from the first event (a session start wins)
	start bool      // the session start is in this message
	at    time.Time // time of the session start, else of the first tunnel
	due   time.Time // when the coalescing window closes

	dests   []Destination // first-seen order, at most maxDestinations
	omitted int           // tunnels to destinations beyond maxDestinations
	tunnels int           // tunnel opens in this message
}

// Destination is one tunnel destination and how many tunnels to it the
// message covers.
type Destination struct {
	Destination string `json:"destination"`
	Count       int    `json:"count"`
}

// capped returns e with every text field cut to maxFieldLen: a 100 KB
// certificate id must not make a 100 KB message, and the queue's memory
// stays bounded.
func (e Event) capped() Event {
	for _, f := range []*string{&e.Conn, &e.User, &e.Fingerprint, &e.Comment, &e.CertID,
		&e.Principal, &e.SSMSessionID, &e.Client, &e.Destination} {
		*f = capLen(*f, maxFieldLen)
	}
	return e
}

func (m *message) add(e Event) {
	switch e.Kind {
	case KindSessionStart:
		if !m.start {
			m.start = true
			m.conn = e
			m.at = e.Time
		}
	case KindTunnelOpen:
		if m.tunnels == 0 && !m.start {
			m.conn = e
			m.at = e.Time
		}
		m.tunnels++
		for i := range m.dests {
			if m.dests[i].Destination == e.Destination {
				m.dests[i].Count++
				return
			}
		}
		if len(m.dests) < maxDestinations {
			m.dests = append(m.dests, Destination{Destination: e.Destination, Count: 1})
		} else {
			m.omitted++
		}
	}
}

// wireEvent is the `event` object of the POST body. Its names are the log
// lines' field names.
type wireEvent struct {
	Kind         Kind      `json:"kind"`
	Bastion      string    `json:"bastion"`
	Conn         string    `json:"conn"`
	User         string    `json:"user"`
	Fingerprint  string    `json:"fingerprint,omitempty"`
	Comment      string    `json:"comment,omitempty"`
	CertID       string    `json:"cert_id,omitempty"`
	Principal    string    `json:"principal,omitempty"`
	SSMSessionID string    `json:"ssm_session_id,omitempty"`
	Client       string    `json:"client"`
	Time         time.Time `json:"time"`
	Tunnels      int       `json:"tunnels"`
	// Destinations is never null: consumers can range over it.
	Destinations        []Destination `json:"destinations"`
	DestinationsOmitted int           `json:"destinations_omitted,omitempty"`
}

type body struct {
	Text  string    `json:"text"`
	Event wireEvent `json:"event"`
}

// render builds the POST body of m; name is how the text calls the bastion.
func render(m *message, name string) ([]byte, error) {
	kind := KindTunnelOpen
	if m.start {
		kind = KindSessionStart
	}
	dests := m.dests
	if dests == nil {
		dests = []Destination{}
	}
	b := body{
		Text: text(m, name),
		Event: wireEvent{
			Kind:                kind,
			Bastion:             name,
			Conn:                m.conn.Conn,
			User:                m.conn.User,
			Fingerprint:         m.conn.Fingerprint,
			Comment:             m.conn.Comment,
			CertID:              m.conn.CertID,
			Principal:           m.conn.Principal,
			SSMSessionID:        m.conn.SSMSessionID,
			Client:              m.conn.Client,
			Time:                m.at.UTC(),
			Tunnels:             m.tunnels,
			Destinations:        dests,
			DestinationsOmitted: m.omitted,
		},
	}
	out, err := json.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("notify: encode message: %w", err)
	}
	return out, nil
}

// text is the message's one human line, e.g.
//
//	alice (arn:aws:sts::123456789012:assumed-role/Ops/alice) connected to bastion via SSM session alice-0a1b2c3d4e5f6a7b8 from 127.0.0.1; tunnels: db.internal:5432 ×3
//
// It names the IAM principal when the connection came through an SSM session
// whose owner is known, else the key (comment and fingerprint) or the
// certificate id. Values the client chose are cleaned (see clean).
func text(m *message, name string) string {
	var b strings.Builder
	b.WriteString(who(m.conn))
	where := clean(name)
	if m.conn.SSMSessionID != "" {
		where += " via SSM session " + clean(m.conn.SSMSessionID)
	}
	if m.conn.Client != "" {
		where += " from " + clean(clientHost(m.conn.Client))
	}
	if m.start {
		b.WriteString(" connected to ")
		b.WriteString(where)
		if m.tunnels > 0 {
			b.WriteString("; tunnels: ")
			b.WriteString(destList(m))
		}
	} else {
		if m.tunnels == 1 {
			b.WriteString(" opened a tunnel on ")
		} else {
			fmt.Fprintf(&b, " opened %d tunnels on ", m.tunnels)
		}
		b.WriteString(where)
		b.WriteString(": ")
		b.WriteString(destList(m))
	}
	return capLen(b.String(), maxTextLen)
}

func who(e Event) string {
	user := clean(e.User)
	if user == "" {
		user = "(no user name)"
	}
	switch {
	case e.Principal != "":
		return user + " (" + clean(e.Principal) + ")"
	case e.CertID != "":
		return user + " (certificate " + clean(e.CertID) + ")"
	case e.Comment != "" && e.Fingerprint != "":
		return user + " (key " + clean(e.Comment) + " " + clean(e.Fingerprint) + ")"
	case e.Fingerprint != "":
		return user + " (key " + clean(e.Fingerprint) + ")"
	}
	return user
}

func destList(m *message) string {
	parts := make([]string, 0, len(m.dests)+1)
	for _, d := range m.dests {
		s := clean(d.Destination)
		if s == "" {
			s = "(unknown)"
		}
		if d.Count > 1 {
			s += fmt.Sprintf(" ×%d", d.Count)
		}
		parts = append(parts, s)
	}
	if m.omitted > 0 {
		parts = append(parts, fmt.Sprintf("and %d more", m.omitted))
	}
	return strings.Join(parts, ", ")
}

// clientHost drops the port: the text says "from 127.0.0.1"; the event
// object keeps the full address.
func clientHost(client string) string {
	if h, _, err := net.SplitHostPort(client); err == nil {
		return h
	}
	return client
}

// clean makes a value safe for the one-line text: Slack's three control
// characters are escaped (&, <, > — so a user named "<!channel>" pings no
// one and cannot inject a link), line breaks, control and bidi-override
// characters become U+FFFD (the line stays one line and reads the way it is
// stored), invalid UTF-8 is replaced and the value is capped. The `event`
// object carries the values as they are (JSON escapes them).
func clean(s string) string {
	s = capLen(s, maxFieldLen)
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '&':
			b.WriteString("&amp;")
		case r == '<':
			b.WriteString("&lt;")
		case r == '>':
			b.WriteString("&gt;")
		case r == utf8.RuneError, unicode.IsControl(r), r == '\u2028', r == '\u2029',
			r >= '\u202a' && r <= '\u202e', r >= '\u2066' && r <= '\u2069':
			b.WriteRune(utf8.RuneError)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// capLen cuts s to at most n bytes on a rune boundary, marking the cut.
func capLen(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
