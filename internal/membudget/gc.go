package membudget

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// The collector's pace. x/crypto/ssh copies every incoming packet into a
// fresh allocation (about 32 KiB in bulk transfers), so a forwarded GiB is
// a GiB of garbage. With GOGC alone the heap goal is a multiple of the
// live heap, a few MiB at rest: a collection every few MiB forwarded (128
// per GiB at GOGC=200), and between them the scavenger handing pages back
// that the next packets fault in again. GCTuner instead lets garbage reach
// a floor sized from the budget before collecting, and falls back to GOGC
// once the live heap is large enough that GOGC alone gives that much room.
// GOMEMLIMIT (SetGoLimit) still bounds the total either way.
//
// Measured over 256 MiB through ssh -J (perf stat of bastion, interleaved):
// a heap goal of ~12 MiB (GOGC=200) 1.72-1.85 CPU s/GiB, ~32 MiB 1.46-1.52,
// ~64 MiB 1.34-1.41, ~128 MiB 1.34-1.35; a goal far above what the heap
// reuses is worse again (every page faulted in fresh: 2 GiB, 4.0).

// HeapFloor is the heap goal GCTuner keeps for b: an eighth of the budget,
// between 16 and 64 MiB (64 MiB from a 512 MiB task up).
func HeapFloor(b Budget) uint64 {
	return min(max(b.Limit/8, 16<<20), 64<<20)
}

// GCPercent is the GOGC that puts the heap goal at floor for a live heap
// of live bytes, and never below base. Before the first collection (live
// 0) the runtime's goal is its heap minimum, 4 MiB at GOGC=100, scaled by
// GOGC like a live heap of 4 MiB.
func GCPercent(live, floor uint64, base int) int {
	if live == 0 {
		live = 4 << 20
	}
	if floor <= live {
		return base
	}
	p := (floor - live) * 100 / live
	if p > 1<<20 {
		p = 1 << 20
	}
	return max(int(p), base)
}

// GCTuner re-sets GOGC after every collection so that the next one comes
// once the heap reaches max(Floor, live*(1+Percent/100)).
type GCTuner struct {
	Floor   uint64
	Percent int // the GOGC for large live heaps; 100 when 0
	// Adjusted, when set, is told each new setting (tests wait on it).
	Adjusted func(live uint64, percent int)

	mu      sync.Mutex
	stopped bool
	last    int
	sample  []metrics.Sample
}

// Start applies the setting for the heap now and follows every
// collection until Stop.
func (t *GCTuner) Start() {
	if t.Percent == 0 {
		t.Percent = 100
	}
	t.sample = []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	t.adjust()
}

// Stop ends the tuning and leaves the last setting in force.
func (t *GCTuner) Stop() {
	t.mu.Lock()
	t.stopped = true
	t.mu.Unlock()
}

// gcSentinel is garbage from birth: its cleanup runs after the next
// collection. It is large enough not to share a tiny-allocator block.
type gcSentinel struct{ _ [32]byte }

func (t *GCTuner) adjust() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	metrics.Read(t.sample)
	live := uint64(0)
	if t.sample[0].Value.Kind() == metrics.KindUint64 {
		live = t.sample[0].Value.Uint64()
	}
	p := GCPercent(live, t.Floor, t.Percent)
	if p != t.last {
		debug.SetGCPercent(p)
		t.last = p
		if t.Adjusted != nil {
			t.Adjusted(live, p)
		}
	}
	runtime.AddCleanup(new(gcSentinel), func(t *GCTuner) { t.adjust() }, t)
}
