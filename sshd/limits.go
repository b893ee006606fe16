package sshd

import (
	"errors"
	"fmt"

	gossh "golang.org/x/crypto/ssh"
)

// Admission after authentication. Memory is bounded by how many tunnels
// are open (each may buffer a full 2 MiB x/crypto channel window), so new
// tunnels are refused before the total could exceed what the budget holds,
// and one key may hold only a share of them, so that a key at its limit
// (a runaway script, a stolen key) leaves room for everyone else.

// TunnelsPerKey is the share of maxTunnels one key may hold: half.
func TunnelsPerKey(maxTunnels int) int {
	return max(1, maxTunnels/2)
}

func (s *Server) maxTunnelsPerKey() int { return TunnelsPerKey(s.cfg.MaxTunnels) }

// tunnelShortageLocked says why a new tunnel for cs (authenticated with
// keyFP) cannot open now and which limit it met, or "" when it can.
func (s *Server) tunnelShortageLocked(cs *connState, keyFP string) (reason string, limit int) {
	switch {
	case cs.tunnels >= s.cfg.MaxTunnelsPerConn:
		return "too many tunnels on this connection", s.cfg.MaxTunnelsPerConn
	case s.tunnelsByKey[keyFP] >= s.maxTunnelsPerKey():
		return "this key holds its share of tunnels", s.maxTunnelsPerKey()
	case s.openCount.Load() >= int64(s.cfg.MaxTunnels):
		return "tunnel limit reached (memory budget)", s.cfg.MaxTunnels
	}
	return "", 0
}

var errTooManyConnections = errors.New("too many connections with this key")

// reserveKeySlotLocked takes one of keyFP's connection slots for cs, or
// returns an error whose banner tells the client why it was refused.
func (s *Server) reserveKeySlotLocked(cs *connState, keyFP string) error {
	if cs.keyFP != "" {
		return nil
	}
	if s.connsByKey[keyFP] >= s.cfg.MaxConnectionsPerKey {
		return &gossh.BannerError{
			Err:     fmt.Errorf("%w (BASTION_MAX_CONNECTIONS_PER_KEY=%d)", errTooManyConnections, s.cfg.MaxConnectionsPerKey),
			Message: fmt.Sprintf("bastion: this key already has %d connections open; close one and retry\r\n", s.cfg.MaxConnectionsPerKey),
		}
	}
	s.connsByKey[keyFP]++
	cs.keyFP = keyFP
	return nil
}
