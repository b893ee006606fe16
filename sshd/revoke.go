package sshd

import (
	"context"
	"errors"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// Live access control: a new authorized-keys set replaces the old one
// whole, and connections it no longer admits are closed, tunnels included;
// keys and certificates that expire while connected, idle connections and
// connections past their maximum age are closed the same way.

// SetAuthorizedKeys puts keys in force. Every authenticated connection is
// checked against them at once: one whose key or CA is gone, or whose line
// no longer admits its client, is closed ("key removed"); the others take
// the new line's options for the tunnels they open from now on.
func (s *Server) SetAuthorizedKeys(keys []AuthorizedKey) {
	a := &authorizer{keys: keys, clock: s.cfg.Clock}
	s.auth.Store(a)
	s.recheck(a)
}

// recheck applies a to every authenticated connection.
func (s *Server) recheck(a *authorizer) {
	type revoked struct {
		cs     *connState
		reason string
		cause  error
	}
	var out []revoked
	s.mu.Lock()
	for cs := range s.conns {
		if !cs.authed || cs.access == nil || cs.closeReason != "" {
			continue
		}
		g := a.check(cs.user, cs.remote.Addr(), cs.access.key)
		if g.err != nil {
			out = append(out, revoked{cs, revocationReason(g.err), g.err})
			continue
		}
		cs.access = g
	}
	s.mu.Unlock()
	for _, r := range out {
		r.cs.closeWith(s, r.reason, "cause", r.cause.Error())
	}
}

// revocationReason is the short reason a connection's lines give.
func revocationReason(err error) string {
	switch {
	case errors.Is(err, errKeyExpired):
		return "key expired"
	case errors.Is(err, errKeyNotAuthorized), errors.Is(err, errUnknownCA):
		return "key removed"
	}
	return "key no longer authorized"
}

// limitCheckInterval is how often expiry, idle and age limits are checked:
// a connection is closed at most this long after its limit passed.
const limitCheckInterval = time.Second

// enforceLimits closes connections whose key or certificate expired, that
// sat idle past IdleTimeout, or that passed MaxConnectionAge, until ctx
// ends.
func (s *Server) enforceLimits(ctx context.Context) {
	t := time.NewTicker(limitCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.checkLimits()
		}
	}
}

func (s *Server) checkLimits() {
	now, clock := time.Now(), s.cfg.Clock()
	type closing struct {
		cs     *connState
		reason string
		attrs  []any
	}
	var out []closing
	s.mu.Lock()
	for cs := range s.conns {
		if !cs.authed || cs.access == nil || cs.closeReason != "" {
			continue
		}
		g := cs.access
		idle := now.Sub(time.Unix(0, cs.lastActivity.Load()))
		switch {
		case !g.access.Options.ExpiryTime.IsZero() && !clock.Before(g.access.Options.ExpiryTime):
			out = append(out, closing{cs, "key expired", []any{"expiry_time", g.access.Options.ExpiryTime.UTC().Format(time.RFC3339)}})
		case certExpired(g.key, clock):
			out = append(out, closing{cs, "certificate expired", nil})
		case s.cfg.IdleTimeout > 0 && idle >= s.cfg.IdleTimeout:
			out = append(out, closing{cs, "idle timeout", []any{"idle_timeout", s.cfg.IdleTimeout.String()}})
		case s.cfg.MaxConnectionAge > 0 && now.Sub(cs.authedAt) >= s.cfg.MaxConnectionAge:
			out = append(out, closing{cs, "maximum connection age", []any{"max_connection_age", s.cfg.MaxConnectionAge.String()}})
		}
	}
	s.mu.Unlock()
	for _, c := range out {
		c.cs.closeWith(s, c.reason, c.attrs...)
	}
}

// certExpired reports a certificate whose validity ended by now.
func certExpired(k gossh.PublicKey, now time.Time) bool {
	cert, ok := k.(*gossh.Certificate)
	if !ok || cert.ValidBefore == gossh.CertTimeInfinity {
		return false
	}
	return now.Unix() >= 0 && uint64(now.Unix()) >= cert.ValidBefore
}
