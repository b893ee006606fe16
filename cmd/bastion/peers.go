package main

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/bastion-dev/bastion/internal/procfs"
	"github.com/bastion-dev/bastion/sshd"
	"github.com/bastion-dev/bastion/ssm"
)

// sessionWorker is the agent's per-session process: it is started from the
// agent's own directory as exactly [<dir>/ssm-session-worker, <sessionId>]
// and, for AWS-StartSSHSession, dials the SSH port once per session.
const sessionWorker = "ssm-session-worker"

// peers names the process behind a loopback connection from /proc: an SSM
// session worker (its session id, then its principal from
// ssm:DescribeSessions), or bastion's own healthcheck.
type peers struct {
	log       *slog.Logger
	procRoot  string
	selfExe   string // this binary, as /proc/<pid>/exe shows it
	workerExe string // <agent dir>/ssm-session-worker; "" when SSM is off
	owners    *sessionOwners
	// comms are the command names of the processes that can be either:
	// only their descriptors are searched, whatever else runs.
	comms []string
}

func newPeers(log *slog.Logger, agentPath string, owners *sessionOwners) *peers {
	self, err := os.Readlink("/proc/self/exe")
	if err != nil {
		log.Warn("cannot read /proc/self/exe: the healthcheck has no reserved slots", "error", err.Error())
	}
	p := &peers{log: log, procRoot: "/proc", selfExe: self, owners: owners}
	if self != "" {
		p.comms = append(p.comms, procfs.Comm(filepath.Base(self)))
	}
	if agentPath != "" {
		p.workerExe = filepath.Join(filepath.Dir(agentPath), sessionWorker)
		p.comms = append(p.comms, procfs.Comm(sessionWorker))
	}
	return p
}

// Identify implements sshd.PeerIdentifier.
func (p *peers) Identify(remote, local netip.AddrPort) sshd.Peer {
	if len(p.comms) == 0 {
		return sshd.Peer{}
	}
	proc, err := procfs.TCPPeer(p.procRoot, remote, local, p.comms...)
	if err != nil {
		p.log.Debug("peer process not found", "client", remote.String(), "error", err.Error())
		return sshd.Peer{}
	}
	root := proc.UID == 0 && proc.EUID == 0
	switch {
	case !root:
	case p.selfExe != "" && proc.Exe == p.selfExe:
		return sshd.Peer{HealthCheck: true}
	case p.workerExe != "" && proc.Exe == p.workerExe && len(proc.Argv) == 2 && ssm.ValidSessionID(proc.Argv[1]):
		id := proc.Argv[1]
		if p.owners != nil {
			p.owners.lookup(id)
		}
		return sshd.Peer{SSMSessionID: id}
	}
	return sshd.Peer{}
}

// Principal implements sshd.PeerIdentifier.
func (p *peers) Principal(sessionID string) string {
	if p.owners == nil {
		return ""
	}
	return p.owners.get(sessionID)
}

// sessionOwners caches the IAM principal of each SSM session, looked up
// with a short deadline off the handshake's path; a lookup that fails
// leaves the principal empty and is logged once per session.
type sessionOwners struct {
	log     *slog.Logger
	fetch   func(ctx context.Context, sessionID string) (string, error)
	timeout time.Duration
	ctx     context.Context // ends lookups in flight at shutdown

	mu      sync.Mutex
	entries map[string]*ownerEntry
	wg      sync.WaitGroup
}

type ownerEntry struct {
	owner string
	done  bool
	seen  time.Time
}

// maxOwnerEntries bounds the cache; the oldest entries go first.
const maxOwnerEntries = 4096

func newSessionOwners(ctx context.Context, log *slog.Logger, timeout time.Duration,
	fetch func(ctx context.Context, sessionID string) (string, error)) *sessionOwners {
	return &sessionOwners{log: log, fetch: fetch, timeout: timeout, ctx: ctx, entries: map[string]*ownerEntry{}}
}

// lookup starts fetching a session's principal unless it is known or on
// its way.
func (o *sessionOwners) lookup(id string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if e, ok := o.entries[id]; ok {
		e.seen = time.Now()
		return
	}
	if len(o.entries) >= maxOwnerEntries {
		o.evictOldestLocked()
	}
	e := &ownerEntry{seen: time.Now()}
	o.entries[id] = e
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		ctx, cancel := context.WithTimeout(o.ctx, o.timeout)
		defer cancel()
		owner, err := o.fetch(ctx, id)
		o.mu.Lock()
		e.owner, e.done = owner, true
		o.mu.Unlock()
		if err != nil {
			o.log.Warn("ssm session principal unknown", "ssm_session_id", id, "error", err.Error())
		}
	}()
}

func (o *sessionOwners) evictOldestLocked() {
	var oldest string
	var at time.Time
	for id, e := range o.entries {
		if e.done && (oldest == "" || e.seen.Before(at)) {
			oldest, at = id, e.seen
		}
	}
	delete(o.entries, oldest)
}

// get returns the principal once known, "" before.
func (o *sessionOwners) get(id string) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	if e, ok := o.entries[id]; ok {
		return e.owner
	}
	return ""
}

// wait returns when no lookup is in flight (after ctx ended, at once).
func (o *sessionOwners) wait() { o.wg.Wait() }
