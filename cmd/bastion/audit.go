package main

import (
	"time"

	"github.com/bastion-dev/bastion/notify"
	"github.com/bastion-dev/bastion/sshd"
)

// notifyAudit turns the SSH server's session starts and tunnel opens into
// webhook notifications; Notify never blocks.
type notifyAudit struct{ n *notify.Notifier }

func (a notifyAudit) SessionStarted(e sshd.SessionEvent) {
	a.n.Notify(notifyEvent(notify.KindSessionStart, e, ""))
}

func (a notifyAudit) TunnelOpened(e sshd.SessionEvent, destination string) {
	e.Time = time.Time{} // the tunnel's time: when Notify is called
	a.n.Notify(notifyEvent(notify.KindTunnelOpen, e, destination))
}

func notifyEvent(kind notify.Kind, e sshd.SessionEvent, destination string) notify.Event {
	return notify.Event{
		Kind:         kind,
		Conn:         e.Conn,
		Time:         e.Time,
		User:         e.User,
		Fingerprint:  e.Fingerprint,
		Comment:      e.Comment,
		CertID:       e.CertID,
		Principal:    e.Principal,
		SSMSessionID: e.SSMSessionID,
		Client:       e.Client,
		Destination:  destination,
	}
}
