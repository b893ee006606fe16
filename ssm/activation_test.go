package ssm

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/test/fakessm"
)

// logged returns the activation_id of every record with message msg.
func (h *harness) logged(t *testing.T, msg string) []string {
	t.Helper()
	var ids []string
	for _, r := range h.logs.Records() {
		if r["msg"] == msg {
			id, _ := r["activation_id"].(string)
			ids = append(ids, id)
		}
	}
	return ids
}

// createInput is what a CreateActivation request asked for.
func createInput(t *testing.T, r fakessm.Request) fakessm.Activation {
	t.Helper()
	var in struct {
		IamRole, DefaultInstanceName, Description string
		Tags                                      []fakessm.Tag
	}
	if err := json.Unmarshal([]byte(r.Body), &in); err != nil {
		t.Errorf("CreateActivation body %q: %v", r.Body, err)
	}
	return fakessm.Activation{IamRole: in.IamRole, DefaultInstanceName: in.DefaultInstanceName, Description: in.Description, Tags: in.Tags}
}

// loseFirstCreate makes the first CreateActivation attempt create an
// activation whose response is lost; the SDK's retry creates the one
// reported.
func loseFirstCreate(h *harness) {
	h.srv.Inject("CreateActivation", fakessm.Fault{Count: 1, Code: "InternalServerError", After: true})
}

// onFirstCreate runs fn once with what the first CreateActivation asked for.
func onFirstCreate(t *testing.T, h *harness, fn func(in fakessm.Activation)) {
	var once sync.Once
	h.srv.After("CreateActivation", func(r fakessm.Request) { once.Do(func() { fn(createInput(t, r)) }) })
}

func withTag(tags []fakessm.Tag, key, value string) []fakessm.Tag {
	out := slices.Clone(tags)
	for i := range out {
		if out[i].Key == key {
			out[i].Value = value
		}
	}
	return out
}

// registeredWith is the activation the agent registered with.
func (h *harness) registeredWith() string { return argAfter(h.st.args[0], "-id") }

// TestDuplicateActivations: CreateActivation created activations it did not
// report (attempts whose responses were lost); only this run's unused ones
// are deleted.
func TestDuplicateActivations(t *testing.T) {
	h := newHarness(t, nil)
	loseFirstCreate(h)
	var deleted, kept []string
	onFirstCreate(t, h, func(in fakessm.Activation) {
		seed := func(mut func(a *fakessm.Activation)) string {
			a := in
			a.Tags = slices.Clone(in.Tags)
			a.CreatedDate = t0
			mut(&a)
			return h.srv.AddActivation(a).ActivationID
		}
		kept = append(kept,
			seed(func(a *fakessm.Activation) {
				a.Tags = withTag(a.Tags, TagTaskARN, "arn:aws:ecs:us-east-1:123456789012:task/ops/ffffffffffffffffffffffffffffffff")
			}), // another task's
			seed(func(a *fakessm.Activation) { a.RegistrationsCount = 1 }),                  // used
			seed(func(a *fakessm.Activation) { a.CreatedDate = t0.Add(-10 * time.Minute) }), // older than the call
			seed(func(a *fakessm.Activation) { a.Description = "bastion something else" }),  // another description
			seed(func(a *fakessm.Activation) { a.Tags = nil }),                              // untagged
		)
		deleted = append(deleted, seed(func(a *fakessm.Activation) { a.CreatedDate = t0.Add(-time.Minute) })) // within the skew
		// Hand-made activations with our name: enough for a second page.
		for i := 0; i < 50; i++ {
			kept = append(kept, seed(func(a *fakessm.Activation) { a.Description = fmt.Sprintf("hand-made %d", i) }))
		}
	})
	ctx := context.Background()
	if err := h.l.Start(ctx); err != nil {
		t.Fatalf("Start: %v\n%s", err, h.logs)
	}
	ours := h.registeredWith()
	var lost string
	for _, a := range h.srv.Activations() {
		if a.Description != "" && !slices.Contains(kept, a.ActivationID) && !slices.Contains(deleted, a.ActivationID) && a.ActivationID != ours {
			lost = a.ActivationID
		}
	}
	if got := h.logged(t, "duplicate activation deleted"); len(got) != 2 || !slices.Contains(got, deleted[0]) {
		t.Errorf("duplicates deleted %q, want the lost attempt's and %s\n%s", got, deleted[0], h.logs)
	}
	if lost != "" {
		t.Errorf("lost attempt's activation %s left", lost)
	}
	if n := h.srv.Calls("DescribeActivations"); n != 2 {
		t.Errorf("%d DescribeActivations calls, want 2 pages of one sweep", n)
	}
	want := slices.Clone(kept)
	for i := range want {
		want[i] = "activation " + want[i]
	}
	want = append(want, "instance "+h.l.InstanceID())
	slices.Sort(want)
	if got := leftovers(h.srv); !slices.Equal(got, want) {
		t.Errorf("left after Start:\n got %q\nwant %q", got, want)
	}
	if err := h.l.StopAgent(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.l.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	for _, l := range leftovers(h.srv) {
		if strings.HasPrefix(l, "instance ") || l == "activation "+ours {
			t.Errorf("left after shutdown: %s", l)
		}
	}
}

// TestDuplicateOnlyOne is the bug as seen end to end: CreateActivation
// created two activations and reported the second; both are gone at the end.
func TestDuplicateOnlyOne(t *testing.T) {
	for _, late := range []bool{false, true} {
		name := "before the response"
		if late {
			name = "attempt lands after the response"
		}
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, nil)
			if late {
				var in fakessm.Activation
				onFirstCreate(t, h, func(a fakessm.Activation) { in = a })
				var once sync.Once
				h.srv.After("DeleteActivation", func(fakessm.Request) {
					once.Do(func() { in.CreatedDate = t0; h.srv.AddActivation(in) })
				})
			} else {
				loseFirstCreate(h)
			}
			ctx := context.Background()
			if err := h.l.Start(ctx); err != nil {
				t.Fatalf("Start: %v\n%s", err, h.logs)
			}
			if got := h.logged(t, "duplicate activation deleted"); len(got) != 1 {
				t.Errorf("duplicates deleted: %q\n%s", got, h.logs)
			}
			if err := h.l.Deregister(ctx); err != nil {
				t.Fatal(err)
			}
			if left := leftovers(h.srv); len(left) != 0 {
				t.Errorf("left behind: %v", left)
			}
		})
	}
}

func TestDuplicateActivationsNotOnECS(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.MetadataURI = ""
		c.InstanceName = "jump"
	})
	loseFirstCreate(h)
	var other string
	onFirstCreate(t, h, func(in fakessm.Activation) {
		in.Description, in.CreatedDate = "bastion jump", t0 // another run's
		other = h.srv.AddActivation(in).ActivationID
	})
	ctx := context.Background()
	if err := h.l.Start(ctx); err != nil {
		t.Fatalf("Start: %v\n%s", err, h.logs)
	}
	act, _ := h.srv.Activation(h.registeredWith())
	if !strings.HasPrefix(act.Description, "bastion jump run ") || len(act.Description) != len("bastion jump run ")+16 {
		t.Errorf("Description = %q", act.Description)
	}
	if got := h.logged(t, "duplicate activation deleted"); len(got) != 1 {
		t.Errorf("duplicates deleted %q", got)
	}
	if err := h.l.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	if left := leftovers(h.srv); !slices.Equal(left, []string{"activation " + other}) {
		t.Errorf("left behind: %v", left)
	}
}

// TestDuplicateSweepFailures: the sweep's failures are warnings.
func TestDuplicateSweepFailures(t *testing.T) {
	h := newHarness(t, nil)
	loseFirstCreate(h)
	fail(h.srv, "DescribeActivations", 0, "AccessDeniedException")
	if err := h.l.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v\n%s", err, h.logs)
	}
	var warned bool
	for _, r := range h.logs.Records() {
		if r["msg"] == "duplicate activations not listed; any expire on their own" && r["level"] == "WARN" &&
			strings.Contains(r["error"].(string), "the ECS task role needs ssm:DescribeActivations") {
			warned = true
		}
	}
	if !warned {
		t.Errorf("no warning naming ssm:DescribeActivations:\n%s", h.logs)
	}
	if n := len(h.srv.Activations()); n != 1 {
		t.Errorf("%d activations left, want the lost attempt's", n)
	}
}

// TestDuplicateAfterFailedCreate: the call failed in the end, but an
// attempt got through; its activation is deleted.
func TestDuplicateAfterFailedCreate(t *testing.T) {
	h := newHarness(t, nil)
	loseFirstCreate(h)
	h.srv.Inject("CreateActivation", fakessm.Fault{Count: testAttempts - 1, Code: "InternalServerError"})
	err := h.l.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "ssm: create activation: ") {
		t.Fatalf("Start = %v", err)
	}
	if h.srv.FaultsServed("CreateActivation") != testAttempts {
		t.Fatalf("faults served %d", h.srv.FaultsServed("CreateActivation"))
	}
	if n := len(h.srv.Activations()); n != 1 {
		t.Fatalf("%d activations, want the lost attempt's", n)
	}
	if err := h.shutdown(t); err != nil {
		t.Fatal(err)
	}
	if left := leftovers(h.srv); len(left) != 0 {
		t.Errorf("left behind: %v\n%s", left, h.logs)
	}

	// Access denied: nothing was created, nothing is listed.
	h = newHarness(t, nil)
	fail(h.srv, "CreateActivation", 1, "AccessDeniedException")
	if err := h.l.Start(context.Background()); err == nil {
		t.Fatal("Start succeeded")
	}
	if err := h.shutdown(t); err != nil {
		t.Fatal(err)
	}
	if n := h.srv.Calls("DescribeActivations"); n != 0 {
		t.Errorf("swept after access denied: %q", calls(h.srv))
	}
}

// TestActivationDeleteRetried: a DeleteActivation that failed (as under
// heavy throttling) is retried once Online, and again at Deregister.
func TestActivationDeleteRetried(t *testing.T) {
	for _, fails := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d failures", fails), func(t *testing.T) {
			h := newHarness(t, nil)
			fail(h.srv, "DeleteActivation", fails, "InternalServerError")
			ctx := context.Background()
			if err := h.l.Start(ctx); err != nil {
				t.Fatalf("Start: %v\n%s", err, h.logs)
			}
			want := []string{"instance " + h.l.InstanceID()}
			if fails == 2 {
				want = append(want, "activation "+h.registeredWith())
				slices.Sort(want)
			}
			if got := leftovers(h.srv); !slices.Equal(got, want) {
				t.Errorf("after Start: %q, want %q", got, want)
			}
			if err := h.l.Deregister(ctx); err != nil {
				t.Fatalf("Deregister: %v", err)
			}
			if left := leftovers(h.srv); len(left) != 0 {
				t.Errorf("left behind: %v\n%s", left, h.logs)
			}
		})
	}
	t.Run("failed start", func(t *testing.T) {
		h := newHarness(t, nil)
		fail(h.srv, "DeleteActivation", 1, "InternalServerError")
		h.st.regMode = "refused"
		if err := h.l.Start(context.Background()); err == nil {
			t.Fatal("Start succeeded")
		}
		if err := h.shutdown(t); err != nil {
			t.Fatal(err)
		}
		if left := leftovers(h.srv); len(left) != 0 {
			t.Errorf("left behind: %v\n%s", left, h.logs)
		}
	})
}
