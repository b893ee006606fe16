package sshd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	gliderssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// connState is what the server tracks per TCP connection, from accept to
// close.
type connState struct {
	id     string // unique to this connection, on every line about it
	conn   net.Conn
	remote netip.AddrPort
	peer   Peer
	bucket string // what its unauthenticated slot counts under
	start  time.Time

	// lastActivity is when a tunnel of the connection last moved a byte
	// (or when it authenticated), in Unix nanoseconds: the idle timeout's
	// clock. Keepalives are not activity.
	lastActivity atomic.Int64

	// authBegan is set at the first authentication attempt: a handshake
	// that fails after it failed authentication, which auth lines tell.
	authBegan atomic.Bool

	// guarded by Server.mu
	clientIdent string // the client's identification line
	user        string // the first user name; a change ends the connection
	attempt     *grant // the authentication attempt in progress
	authed      bool
	authedAt    time.Time
	access      *grant
	tunnels     int    // open now
	opened      int    // opened in all
	keyFP       string // the key whose connection slot this holds, once authenticated
	sshConn     gossh.Conn
	closed      bool
	closeReason string // why bastion closed it; "" = the client or the network did
	closeAttrs  []any  // details of closeReason for the closing line
	hsTimer     *time.Timer
	kaTimer     *time.Timer
	kaMissed    int
	kaWait      bool
}

type ctxKey string

const ctxConnState ctxKey = "bastion-conn"

func stateOf(ctx gliderssh.Context) *connState {
	cs, _ := ctx.Value(ctxConnState).(*connState)
	return cs
}

// newConnID is a random 16-hex-digit id: unique across restarts and tasks,
// so log search by conn finds one connection.
func newConnID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// connAttrs are the attributes every line about cs carries: conn, and the
// SSM session and its principal when known.
func (s *Server) connAttrs(cs *connState) []any {
	attrs := []any{"conn", cs.id}
	if cs.peer.SSMSessionID != "" {
		attrs = append(attrs, "ssm_session_id", cs.peer.SSMSessionID)
		if p := s.principal(cs); p != "" {
			attrs = append(attrs, "principal", p)
		}
	}
	return attrs
}

func (s *Server) principal(cs *connState) string {
	if cs.peer.SSMSessionID == "" || s.cfg.Peers == nil {
		return ""
	}
	return capField(s.cfg.Peers.Principal(cs.peer.SSMSessionID))
}

// closeWith closes the connection for reason (with attrs detailing it),
// the first reason given being the one its lines report.
func (cs *connState) closeWith(s *Server, reason string, attrs ...any) {
	s.mu.Lock()
	if cs.closeReason == "" {
		cs.closeReason, cs.closeAttrs = reason, attrs
	}
	s.mu.Unlock()
	cs.conn.Close()
}

// touch records tunnel activity now, for the idle timeout.
func (cs *connState) touch() { cs.lastActivity.Store(time.Now().UnixNano()) }

// serverIdent is bastion's identification line. gliderlabs hands x/crypto
// "SSH-2.0-" + Server.Version, which x/crypto writes (identConn drops that
// write, having sent the line itself) and hashes into the key exchange: the
// two must be one string.
const (
	serverVersion = "bastion"
	serverIdent   = "SSH-2.0-" + serverVersion
)

// connCallback admits or refuses a new TCP connection before any crypto
// work (MaxStartups), arms the handshake deadline, and exchanges
// identification lines so the algorithm offer can fit the client.
func (s *Server) connCallback(ctx gliderssh.Context, conn net.Conn) net.Conn {
	cs := s.admit(conn)
	if cs == nil {
		return nil
	}
	c, err := s.exchangeIdent(cs, conn)
	if err != nil {
		// gliderlabs neither closes ctx nor calls back for a connection
		// refused here: the state is released now.
		s.log.Debug("no SSH identification from client", append(s.connAttrs(cs), "client", cs.remote.String(), "error", err.Error())...)
		s.connClosed(cs)
		return nil
	}
	ctx.SetValue(ctxConnState, cs)
	// gliderlabs cancels ctx when the connection ends, whatever the cause.
	context.AfterFunc(ctx, func() { s.connClosed(cs) })
	return c
}

// admit applies the unauthenticated-connection limits and registers the
// connection, or logs the refusal and returns nil. Loopback connections
// are counted under the SSM session whose worker made them, so one busy
// session cannot lock out the others; the healthcheck has slots of its own.
func (s *Server) admit(conn net.Conn) *connState {
	remote := addrPortOf(conn.RemoteAddr())
	var peer Peer
	if s.cfg.Peers != nil && remote.Addr().IsLoopback() {
		peer = s.cfg.Peers.Identify(remote, addrPortOf(conn.LocalAddr()))
	}
	bucket := peer.bucket(remote)
	s.mu.Lock()
	reason := ""
	n := s.unauthByBucket[bucket]
	switch {
	case s.draining:
		reason = "shutting down"
	case peer.HealthCheck:
		if n >= maxHealthChecks {
			reason = "too many health checks at once"
		}
	case s.cfg.MaxStartups.refuse(s.unauth):
		reason = "too many unauthenticated connections"
	case s.cfg.MaxStartupsPerSource.refuse(n):
		reason = "too many unauthenticated connections from this source"
	}
	if reason != "" {
		s.mu.Unlock()
		attrs := []any{"client", remote.String(), "reason", reason, "source", bucket}
		if peer.SSMSessionID != "" {
			attrs = append(attrs, "ssm_session_id", peer.SSMSessionID)
		}
		s.refusals.warn("connection refused", bucket, attrs...)
		return nil
	}
	cs := &connState{id: newConnID(), conn: conn, remote: remote, peer: peer, bucket: bucket, start: time.Now()}
	s.conns[cs] = struct{}{}
	if !peer.HealthCheck {
		s.unauth++
	}
	s.unauthByBucket[bucket]++
	cs.hsTimer = time.AfterFunc(s.cfg.HandshakeTimeout, func() {
		s.mu.Lock()
		authed := cs.authed
		s.mu.Unlock()
		if !authed {
			cs.closeWith(s, "handshake and authentication deadline exceeded", "timeout", s.cfg.HandshakeTimeout.String())
		}
	})
	s.mu.Unlock()
	return cs
}

// exchangeIdent sends bastion's identification, reads the client's (the
// handshake deadline bounds the wait), and returns the connection x/crypto
// will use.
func (s *Server) exchangeIdent(cs *connState, conn net.Conn) (net.Conn, error) {
	var c net.Conn = deadlineFreeConn{conn}
	if sk, err := newSocket(conn); err == nil {
		c = &readBufConn{deadlineFreeConn: deadlineFreeConn{conn}, sk: sk}
	}
	sent := []byte(serverIdent + "\r\n")
	if _, err := conn.Write(sent); err != nil {
		return nil, err
	}
	ident, read, err := readIdent(c)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	cs.clientIdent = ident
	s.mu.Unlock()
	s.handshakes.Store(cs.remote, cs)
	return &identConn{Conn: c, replay: read, sent: sent}, nil
}

func (s *Server) leaveUnauthLocked(cs *connState) {
	if !cs.peer.HealthCheck {
		s.unauth--
	}
	decrement(s.unauthByBucket, cs.bucket)
}

// connClosed releases what the connection held and writes the line that
// ends its story: an authenticated connection (or one that tried) at info,
// a probe at debug.
func (s *Server) connClosed(cs *connState) {
	s.mu.Lock()
	if cs.closed {
		s.mu.Unlock()
		return
	}
	cs.closed = true
	if !cs.authed {
		s.leaveUnauthLocked(cs)
	}
	if cs.keyFP != "" {
		decrement(s.connsByKey, cs.keyFP)
	}
	cs.hsTimer.Stop()
	if cs.kaTimer != nil {
		cs.kaTimer.Stop()
	}
	delete(s.conns, cs)
	reason := cs.closeReason
	if reason == "" {
		reason = "closed by the client or the network"
	}
	attrs := append(s.connAttrs(cs), "client", cs.remote.String())
	tried := cs.user != ""
	if cs.user != "" {
		attrs = append(attrs, "user", capField(cs.user))
	}
	if cs.access != nil {
		attrs = append(attrs, "fingerprint", cs.access.fingerprint)
	}
	attrs = append(attrs, "authenticated", cs.authed, "tunnels", cs.opened,
		"duration_ms", time.Since(cs.start).Milliseconds(), "reason", reason)
	attrs = append(attrs, cs.closeAttrs...)
	authed, byUs := cs.authed, cs.closeReason != ""
	s.mu.Unlock()
	switch {
	case cs.peer.HealthCheck:
		s.log.Debug("connection closed", attrs...)
	case authed || tried:
		s.log.Info("connection closed", attrs...)
	case byUs:
		// Idle unauthenticated connections cut at the deadline: a flood
		// of them is summarised per source.
		s.refusals.info("connection closed", cs.bucket, attrs...)
	default:
		s.log.Debug("connection closed", attrs...)
	}
}

// authenticated moves a connection out of the unauthenticated count and
// starts its keepalive. A key removed since its signature was verified
// ends the connection at once, as recheck would have. It reports whether
// the connection is now in with its access.
func (s *Server) authenticated(ctx gliderssh.Context, cs *connState, g *grant) bool {
	s.handshakes.Delete(cs.remote) // the handshake did not fail, whatever comes next
	s.mu.Lock()
	if cs.closed || cs.authed {
		s.mu.Unlock()
		return false
	}
	cs.authed = true
	cs.authedAt = time.Now()
	cs.lastActivity.Store(cs.authedAt.UnixNano())
	cs.hsTimer.Stop()
	s.leaveUnauthLocked(cs)
	g = s.regrantLocked(cs.user, cs.remote.Addr(), g)
	if g.err == nil {
		cs.access = g
		if s.cfg.KeepaliveInterval > 0 {
			cs.kaTimer = time.AfterFunc(s.cfg.KeepaliveInterval, func() { s.keepalive(ctx, cs) })
		}
	}
	s.mu.Unlock()
	if g.err != nil {
		// No access: channel requests are refused until the close lands.
		cs.closeWith(s, revocationReason(g.err), "cause", g.err.Error())
		return false
	}
	return true
}

// keepalive sends keepalive@openssh.com like sshd's ClientAliveInterval: a
// peer that leaves KeepaliveCountMax of them unanswered is dropped. The
// request runs on its own goroutine because SendRequest blocks until the
// reply; at most one is in flight per connection.
func (s *Server) keepalive(ctx gliderssh.Context, cs *connState) {
	s.mu.Lock()
	if cs.closed {
		s.mu.Unlock()
		return
	}
	if cs.sshConn == nil {
		cs.sshConn, _ = ctx.Value(gliderssh.ContextKeyConn).(gossh.Conn)
	}
	conn := cs.sshConn
	if cs.kaWait {
		cs.kaMissed++
		if cs.kaMissed >= s.cfg.KeepaliveCountMax {
			s.mu.Unlock()
			cs.closeWith(s, "keepalive unanswered", "missed", s.cfg.KeepaliveCountMax)
			return
		}
	} else if conn != nil {
		cs.kaWait = true
		go func() {
			_, _, err := conn.SendRequest("keepalive@openssh.com", true, nil)
			s.mu.Lock()
			cs.kaWait = false
			if err == nil {
				cs.kaMissed = 0
			}
			s.mu.Unlock()
		}()
	}
	cs.kaTimer.Reset(s.cfg.KeepaliveInterval)
	s.mu.Unlock()
}
