package membudget

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestTunnels(t *testing.T) {
	tests := []struct {
		limit    uint64
		min, max int
	}{
		{64 << 20, minTunnels, minTunnels}, // tiny: the floor
		{512 << 20, 120, 140},              // a 0.5 GB Fargate task
		{1 << 30, 270, 300},                // 1 GB
		{24 << 30, 1000, maxAutoTunnels},   // no limit on a 24 GiB machine: 1,000 idle tunnels fit
		{1 << 50, maxAutoTunnels, maxAutoTunnels},
	}
	for _, tt := range tests {
		n := Tunnels(Budget{Limit: tt.limit})
		if n < tt.min || n > tt.max {
			t.Errorf("Tunnels(%d MiB) = %d, want %d..%d", tt.limit>>20, n, tt.min, tt.max)
		}
		// Every admitted tunnel at its worst, plus the reserve, fits.
		if tt.limit >= 256<<20 && uint64(n)*PerTunnel+baseReserve > tt.limit {
			t.Errorf("Tunnels(%d MiB) = %d can buffer %d MiB", tt.limit>>20, n, (uint64(n)*PerTunnel+baseReserve)>>20)
		}
	}
}

func TestDetect(t *testing.T) {
	b, err := Detect()
	if err != nil {
		t.Fatal(err)
	}
	if b.Limit < 64<<20 || (b.Source != "cgroup" && b.Source != "system memory") {
		t.Errorf("Detect() = %+v", b)
	}
}

// TestReclaimer: memory goes back once a burst has ended and the count
// has rested, not while tunnels are still opening or for small drops.
func TestReclaimer(t *testing.T) {
	freed := make(chan struct{}, 10)
	r := &Reclaimer{Free: func() { freed <- struct{}{} }}
	defer r.Stop()
	for i := 1; i <= 100; i++ {
		r.Note(i)
	}
	for i := 99; i >= 90; i-- { // a small drop: nothing to do
		r.Note(i)
	}
	r.mu.Lock()
	scheduled := r.timer != nil
	r.mu.Unlock()
	if scheduled {
		t.Fatal("a reclaim was scheduled after a drop of 10")
	}
	for i := 89; i >= 0; i-- {
		r.Note(i)
	}
	select {
	case <-freed:
	case <-time.After(10 * time.Second):
		t.Fatal("memory not returned after the burst ended")
	}
	// A new burst that ends reclaims again.
	for i := 1; i <= 40; i++ {
		r.Note(i)
	}
	for i := 39; i >= 0; i-- {
		r.Note(i)
	}
	select {
	case <-freed:
	case <-time.After(10 * time.Second):
		t.Fatal("memory not returned after the second burst")
	}
}

func TestHeapFloor(t *testing.T) {
	for _, tt := range []struct{ limit, want uint64 }{
		{64 << 20, 16 << 20},
		{256 << 20, 32 << 20},
		{512 << 20, 64 << 20},
		{24 << 30, 64 << 20},
	} {
		if got := HeapFloor(Budget{Limit: tt.limit}); got != tt.want {
			t.Errorf("HeapFloor(%d MiB) = %d MiB, want %d", tt.limit>>20, got>>20, tt.want>>20)
		}
	}
}

func TestGCPercent(t *testing.T) {
	const mib = 1 << 20
	for _, tt := range []struct {
		live, floor uint64
		base, want  int
	}{
		{4 * mib, 64 * mib, 100, 1500}, // goal 4 + 4*15 = 64 MiB
		{32 * mib, 64 * mib, 100, 100}, // GOGC alone reaches the floor
		{16 * mib, 64 * mib, 100, 300},
		{100 * mib, 64 * mib, 100, 100},
		{4 * mib, 64 * mib, 2000, 2000}, // never below base
		{0, 64 * mib, 100, 1500},        // before the first collection: the 4 MiB minimum
		{1, 64 * mib, 100, 1 << 20},     // capped
	} {
		if got := GCPercent(tt.live, tt.floor, tt.base); got != tt.want {
			t.Errorf("GCPercent(%d, %d, %d) = %d, want %d", tt.live, tt.floor, tt.base, got, tt.want)
		}
	}
}

// TestGCTuner: after each collection GOGC is set for the live heap of
// that moment: high while it is small, back to the base once it is large.
func TestGCTuner(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	type setting struct {
		live    uint64
		percent int
	}
	got := make(chan setting, 100)
	runtime.GC() // the live heap of this test alone
	tu := &GCTuner{Floor: 256 << 20, Adjusted: func(live uint64, p int) { got <- setting{live, p} }}
	tu.Start()
	defer tu.Stop()
	first := <-got // applied by Start, before any collection
	if first.percent <= 1000 || first.percent != GCPercent(first.live, 256<<20, 100) {
		t.Fatalf("at start: %+v", first)
	}
	if cur := debug.SetGCPercent(first.percent); cur != first.percent {
		t.Fatalf("GOGC in force %d, tuner said %d", cur, first.percent)
	}
	// Hold a live heap larger than the floor: the next setting is the base.
	held := make([][]byte, 0, 512)
	for range 320 {
		held = append(held, make([]byte, 1<<20))
	}
	deadline := time.After(10 * time.Second)
	for {
		runtime.GC()
		select {
		case s := <-got:
			if s.percent == 100 {
				if 2*s.live < 256<<20 { // GOGC=100 alone gives room up to twice the live heap
					t.Fatalf("base GOGC with a live heap of %d MiB", s.live>>20)
				}
				runtime.KeepAlive(held)
				return
			}
		case <-deadline:
			t.Fatal("no base GOGC after the live heap passed the floor")
		default:
		}
	}
}
