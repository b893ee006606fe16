// Package sshd is bastion's embedded SSH server: public-key authentication
// against an authorized_keys set with sshd(8) option semantics, and
// direct-tcpip forwarding (ssh -J, -W, -L) under a destination policy. It
// serves no sessions, shells or remote forwards.
//
// What comes from github.com/gliderlabs/ssh and what bastion owns:
// gliderlabs provides the accept loop, the per-connection goroutine that
// runs x/crypto/ssh's handshake, and the dispatch of channels and global
// requests to handlers. Everything with a security or resource decision in
// it is bastion's, on purpose:
//
//   - authentication: gliderlabs with no handler accepts everyone, and
//     returns one shared Permissions value for every key it is asked about;
//     publicKeyHandler (auth.go) gives each key its own, and the audit
//     line of each attempt names only that attempt's key;
//   - admission: MaxStartups per source and per SSM session, with sshd's
//     random early drop, before any crypto (conn.go admit);
//   - the identification exchange, read before the algorithm lists are
//     offered, so that only the clients that need it get the wider list
//     (compat.go), as OpenSSH's compat.c keys behaviour on the peer's
//     version string;
//   - deadlines: gliderlabs rewrites socket deadlines on every read and
//     write; bastion's handshake deadline, keepalive (ClientAliveInterval
//     semantics), idle and age limits are timers of its own
//     (netconn.go deadlineFreeConn, conn.go, revoke.go);
//   - forwarding: gliderlabs' direct-tcpip handler has no policy, no dial
//     timeout and no half-close; handleDirectTCPIP (forward.go) decides on
//     the address actually dialed, dials with a timeout, copies both ways
//     with half-close, admits tunnels against the memory budget
//     (limits.go) and writes the audit lines;
//   - shutdown: gliderlabs' Shutdown waits on a WaitGroup that races a
//     connection finishing its handshake; drain (server.go) closes the
//     listeners, then connections without tunnels, lets tunnels run for the
//     grace and cuts the rest;
//   - live access: SetAuthorizedKeys swaps the key set and closes the
//     connections it no longer admits (revoke.go).
package sshd

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gliderssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/sys/cpu"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = gliderssh.ErrServerClosed

// Algorithms offered: modern only. The OpenSSH client's default preference
// decides among them.
var (
	KeyExchanges = []string{
		gossh.KeyExchangeMLKEM768X25519,
		gossh.KeyExchangeCurve25519,
		"curve25519-sha256@libssh.org",
	}
	// Ciphers are AEAD only. With AES and carry-less multiply in hardware
	// (AES-NI+PCLMULQDQ, ARMv8 AES+PMULL, s390x KMA), only AES-GCM is
	// offered: Go runs it in constant-time assembly several times faster
	// than chacha20-poly1305, which x/crypto implements in generic Go on
	// amd64 and arm64, and which the OpenSSH client would otherwise pick
	// first. Both are 128-bit-security AEADs with no known weakness in SSH
	// use (the Terrapin prefix truncation hit chacha20-poly1305 and CBC/EtM
	// modes, not GCM; strict KEX fixes it either way). Without such hardware
	// Go's AES-GCM falls back to a slower table-free software path and
	// chacha20-poly1305 is offered too.
	Ciphers = offeredCiphers(hasAESGCMHardware())
	MACs    = []string{
		gossh.HMACSHA256ETM,
		gossh.HMACSHA512ETM,
	}
	// PublicKeyAuthAlgorithms excludes ssh-rsa (SHA-1) and ssh-dss.
	PublicKeyAuthAlgorithms = []string{
		gossh.KeyAlgoED25519,
		gossh.KeyAlgoSKED25519,
		gossh.KeyAlgoECDSA256,
		gossh.KeyAlgoECDSA384,
		gossh.KeyAlgoECDSA521,
		gossh.KeyAlgoSKECDSA256,
		gossh.KeyAlgoRSASHA512,
		gossh.KeyAlgoRSASHA256,
	}
)

func offeredCiphers(aesHardware bool) []string {
	if aesHardware {
		return []string{gossh.CipherAES128GCM, gossh.CipherAES256GCM}
	}
	return []string{gossh.CipherAES128GCM, gossh.CipherAES256GCM, gossh.CipherChaCha20Poly1305}
}

func hasAESGCMHardware() bool {
	switch runtime.GOARCH {
	case "amd64":
		return cpu.X86.HasAES && cpu.X86.HasPCLMULQDQ
	case "arm64":
		return cpu.ARM64.HasAES && cpu.ARM64.HasPMULL
	case "s390x":
		return cpu.S390X.HasAES && cpu.S390X.HasAESGCM
	}
	return false
}

// Config is what the server needs. Zero durations and counts take the
// defaults documented on each field.
type Config struct {
	HostSigners    []gossh.Signer // required
	AuthorizedKeys []AuthorizedKey
	Policy         Policy
	Logger         *slog.Logger // nil = discard
	Clock          func() time.Time
	Resolver       *net.Resolver // nil = net.DefaultResolver

	// Before authentication.
	HandshakeTimeout time.Duration // handshake + auth deadline; default 30s
	MaxAuthTries     int           // default 6
	// MaxStartups limits unauthenticated connections in all; default
	// 100:30:200.
	MaxStartups Startups
	// MaxStartupsPerSource limits unauthenticated connections per SSM
	// session (for session workers) or per client address; default 24:30:48.
	MaxStartupsPerSource Startups
	// Peers names the process behind loopback connections; nil = nobody.
	Peers PeerIdentifier

	// Connections and tunnels.
	// MaxConnectionsPerKey bounds authenticated connections per key (the
	// certificate's key for a certificate); default 64.
	MaxConnectionsPerKey int
	MaxTunnelsPerConn    int // open direct-tcpip channels per connection; default 100
	// MaxTunnels bounds open tunnels in all, so that the data they can
	// buffer fits in memory; one key may hold at most half of them.
	// Default 1000.
	MaxTunnels int
	// IdleTimeout closes a connection whose tunnels moved no byte for that
	// long (keepalives are not activity); 0 = never.
	IdleTimeout time.Duration
	// MaxConnectionAge closes a connection that long after it
	// authenticated; 0 = never.
	MaxConnectionAge  time.Duration
	KeepaliveInterval time.Duration // default 15s; negative disables
	KeepaliveCountMax int           // unanswered keepalives before the connection is dropped; default 3
	DialTimeout       time.Duration // default 10s
	DrainTimeout      time.Duration // grace for open tunnels at shutdown; default 10s

	// Observers.
	// Audit is told of session starts and tunnel opens; nil = nobody.
	Audit Audit
	// TunnelCount, when set, is told the number of open tunnels after
	// each change (membudget.Reclaimer returns memory after a burst).
	TunnelCount func(open int)
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	defInt := func(n *int, v int) {
		if *n == 0 {
			*n = v
		}
	}
	def(&c.HandshakeTimeout, 30*time.Second)
	def(&c.KeepaliveInterval, 15*time.Second)
	def(&c.DialTimeout, 10*time.Second)
	def(&c.DrainTimeout, 10*time.Second)
	defInt(&c.MaxAuthTries, 6)
	if c.MaxStartups == (Startups{}) {
		c.MaxStartups = Startups{Begin: 100, Rate: 30, Full: 200}
	}
	if c.MaxStartupsPerSource == (Startups{}) {
		c.MaxStartupsPerSource = Startups{Begin: 24, Rate: 30, Full: 48}
	}
	defInt(&c.MaxTunnelsPerConn, 100)
	defInt(&c.MaxTunnels, 1000)
	defInt(&c.MaxConnectionsPerKey, 64)
	defInt(&c.KeepaliveCountMax, 3)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Resolver == nil {
		c.Resolver = net.DefaultResolver
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
}

// Server is an SSH jump server. Create it with New.
type Server struct {
	cfg Config
	log *slog.Logger
	srv *gliderssh.Server
	// auth is the authorized-keys set in force; a reload swaps it whole.
	auth atomic.Pointer[authorizer]
	// policy is cfg.Policy with the host's current addresses.
	policy atomic.Pointer[Policy]
	// handshakes holds, per client address, the connection whose
	// handshake is under way, from the identification exchange until the
	// handshake ends (handshakeFailed, or authentication).
	handshakes sync.Map
	watchCtx   context.Context // ends at shutdown: the address watch
	unwatch    context.CancelFunc
	watching   sync.Once
	refusals   *refusalLog

	// cut ends every tunnel when the drain grace is over.
	cutCtx context.Context
	cut    context.CancelFunc

	mu             sync.Mutex
	conns          map[*connState]struct{}
	unauth         int            // unauthenticated connections, health checks aside
	unauthByBucket map[string]int // per Peer.bucket
	draining       bool
	listeners      []net.Listener
	shutdown       sync.Once

	tunnels   sync.WaitGroup
	openCount atomic.Int64
	// guarded by mu: per key fingerprint, authenticated connections and
	// open tunnels
	connsByKey   map[string]int
	tunnelsByKey map[string]int
}

// New validates cfg and builds a server. It refuses an unusable config
// before any connection is served: no host key, or no authorized key (an
// open bastion is never the default).
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if len(cfg.HostSigners) == 0 {
		return nil, errors.New("sshd: no host key")
	}
	if len(cfg.AuthorizedKeys) == 0 {
		return nil, errors.New("sshd: no authorized keys")
	}
	s := &Server{
		cfg:            cfg,
		log:            cfg.Logger,
		refusals:       newRefusalLog(cfg.Logger),
		conns:          map[*connState]struct{}{},
		unauthByBucket: map[string]int{},
		connsByKey:     map[string]int{},
		tunnelsByKey:   map[string]int{},
	}
	s.auth.Store(&authorizer{keys: cfg.AuthorizedKeys, clock: cfg.Clock})
	policy := cfg.Policy
	s.policy.Store(&policy)
	s.refreshLocalAddrs()
	s.watchCtx, s.unwatch = context.WithCancel(context.Background())
	s.cutCtx, s.cut = context.WithCancel(context.Background())
	signers := make([]gliderssh.Signer, len(cfg.HostSigners))
	for i, k := range cfg.HostSigners {
		signers[i] = k
	}
	s.srv = &gliderssh.Server{
		Version:     serverVersion,
		HostSigners: signers,
		// Only direct-tcpip: no session, exec, shell, subsystem, x11,
		// streamlocal. Non-nil empty request map: tcpip-forward and every
		// other global request are answered with failure.
		ChannelHandlers:          map[string]gliderssh.ChannelHandler{"direct-tcpip": s.handleDirectTCPIP},
		RequestHandlers:          map[string]gliderssh.RequestHandler{},
		SubsystemHandlers:        map[string]gliderssh.SubsystemHandler{},
		PublicKeyHandler:         s.publicKeyHandler,
		ConnCallback:             s.connCallback,
		ServerConfigCallback:     s.serverConfig,
		ConnectionFailedCallback: s.handshakeFailed,
	}
	return s, nil
}

// handshakeFailed logs why an SSH client could not finish the key exchange
// (no common algorithm, a protocol error): at warning level, so an operator
// whose user says "my client can't connect" can see why, and summarised per
// source. Ends after authentication began are refusals the auth lines
// already tell, and probes that never identified as SSH are only debug.
func (s *Server) handshakeFailed(conn net.Conn, err error) {
	remote := addrPortOf(conn.RemoteAddr())
	// The connection's state may be gone already (x/crypto closed the
	// socket, and gliderlabs ended its context, before calling back): what
	// the handshake needs to report was put aside for it.
	// Its id and identification were set before it was stored.
	cs, _ := s.handshakes.LoadAndDelete(remote)
	h, _ := cs.(*connState)
	if h == nil {
		h = &connState{}
	}
	attrs := []any{"conn", h.id, "client", remote.String(), "client_ident", capField(h.clientIdent), "error", capField(err.Error())}
	if h.clientIdent == "" || h.authBegan.Load() || clientLeft(err) {
		s.log.Debug("handshake failed", attrs...)
		return
	}
	s.refusals.warn("handshake failed", h.bucket, attrs...)
}

// clientLeft reports an error that only says the client went away (a port
// probe, ssh-keyscan, a client that gave up on its own).
func clientLeft(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET)
}

// authorizer is the authorized-keys set in force now.
func (s *Server) authorizer() *authorizer { return s.auth.Load() }

func (s *Server) serverConfig(ctx gliderssh.Context) *gossh.ServerConfig {
	ciphers, macs := Ciphers, MACs
	if cs := stateOf(ctx); cs != nil {
		s.mu.Lock()
		ident := cs.clientIdent
		s.mu.Unlock()
		ciphers, macs = algorithmsFor(ident)
	}
	cfg := &gossh.ServerConfig{
		Config: gossh.Config{
			KeyExchanges: KeyExchanges,
			Ciphers:      ciphers,
			MACs:         macs,
		},
		MaxAuthTries:            s.cfg.MaxAuthTries,
		PublicKeyAuthAlgorithms: PublicKeyAuthAlgorithms,
		VerifiedPublicKeyCallback: func(md gossh.ConnMetadata, _ gossh.PublicKey, perms *gossh.Permissions, _ string) (*gossh.Permissions, error) {
			return s.verifiedPublicKey(ctx, md, perms)
		},
		AuthLogCallback: func(md gossh.ConnMetadata, method string, err error) {
			s.authLog(ctx, md, method, err)
		},
	}
	return cfg
}

// Serve accepts connections on ln until Shutdown. It returns
// ErrServerClosed after Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners = append(s.listeners, ln)
	s.mu.Unlock()
	s.watching.Do(func() {
		go s.watchLocalAddrs(s.watchCtx)
		go s.enforceLimits(s.watchCtx)
	})
	err := s.srv.Serve(ln)
	s.mu.Lock()
	draining := s.draining
	s.mu.Unlock()
	if draining {
		return ErrServerClosed
	}
	return err
}

// DrainSummary reports how a shutdown went.
type DrainSummary struct {
	OpenAtStart int
	Drained     int // tunnels that ended on their own during the grace
	Cut         int // tunnels closed when the grace ran out
	Duration    time.Duration
}

// Shutdown stops accepting, closes connections that carry no tunnel, lets
// open tunnels run for DrainTimeout (or until ctx ends, if sooner), then
// closes everything. It returns ctx.Err() if ctx cut the drain short.
func (s *Server) Shutdown(ctx context.Context) (DrainSummary, error) {
	var sum DrainSummary
	var err error
	s.shutdown.Do(func() { sum, err = s.drain(ctx) })
	return sum, err
}

func (s *Server) drain(ctx context.Context) (DrainSummary, error) {
	start := time.Now()
	s.mu.Lock()
	s.draining = true
	var idle []net.Conn
	for cs := range s.conns {
		if !cs.authed || cs.tunnels == 0 {
			idle = append(idle, cs.conn)
		}
	}
	listeners := s.listeners
	s.mu.Unlock()
	// Closing the listeners makes new connections fail at once. Not
	// gliderlabs' Shutdown: its WaitGroup Wait would race with the Add of a
	// connection finishing its handshake now.
	for _, ln := range listeners {
		ln.Close()
	}
	for _, c := range idle {
		c.Close()
	}

	open := int(s.openCount.Load())
	sum := DrainSummary{OpenAtStart: open}
	s.log.Info("sshd draining", "open_tunnels", open, "grace", s.cfg.DrainTimeout.String())

	done := make(chan struct{})
	go func() { s.tunnels.Wait(); close(done) }()
	grace := time.NewTimer(s.cfg.DrainTimeout)
	defer grace.Stop()
	var err error
	select {
	case <-done:
	case <-grace.C:
	case <-ctx.Done():
		err = ctx.Err()
	}
	sum.Cut = int(s.openCount.Load())
	sum.Drained = open - sum.Cut
	if sum.Drained < 0 {
		sum.Drained = 0
	}
	s.cut()
	_ = s.srv.Close()
	s.mu.Lock()
	for cs := range s.conns {
		cs.conn.Close()
	}
	s.mu.Unlock()
	<-done
	s.refusals.stop()
	s.unwatch()
	sum.Duration = time.Since(start)
	s.log.Info("sshd stopped", "open_at_start", sum.OpenAtStart, "drained", sum.Drained, "cut", sum.Cut,
		"duration_ms", sum.Duration.Milliseconds())
	return sum, err
}

// tunnelEnded updates counts when a tunnel closes; during a drain, a
// connection left without tunnels is closed.
func (s *Server) tunnelEnded(cs *connState, keyFP string) {
	s.mu.Lock()
	cs.tunnels--
	decrement(s.tunnelsByKey, keyFP)
	closeIt := s.draining && cs.tunnels == 0
	s.mu.Unlock()
	open := s.openCount.Add(-1)
	if s.cfg.TunnelCount != nil {
		s.cfg.TunnelCount(int(open))
	}
	if closeIt {
		cs.conn.Close()
	}
	s.tunnels.Done()
}

// decrement lowers m[k], removing it at zero.
func decrement(m map[string]int, k string) {
	if n := m[k] - 1; n > 0 {
		m[k] = n
	} else {
		delete(m, k)
	}
}
