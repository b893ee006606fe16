// Package procs runs the Go scheduler on as few processors as bastion's
// load needs, up to the runtime's default: the machine's CPUs or, in a
// container, its CPU quota (Go >= 1.25 reads the cgroup limit and rounds it
// up, to at least 2).
//
// Forwarding through x/crypto/ssh passes every packet through three
// goroutines (the transport's read loop, the connection's mux loop, the
// tunnel's copier). With a second processor idle, each hand-off wakes a
// thread to run it there, which sleeps again once the packet has passed:
// futex wake-ups and context switches per packet, dear on a virtual
// machine. On one processor the same hand-offs are a switch between
// goroutines and the packets of a burst are handled in one go. A Scaler
// starts with one processor and adds processors only when that is not
// enough: the process used most of what it has over an interval, or
// runnable goroutines waited long to run (a burst of handshakes, or a
// machine so busy that one thread gets too small a share of it). It gives
// them back once the load has gone down.
package procs

import (
	"context"
	"runtime"
	"runtime/metrics"
	"syscall"
	"time"
)

// Scaler adjusts GOMAXPROCS between 1 and Max.
type Scaler struct {
	// Max is the most processors it sets; runtime.GOMAXPROCS(0) when 0.
	Max int
	// Interval between samples of the process's CPU time; 100ms when 0.
	Interval time.Duration
	// CPUTime returns the CPU time the process has used so far; user plus
	// system time from getrusage when nil.
	CPUTime func() time.Duration
	// Waits returns how many times goroutines have been scheduled so far
	// and how many of them had waited longWait or more to run; the
	// runtime's /sched/latencies:seconds (a sample of them) when nil.
	Waits func() (all, long uint64)
	// Set applies a number of processors; runtime.GOMAXPROCS when nil.
	Set func(n int)
	// Changed, when set, is told each change and the CPU use (in
	// processors, averaged over the window that decided it) behind it.
	Changed func(from, to int, used float64)
}

// Thresholds, as shares of the processors in use. Up: one interval above
// scaleUp of the current processors (a burst of handshakes waits at most
// about an interval for the second processor). Down: a whole window below
// scaleDown of one fewer processor, so that a load near the limit does not
// make it flap.
// A share of longWaits or more of an interval's schedulings having waited
// longWait (with at least minWaits of them) also scales up, and keeps the
// processors for a whole window.
const (
	scaleUp    = 0.75
	scaleDown  = 0.5
	downWindow = 30 // intervals
	longWait   = time.Millisecond
	longWaits  = 0.2
	minWaits   = 50
)

// Run scales until ctx ends, then restores Max.
func (s *Scaler) Run(ctx context.Context) {
	if s.Max <= 0 {
		s.Max = runtime.GOMAXPROCS(0)
	}
	if s.Interval <= 0 {
		s.Interval = 100 * time.Millisecond
	}
	if s.CPUTime == nil {
		s.CPUTime = rusageCPU
	}
	if s.Set == nil {
		s.Set = func(n int) { runtime.GOMAXPROCS(n) }
	}
	if s.Waits == nil {
		s.Waits = newSchedWaits()
	}
	if s.Max == 1 {
		return
	}
	cur := 1
	s.Set(cur)
	defer func() { s.Set(s.Max) }()
	t := time.NewTicker(s.Interval)
	defer t.Stop()
	lastCPU, lastAt := s.CPUTime(), time.Now()
	lastAll, lastLong := s.Waits()
	var window [downWindow]float64
	filled := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			cpu, now := s.CPUTime(), time.Now()
			used := float64(cpu-lastCPU) / float64(now.Sub(lastAt))
			lastCPU, lastAt = cpu, now
			all, long := s.Waits()
			waited := all-lastAll >= minWaits && float64(long-lastLong) >= longWaits*float64(all-lastAll)
			lastAll, lastLong = all, long
			copy(window[1:], window[:downWindow-1])
			window[0] = used
			filled = min(filled+1, downWindow)
			if waited {
				filled = 0 // a full window of calm before giving any back
			}
			next := cur
			avg := 0.0
			switch {
			case cur < s.Max && (used >= scaleUp*float64(cur) || waited):
				next, avg = min(s.Max, 2*cur), used
			case cur > 1 && filled == downWindow:
				for _, u := range window {
					avg += u
				}
				avg /= downWindow
				if avg < scaleDown*float64(cur-1) {
					next = cur - 1
				}
			}
			if next != cur {
				s.Set(next)
				if s.Changed != nil {
					s.Changed(cur, next, avg)
				}
				cur, filled = next, 0
			}
		}
	}
}

func rusageCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// newSchedWaits reads the runtime's scheduling latencies.
func newSchedWaits() func() (all, long uint64) {
	sample := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	return func() (all, long uint64) {
		metrics.Read(sample)
		if sample[0].Value.Kind() != metrics.KindFloat64Histogram {
			return 0, 0
		}
		h := sample[0].Value.Float64Histogram()
		for i, n := range h.Counts {
			all += n
			// Buckets[i] is the lower bound of Counts[i].
			if h.Buckets[i] >= longWait.Seconds() {
				long += n
			}
		}
		return all, long
	}
}
