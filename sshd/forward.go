package sshd

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"time"

	gliderssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// directTCPIPRequest is the RFC 4254 section 7.2 payload.
type directTCPIPRequest struct {
	DestAddr   string
	DestPort   uint32
	OriginAddr string
	OriginPort uint32
}

// The client is told only these; the cause goes to the audit log.
const (
	msgProhibited       = "administratively prohibited"
	msgConnectFailed    = "connect failed"
	msgResourceShortage = "resource shortage"
)

// policyError carries a refusal out of the dialer's control hook.
type policyError struct{ reason Reason }

func (e *policyError) Error() string { return string(e.reason) }

func (s *Server) handleDirectTCPIP(_ *gliderssh.Server, _ *gossh.ServerConn, nc gossh.NewChannel, ctx gliderssh.Context) {
	cs := stateOf(ctx)
	var req directTCPIPRequest
	if err := gossh.Unmarshal(nc.ExtraData(), &req); err != nil || cs == nil {
		nc.Reject(gossh.ConnectionFailed, msgConnectFailed)
		return
	}
	t := &tunnel{
		cs:        cs,
		start:     time.Now(),
		user:      capField(ctx.User()),
		client:    cs.remote.String(),
		requested: capField(net.JoinHostPort(unbracket(req.DestAddr), strconv.FormatUint(uint64(req.DestPort), 10))),
	}

	s.mu.Lock()
	g := cs.access
	switch {
	case g == nil:
		s.mu.Unlock()
		nc.Reject(gossh.Prohibited, msgProhibited)
		return
	}
	t.fingerprint = g.fingerprint
	if s.draining {
		s.mu.Unlock()
		s.refuse(nc, t, gossh.Prohibited, "server shutting down")
		return
	}
	if reason, limit := s.tunnelShortageLocked(cs, g.fingerprint); reason != "" {
		s.mu.Unlock()
		s.refuse(nc, t, gossh.ResourceShortage, reason, "limit", limit)
		return
	}
	cs.tunnels++
	cs.opened++
	s.tunnelsByKey[g.fingerprint]++
	s.tunnels.Add(1)
	open := s.openCount.Add(1)
	s.mu.Unlock()
	if s.cfg.TunnelCount != nil {
		s.cfg.TunnelCount(int(open))
	}
	defer s.tunnelEnded(cs, g.fingerprint)

	dest := Dest{Host: req.DestAddr, Port: int(req.DestPort)}
	if r := s.policy.Load().Decide(g.access, dest); r != ReasonAllowed {
		s.refuse(nc, t, gossh.Prohibited, string(r))
		return
	}
	target, err := s.dial(ctx, g.access, dest)
	if err != nil {
		var pe *policyError
		if errors.As(err, &pe) {
			s.refuse(nc, t, gossh.Prohibited, string(pe.reason))
		} else {
			s.refuse(nc, t, gossh.ConnectionFailed, "dial: "+err.Error())
		}
		return
	}
	t.dialed = target.RemoteAddr().String()
	ch, reqs, err := nc.Accept()
	if err != nil {
		target.Close()
		t.reason = "channel accept: " + err.Error()
		s.logTunnel(t)
		return
	}
	go gossh.DiscardRequests(reqs)
	s.log.Info("tunnel open", append(s.tunnelAttrs(t), "dialed", t.dialed)...)
	if s.cfg.Audit != nil {
		s.cfg.Audit.TunnelOpened(s.sessionEvent(cs), t.requested)
	}
	t.up, t.down, t.reason = s.pipe(ctx, cs, ch, target)
	s.logTunnel(t)
}

// dial resolves the destination once and dials it; the policy runs in the
// dialer's control hook on the exact address being connected, so a DNS
// answer cannot steer a tunnel past it.
func (s *Server) dial(ctx context.Context, a Access, d Dest) (*net.TCPConn, error) {
	host := d.Host
	if ip, err := parseIP(host); err == nil {
		// Literal spellings (127.1, 2130706433, [::ffff:7f00:1]) are
		// normalised so the dialer connects where libc would.
		host = ip.String()
	}
	var mu sync.Mutex
	var refusal *policyError
	dialer := net.Dialer{
		Timeout:  s.cfg.DialTimeout,
		Resolver: s.cfg.Resolver,
		ControlContext: func(_ context.Context, _, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return &policyError{reason: ReasonNotAllowed}
			}
			dd := Dest{Host: d.Host, Port: int(ap.Port()), IP: ap.Addr().Unmap()}
			if r := s.policy.Load().Decide(a, dd); r != ReasonAllowed {
				pe := &policyError{reason: r}
				mu.Lock()
				if refusal == nil {
					refusal = pe
				}
				mu.Unlock()
				return pe
			}
			return nil
		},
	}
	conn, err := dialer.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(d.Port)))
	if err != nil {
		mu.Lock()
		defer mu.Unlock()
		if refusal != nil {
			return nil, refusal
		}
		return nil, err
	}
	return conn.(*net.TCPConn), nil
}

// tunnel is the audit record of one direct-tcpip channel.
type tunnel struct {
	cs          *connState
	start       time.Time
	user        string
	fingerprint string
	client      string
	requested   string
	dialed      string
	up, down    int64
	reason      string
}

func (s *Server) refuse(nc gossh.NewChannel, t *tunnel, code gossh.RejectionReason, reason string, attrs ...any) {
	msg := msgConnectFailed
	switch code {
	case gossh.Prohibited:
		msg = msgProhibited
	case gossh.ResourceShortage:
		msg = msgResourceShortage
	}
	nc.Reject(code, msg)
	s.log.Info("tunnel refused", append(append(s.tunnelAttrs(t), "reason", reason), attrs...)...)
}

func (s *Server) logTunnel(t *tunnel) {
	s.log.Info("tunnel", append(s.tunnelAttrs(t), "dialed", t.dialed, "bytes_up", t.up, "bytes_down", t.down,
		"duration_ms", time.Since(t.start).Milliseconds(), "close_reason", t.reason)...)
}

// tunnelAttrs are the fields every line about a tunnel starts with.
func (s *Server) tunnelAttrs(t *tunnel) []any {
	return append(s.connAttrs(t.cs), "user", t.user, "fingerprint", t.fingerprint, "client", t.client, "requested", t.requested)
}

// pipe copies both ways with half-close: EOF from the client becomes a TCP
// FIN to the target (CloseWrite), EOF from the target becomes an SSH EOF to
// the client. It returns when both directions are done, or when the
// connection ends or the drain grace runs out, whichever comes first.
func (s *Server) pipe(ctx context.Context, cs *connState, ch gossh.Channel, target *net.TCPConn) (up, down int64, reason string) {
	// One socket serves both directions: only reading holds its buffer.
	sk, err := newSocket(target)
	if err != nil { // a TCP connection has one unless it is already closed
		ch.Close()
		target.Close()
		return 0, 0, "target side: " + err.Error()
	}
	var once sync.Once
	forced := ""
	stop := func(why string) {
		once.Do(func() {
			forced = why
			ch.Close()
			target.Close()
		})
	}
	stopConn := context.AfterFunc(ctx, func() {
		// At the end of the grace the drain closes connections too; the
		// cause is the grace either way.
		if s.cutCtx.Err() != nil {
			stop("shutdown grace ended")
			return
		}
		s.mu.Lock()
		why := cs.closeReason
		s.mu.Unlock()
		if why == "" {
			why = "ssh connection closed"
		}
		stop(why)
	})
	defer stopConn()
	stopCut := context.AfterFunc(s.cutCtx, func() { stop("shutdown grace ended") })
	defer stopCut()

	// An error either way (reset, write to a closed peer) ends both; a
	// clean EOF only half-closes.
	upDone := make(chan struct{})
	go func() {
		defer close(upDone)
		n, err := copyFromChannel(sk, ch, cs.touch)
		up = n
		if err != nil {
			stop("client side: " + err.Error())
			return
		}
		target.CloseWrite()
	}()
	n, err := copyFromTarget(ch, sk, cs.touch)
	down = n
	if err != nil {
		stop("target side: " + err.Error())
	} else {
		ch.CloseWrite()
	}
	<-upDone

	stopConn()
	stopCut()
	once.Do(func() {
		ch.Close()
		target.Close()
	})
	if forced != "" {
		return up, down, forced
	}
	// Closing the connection ends its channels with a clean EOF, which can
	// finish both directions before the context's stop runs: the reason it
	// was closed for (set before the close) is still the tunnel's.
	s.mu.Lock()
	why := cs.closeReason
	s.mu.Unlock()
	if why != "" {
		return up, down, why
	}
	return up, down, "eof both ways"
}

// copyFromChannel copies the channel to dst. It reads into a small buffer
// while the traffic is interactive and switches to a pooled bulk buffer
// once a read fills the small one, until a read comes back small again.
func copyFromChannel(dst io.Writer, src io.Reader, touch func()) (int64, error) {
	small := make([]byte, smallBufSize)
	var bp *[]byte
	defer func() {
		if bp != nil {
			bulkBufs.Put(bp)
		}
	}()
	var total int64
	for {
		buf := small
		if bp != nil {
			buf = *bp
		}
		n, rerr := src.Read(buf)
		if n > 0 {
			touch()
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if werr == nil && w != n {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				return total, werr
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return total, nil
			}
			return total, rerr
		}
		switch {
		case bp == nil && n == len(small):
			bp = bulkBufs.Get().(*[]byte)
		case bp != nil && n <= smallBufSize:
			bulkBufs.Put(bp)
			bp = nil
		}
	}
}

// copyFromTarget copies the target's socket to dst with a pooled buffer
// taken only while the socket has data.
func copyFromTarget(dst io.Writer, sk *socket, touch func()) (int64, error) {
	defer sk.release()
	var total int64
	for {
		buf, err := sk.read()
		if len(buf) > 0 {
			touch()
			w, werr := dst.Write(buf)
			total += int64(w)
			if werr == nil && w != len(buf) {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				return total, werr
			}
		}
		if err != nil {
			if err == io.EOF {
				return total, nil
			}
			return total, err
		}
	}
}
