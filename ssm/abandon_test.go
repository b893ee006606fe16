package ssm

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// Start abandoned by SIGTERM (its ctx ending) at each stage returns at once
// and leaves what it created to StopAgent and Deregister, which undo it.

// cancelWhen cancels the returned context once cond holds (polled: an event
// seen at the fake service).
func cancelWhen(t *testing.T, cond func() bool) context.Context {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		for !cond() && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	return ctx
}

// abandon runs Start with ctx and checks it returned soon with ctx's error,
// then runs the shutdown.
func (h *harness) abandon(t *testing.T, ctx context.Context) error {
	t.Helper()
	start := time.Now()
	err := h.l.Start(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Start = %v, want it abandoned\n%s", err, h.logs)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Start took %v", d)
	}
	return h.shutdown(t)
}

func TestStartAbandoned(t *testing.T) {
	tests := []struct {
		name   string
		setup  func(h *harness) func() bool // returns when to cancel
		check  func(t *testing.T, h *harness)
		failed bool // Deregister reports an instance left
	}{
		{
			name: "during the orphan sweep",
			setup: func(h *harness) func() bool {
				h.srv.DelayNext("DescribeInstanceInformation", 1, time.Minute)
				return func() bool { return h.srv.Calls("DescribeInstanceInformation") == 1 }
			},
			check: func(t *testing.T, h *harness) {
				if n := h.srv.Calls("CreateActivation"); n != 0 {
					t.Errorf("went on to CreateActivation")
				}
				for _, r := range h.logs.Records() {
					if r["level"] == "WARN" && strings.Contains(r["msg"].(string), "may remain") {
						t.Errorf("warned about an activation never asked for: %v", r)
					}
				}
			},
		},
		{
			name: "during CreateActivation, the activation created anyway",
			setup: func(h *harness) func() bool {
				h.srv.DelayResponse("CreateActivation", 1, time.Minute)
				return func() bool { return len(h.srv.Activations()) == 1 }
			},
			check: func(t *testing.T, h *harness) {
				if got := h.logged(t, "duplicate activation deleted"); len(got) != 1 {
					t.Errorf("activation of the cut call not swept: %q", got)
				}
			},
		},
		{
			name: "during the registration, nothing registered",
			setup: func(h *harness) func() bool {
				h.st.regMode = "hang"
				return func() bool { return len(h.st.codes()) == 1 }
			},
			check: func(t *testing.T, h *harness) {
				if p := h.st.procs[0]; p.Stops() != 1 {
					t.Errorf("register process not stopped")
				}
			},
		},
		{
			name: "during the registration, registered but not reported",
			setup: func(h *harness) func() bool {
				h.st.regMode = "hang-registered"
				return func() bool { return len(h.srv.Instances()) == 1 }
			},
			check: func(t *testing.T, h *harness) {
				var lookup bool
				for _, c := range calls(h.srv) {
					lookup = lookup || c == "DescribeInstanceInformation ActivationIds"
				}
				if !lookup || h.srv.Calls("DeregisterManagedInstance") != 1 {
					t.Errorf("instance not found through its activation: %q", calls(h.srv))
				}
			},
		},
		{
			name: "during DeleteActivation",
			setup: func(h *harness) func() bool {
				h.srv.DelayNext("DeleteActivation", 1, time.Minute)
				return func() bool { return h.srv.Calls("DeleteActivation") == 1 }
			},
			check: func(t *testing.T, h *harness) {
				// The confirmed instance needs no lookup.
				for _, c := range calls(h.srv) {
					if c == "DescribeInstanceInformation ActivationIds" {
						t.Errorf("looked up the activation's instances although the registration was confirmed")
					}
				}
			},
		},
		{
			name: "during the duplicate sweep",
			setup: func(h *harness) func() bool {
				h.srv.DelayNext("DescribeActivations", 1, time.Minute)
				return func() bool { return h.srv.Calls("DescribeActivations") == 1 }
			},
			check: func(t *testing.T, h *harness) {
				if n := h.srv.Calls("DescribeActivations"); n != 2 {
					t.Errorf("duplicates looked for %d times, want again at Deregister", n)
				}
			},
		},
		{
			name: "waiting for Online",
			setup: func(h *harness) func() bool {
				h.st.noPing = true
				return func() bool { return readinessPolls(h.srv) >= 2 }
			},
			check: func(t *testing.T, h *harness) {
				if p := h.st.lastAgent(); p == nil || p.Stops() != 1 {
					t.Errorf("agent not stopped")
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			ctx := cancelWhen(t, tt.setup(h))
			if err := h.abandon(t, ctx); err != nil {
				t.Errorf("Deregister: %v\n%s", err, h.logs)
			}
			if left := leftovers(h.srv); len(left) != 0 {
				t.Errorf("left behind: %v\n%s", left, h.logs)
			}
			if h.exists(RegistrationFile) {
				t.Errorf("registration file left")
			}
			tt.check(t, h)
		})
	}
}

// TestAbandonedCreateLandsLater: the cut CreateActivation lands in the
// service after the first look; Deregister looks again before its deadline.
func TestAbandonedCreateLandsLater(t *testing.T) {
	h := newHarness(t, nil)
	h.srv.DelayEffect("CreateActivation", 1, 300*time.Millisecond)
	ctx := cancelWhen(t, func() bool { return h.srv.Calls("CreateActivation") == 1 })
	if err := h.l.Start(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Start = %v", err)
	}
	if n := len(h.srv.Activations()); n != 0 {
		t.Fatalf("%d activations at once: the delay did not hold", n)
	}
	dctx, cancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
	defer cancel()
	if err := h.l.Deregister(dctx); err != nil {
		t.Fatal(err)
	}
	if left := leftovers(h.srv); len(left) != 0 {
		t.Errorf("left behind: %v\n%s", left, h.logs)
	}
	if n := h.srv.Calls("DescribeActivations"); n != 2 {
		t.Errorf("%d looks, want 2", n)
	}
}

// TestAbandonedCreateWithoutTime: when the duplicate sweep cannot run
// before the deadline, the log says an activation may remain and when it
// expires.
func TestAbandonedCreateWithoutTime(t *testing.T) {
	h := newHarness(t, nil)
	h.srv.DelayResponse("CreateActivation", 1, time.Minute)
	h.srv.DelayNext("DescribeActivations", -1, time.Minute)
	ctx := cancelWhen(t, func() bool { return len(h.srv.Activations()) == 1 })
	if err := h.l.Start(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Start = %v", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := h.l.Deregister(sctx); err != nil {
		t.Fatal(err)
	}
	r := h.waitLog(t, "an activation created by a CreateActivation call that was cut short may remain; it expires on its own")
	if r["expires_at"] != t0.Add(time.Hour).Format(time.RFC3339) || r["level"] != "WARN" {
		t.Errorf("record %v", r)
	}
}

// TestDeregisterOrder: the instances come first, the activation's tidying
// after.
func TestDeregisterOrder(t *testing.T) {
	h := newHarness(t, nil)
	h.srv.DelayNext("DeleteActivation", 1, time.Minute)
	ctx := cancelWhen(t, func() bool { return h.srv.Calls("DeleteActivation") == 1 })
	if err := h.abandon(t, ctx); err != nil {
		t.Fatal(err)
	}
	c := calls(h.srv)
	dereg := slices.Index(c, "DeregisterManagedInstance "+h.l.InstanceID())
	var deletes []int
	for i, call := range c {
		if strings.HasPrefix(call, "DeleteActivation ") {
			deletes = append(deletes, i)
		}
	}
	if dereg < 0 || len(deletes) != 2 || deletes[1] < dereg {
		t.Errorf("calls %q: want the deregistration before the activation's retried delete", c)
	}
}
