package procs

import (
	"context"
	"math"
	"runtime"
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
	// Each look at the scheduling waits adds 100 schedulings, longPer of
	// which waited long.
	longPer         uint64
	waits, longWait uint64
}

func (f *fakeLoad) setLongWaits(per uint64) {
	f.mu.Lock()
	f.longPer = per
	f.mu.Unlock()
}

func (f *fakeLoad) schedWaits() (all, long uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.waits += 100
	f.longWait += f.longPer
	return f.waits, f.longWait
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
	s := &Scaler{Max: 4, Interval: 5 * time.Millisecond, CPUTime: load.cpuTime, Waits: load.schedWaits, Set: func(n int) { sets <- n }}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel() // a failure below must not leave Run going
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
	// Light load, but goroutines wait to run (a thread starved of CPU, a
	// burst): more processors, kept while the waits go on.
	load.setLongWaits(30)
	if n := next("waits"); n != 2 {
		t.Fatalf("long waits: %d processors", n)
	}
	if n := next("waits"); n != 4 {
		t.Fatalf("long waits go on: %d processors", n)
	}
	select {
	case n := <-sets:
		t.Fatalf("gave processors back (%d) while goroutines still waited", n)
	case <-time.After(3 * downWindow * s.Interval):
	}
	load.setLongWaits(1)
	if n := next("calm"); n != 3 {
		t.Fatalf("after the waits: %d, want 3", n)
	}
	cancel()
	<-done
	if n := next("stop"); n != 4 {
		t.Fatalf("after Run: %d processors, want Max", n)
	}
}

// TestSchedWaits checks the default scheduling clock: goroutines made
// runnable while this one keeps the only processor busy wait past
// longWait, and some of them (the runtime samples) are counted so.
func TestSchedWaits(t *testing.T) {
	waits := newSchedWaits()
	all0, long0 := waits()
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var wg sync.WaitGroup
	for range 400 {
		wg.Add(1)
		go wg.Done() // queued behind this goroutine
	}
	for t0 := time.Now(); time.Since(t0) < 20*time.Millisecond; {
	}
	wg.Wait()
	all, long := waits()
	if all <= all0 || long <= long0 {
		t.Errorf("schedulings %d -> %d, long waits %d -> %d", all0, all, long0, long)
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
