package membudget

import (
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
