package sshd

import "time"

// SessionEvent describes an authenticated connection, for notifications.
type SessionEvent struct {
	Conn         string
	Time         time.Time // when it authenticated
	User         string
	KeyType      string
	Fingerprint  string
	Comment      string // the authorized_keys comment of the matching line
	CertID       string // for a certificate
	SSMSessionID string
	Principal    string // the IAM principal of the SSM session, when known
	Client       string
}

// Audit receives session starts and tunnel opens as they happen (bastion
// feeds notifications from it). Calls must not block.
type Audit interface {
	SessionStarted(SessionEvent)
	TunnelOpened(e SessionEvent, destination string)
}

// sessionEvent describes cs as it stands.
func (s *Server) sessionEvent(cs *connState) SessionEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := SessionEvent{
		Conn:         cs.id,
		Time:         cs.authedAt,
		User:         capField(cs.user),
		SSMSessionID: cs.peer.SSMSessionID,
		Client:       cs.remote.String(),
	}
	if g := cs.access; g != nil {
		e.KeyType, e.Fingerprint, e.Comment, e.CertID = g.keyType, g.fingerprint, capField(g.comment), capField(g.certID)
	}
	e.Principal = s.principal(cs)
	return e
}
