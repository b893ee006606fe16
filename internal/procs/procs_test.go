package procs

import (
	"context"
	"math"
	"sync"
	"testing"
	"time"
)

// fakeLoad is a process whose CPU use, in processors, the test sets.
type fakeLoad struct {
	mu   sync.Mutex
	load float64
	cpu  time.Duration
	last time.Time
}

func (f *fakeLoad) set(load float64) {
	f.mu.Lock()
	f.advance()
	f.load = load
	f.mu.Unlock()
}

func (f *fakeLoad) advance() {
	now := time.Now()
	if !f.last.IsZero() {
		f.cpu += time.Duration(float64(now.Sub(f.last)) * f.load)
	}
	f.last = now
}

func (f *fakeLoad) cpuTime() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.advance()
	return f.cpu
}

// TestScaler: one processor at rest and under light load, more as soon as
// one is mostly busy (doubling up to Max), back down one at a time once a
// whole window stayed well under what one fewer could do, and Max again
// when it stops.
func TestScaler(t *testing.T) {
	load := &fakeLoad{}
	sets := make(chan int, 100)
	s := &Scaler{Max: 4, Interval: 5 * time.Millisecond, CPUTime: load.cpuTime, Set: func(n int) { sets <- n }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	next := func(why string) int {
		t.Helper()
		select {
		case n := <-sets:
			return n
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no change", why)
			return 0
		}
	}
	if n := next("start"); n != 1 {
		t.Fatalf("starts with %d processors", n)
	}
	// Light load: 20 intervals without a change.
	load.set(0.3)
	select {
	case n := <-sets:
		t.Fatalf("light load moved to %d processors", n)
	case <-time.After(20 * s.Interval):
	}
	load.set(0.9)
	if n := next("busy"); n != 2 {
		t.Fatalf("one busy processor: %d", n)
	}
	load.set(1.8)
	if n := next("busier"); n != 4 {
		t.Fatalf("two busy processors: %d", n)
	}
	load.set(0.2)
	for _, want := range []int{3, 2, 1} {
		if n := next("idle"); n != want {
			t.Fatalf("scaling down: %d, want %d", n, want)
		}
	}
	cancel()
	<-done
	if n := next("stop"); n != 4 {
		t.Fatalf("after Run: %d processors, want Max", n)
	}
}

// TestCPUClock checks the default CPU clock: it advances while this
// goroutine computes, and is the process's (not the thread's) time.
func TestCPUClock(t *testing.T) {
	c0 := rusageCPU()
	deadline := time.Now().Add(10 * time.Second)
	x := 1.0
	for rusageCPU()-c0 < 50*time.Millisecond {
		for i := 0; i < 100000; i++ {
			x = math.Sqrt(x + float64(i))
		}
		if time.Now().After(deadline) {
			t.Fatalf("10 s of computing advanced the CPU clock by %v", rusageCPU()-c0)
		}
	}
	_ = x
}
