// Package membudget sizes bastion to the memory it may use: the container's
// cgroup limit (v1 or v2) or, without one, the machine's memory. From that
// budget come the Go runtime's soft limit (GOMEMLIMIT, unless the operator
// set it) and how many tunnels may be open at once: x/crypto/ssh gives
// every channel a fixed 2 MiB receive window, so what bounds memory is how
// many tunnels are admitted, not how fast they are read.
package membudget

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// Budget is the memory bastion may use.
type Budget struct {
	Limit  uint64 // bytes
	Source string // "cgroup" or "system memory"
}

// Detect reads the cgroup's memory limit, or the machine's memory when the
// cgroup sets none.
func Detect() (Budget, error) {
	total, sysErr := memlimit.FromSystem()
	limit, err := memlimit.FromCgroup()
	if err == nil {
		if sysErr == nil && total > 0 && total < limit {
			// A cgroup limit above the machine's memory limits nothing.
			return Budget{Limit: total, Source: "system memory"}, nil
		}
		return Budget{Limit: limit, Source: "cgroup"}, nil
	}
	if !errors.Is(err, memlimit.ErrNoLimit) && !errors.Is(err, memlimit.ErrNoCgroup) && !errors.Is(err, memlimit.ErrCgroupsNotSupported) {
		return Budget{}, fmt.Errorf("membudget: cgroup memory limit: %w", err)
	}
	if sysErr != nil || total == 0 {
		return Budget{}, fmt.Errorf("membudget: system memory: %v", sysErr)
	}
	return Budget{Limit: total, Source: "system memory"}, nil
}

// GoLimitRatio is the share of the budget given to the Go runtime as its
// soft limit: the rest is left for what the runtime does not count (thread
// stacks, the kernel's socket buffers charged to the cgroup).
const GoLimitRatio = 0.9

// SetGoLimit sets the runtime's soft memory limit from b unless GOMEMLIMIT
// is in the environment; it returns the limit in force and whether bastion
// set it.
func SetGoLimit(b Budget) (limit int64, set bool) {
	if _, ok := os.LookupEnv("GOMEMLIMIT"); ok {
		return debug.SetMemoryLimit(-1), false
	}
	limit = int64(float64(b.Limit) * GoLimitRatio)
	debug.SetMemoryLimit(limit)
	return limit, true
}

// The worst case one tunnel can hold: a full x/crypto channel window of
// data the destination does not read, a bulk copy buffer each way, and the
// goroutines and bookkeeping around them.
const (
	channelWindow  = 2 << 20
	copyBuffers    = 2 * 128 << 10
	tunnelOverhead = 64 << 10
	PerTunnel      = channelWindow + copyBuffers + tunnelOverhead
	baseReserve    = 48 << 20 // the process at rest, connections, handshakes
	tunnelShare    = 0.7      // of the budget, for tunnel buffers
	minTunnels     = 16
	maxAutoTunnels = 100_000
)

// Tunnels is how many tunnels may be open at once so that, even when every
// one holds its worst case, buffered data stays inside the budget.
func Tunnels(b Budget) int {
	avail := float64(b.Limit)*tunnelShare - baseReserve
	n := int(avail / PerTunnel)
	switch {
	case n < minTunnels:
		return minTunnels
	case n > maxAutoTunnels:
		return maxAutoTunnels
	}
	return n
}

// String is the budget for a log line.
func (b Budget) String() string {
	return fmt.Sprintf("%d MiB (%s)", b.Limit>>20, b.Source)
}

// Reclaimer hands memory back to the operating system once a burst of
// tunnels is over. Go's background scavenger returns freed pages slowly
// (RSS stayed at 433 MiB for a minute after such a client left a 512 MiB
// task), and memory still held is memory the next burst cannot use.
type Reclaimer struct {
	// Free returns memory; nil means debug.FreeOSMemory.
	Free func()

	mu      sync.Mutex
	peak    int
	timer   *time.Timer
	stopped bool
}

// reclaimAfter is how long the tunnel count must rest before memory is
// returned; reclaimDrop is how many tunnels must have closed since the
// peak (at worst PerTunnel each) for it to be worth a full collection.
const (
	reclaimAfter = time.Second
	reclaimDrop  = 16
)

// Note records the number of open tunnels after one opened or closed.
func (r *Reclaimer) Note(open int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return
	}
	if open > r.peak {
		r.peak = open
	}
	if r.peak-open < reclaimDrop || open > r.peak/2 {
		if r.timer != nil && open >= r.peak {
			r.timer.Stop()
		}
		return
	}
	if r.timer == nil {
		r.timer = time.AfterFunc(reclaimAfter, r.reclaim)
	} else {
		r.timer.Reset(reclaimAfter)
	}
}

func (r *Reclaimer) reclaim() {
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		return
	}
	r.peak = 0
	free := r.Free
	r.mu.Unlock()
	if free == nil {
		free = debug.FreeOSMemory
	}
	free()
}

// Stop ends pending work.
func (r *Reclaimer) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = true
	if r.timer != nil {
		r.timer.Stop()
	}
}
