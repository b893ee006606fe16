package sshd

import "net/netip"

// Peer is what bastion knows of the process behind a loopback connection.
// On the SSM path every connection comes from 127.0.0.1: the agent's
// ssm-session-worker, one per session, dials the SSH port. Knowing which
// session (and so which IAM principal) is behind a connection is what lets
// the audit name a person and the limits treat sessions apart.
type Peer struct {
	// SSMSessionID is the session whose worker holds the peer socket; ""
	// when the peer is not a session worker.
	SSMSessionID string
	// HealthCheck is set for bastion's own healthcheck process: it has
	// slots of its own, so that a flood cannot make it lie.
	HealthCheck bool
}

// PeerIdentifier tells who is behind a connection from a loopback address.
type PeerIdentifier interface {
	// Identify runs when a loopback connection is accepted, before the
	// handshake; it must be quick (a look in /proc), never a network call.
	Identify(remote, local netip.AddrPort) Peer
	// Principal returns the IAM principal ARN that started an SSM session
	// once known, "" until then; it never blocks.
	Principal(sessionID string) string
}

// bucket is the key unauthenticated connections are counted under: the
// SSM session for a session worker, the client address for everyone else.
func (p Peer) bucket(remote netip.AddrPort) string {
	switch {
	case p.HealthCheck:
		return "healthcheck"
	case p.SSMSessionID != "":
		return "ssm-session " + p.SSMSessionID
	}
	return remote.Addr().String()
}

// maxHealthChecks bounds the healthcheck's own slots.
const maxHealthChecks = 4
