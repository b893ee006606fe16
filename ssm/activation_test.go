package ssm

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ssm/types"
)

// logged returns the activation_id of every record with message msg.
func (h *harness) logged(t *testing.T, msg string) []string {
	t.Helper()
	var ids []string
	for _, r := range h.logs.records(t) {
		if r["msg"] == msg {
			id, _ := r["activation_id"].(string)
			ids = append(ids, id)
		}
	}
	return ids
}

func actID(n int) string { return fmt.Sprintf("00000000-0000-0000-0000-%012d", n) }

func setTag(key, value string) func(*types.Activation) {
	return func(a *types.Activation) {
		for i := range a.Tags {
			if aws.ToString(a.Tags[i].Key) == key {
				a.Tags[i].Value = aws.String(value)
			}
		}
	}
}

// TestDuplicateActivations: CreateActivation created activations it did not
// report (attempts whose responses were lost); only this run's unused ones
// are deleted.
func TestDuplicateActivations(t *testing.T) {
	h := newHarness(t, nil)
	h.api.actPage = 2 // the sweep must page
	h.api.extraCreates = []func(*types.Activation){
		nil, // 1: our lost attempt: deleted
		setTag(TagTaskARN, "arn:aws:ecs:us-east-1:123456789012:task/ops/ffffffffffffffffffffffffffffffff"), // 2: another task's: kept
		func(a *types.Activation) { a.RegistrationsCount = aws.Int32(1) },                                  // 3: used: kept
		func(a *types.Activation) { a.CreatedDate = aws.Time(t0.Add(-10 * time.Minute)) },                  // 4: older than the call: kept
		func(a *types.Activation) { a.Description = aws.String("bastion something else") },                 // 5: other description: kept
		func(a *types.Activation) { a.Tags = nil },                                                         // 6: untagged: kept
		func(a *types.Activation) { a.CreatedDate = aws.Time(t0.Add(-time.Minute)) },                       // 7: within the skew: deleted
	}
	// 8 is ours. Someone else's activation with our name, created by hand.
	foreign := h.api.seedActivation(types.Activation{
		DefaultInstanceName: aws.String("bastion-0f1e2d3c4b5a69788796a5b4c3d2e1f0"), Description: aws.String("hand-made"),
		CreatedDate: aws.Time(t0), RegistrationsCount: aws.Int32(0),
	})
	ctx := context.Background()
	if err := h.l.Start(ctx); err != nil {
		t.Fatalf("Start: %v\n%s", err, h.logs)
	}
	if got := argAfter(h.st.args[0], "-id"); got != actID(8) {
		t.Fatalf("registered with %s, want the reported activation %s", got, actID(8))
	}
	if got, want := h.logged(t, "duplicate activation deleted"), []string{actID(1), actID(7)}; !slices.Equal(got, want) {
		t.Errorf("duplicates deleted %q, want %q\n%s", got, want, h.logs)
	}
	want := []string{}
	for _, n := range []int{2, 3, 4, 5, 6} {
		want = append(want, "activation "+actID(n))
	}
	want = append(want, "activation "+foreign, "instance "+h.l.InstanceID())
	slices.Sort(want)
	if got := h.api.leftovers(); !slices.Equal(got, want) {
		t.Errorf("left after Start:\n got %q\nwant %q", got, want)
	}
	if err := h.l.StopAgent(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.l.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	for _, l := range h.api.leftovers() {
		if l == "activation "+actID(1) || l == "activation "+actID(7) || l == "activation "+actID(8) || strings.HasPrefix(l, "instance ") {
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
				h.api.lateCreate = true
			} else {
				h.api.extraCreates = []func(*types.Activation){nil}
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
			if left := h.api.leftovers(); len(left) != 0 {
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
	h.api.extraCreates = []func(*types.Activation){
		nil, // deleted
		func(a *types.Activation) { a.Description = aws.String("bastion jump") }, // another run's: kept
	}
	ctx := context.Background()
	if err := h.l.Start(ctx); err != nil {
		t.Fatalf("Start: %v\n%s", err, h.logs)
	}
	desc := aws.ToString(h.api.createIn.Description)
	if !strings.HasPrefix(desc, "bastion jump run ") || len(desc) != len("bastion jump run ")+16 {
		t.Errorf("Description = %q", desc)
	}
	if got := h.logged(t, "duplicate activation deleted"); !slices.Equal(got, []string{actID(1)}) {
		t.Errorf("duplicates deleted %q", got)
	}
	if err := h.l.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	if left := h.api.leftovers(); !slices.Equal(left, []string{"activation " + actID(2)}) {
		t.Errorf("left behind: %v", left)
	}
}

// TestDuplicateSweepFailures: the sweep's failures are warnings.
func TestDuplicateSweepFailures(t *testing.T) {
	h := newHarness(t, nil)
	h.api.extraCreates = []func(*types.Activation){nil}
	h.api.errs["DescribeActivations"] = apiErr("AccessDeniedException")
	if err := h.l.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v\n%s", err, h.logs)
	}
	var warned bool
	for _, r := range h.logs.records(t) {
		if r["msg"] == "duplicate activations not listed; any expire on their own" && r["level"] == "WARN" &&
			strings.Contains(r["error"].(string), "the ECS task role needs ssm:DescribeActivations") {
			warned = true
		}
	}
	if !warned {
		t.Errorf("no warning naming ssm:DescribeActivations:\n%s", h.logs)
	}
	if left := h.api.leftovers(); !slices.Contains(left, "activation "+actID(1)) {
		t.Errorf("left %v", left)
	}
}

// TestDuplicateAfterFailedCreate: the call failed in the end, but an
// attempt got through; its activation is deleted.
func TestDuplicateAfterFailedCreate(t *testing.T) {
	h := newHarness(t, nil)
	h.api.extraCreates = []func(*types.Activation){nil}
	h.api.createErr = apiErr("InternalServerError")
	err := h.l.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "ssm: create activation: ") {
		t.Fatalf("Start = %v", err)
	}
	if left := h.api.leftovers(); len(left) != 0 {
		t.Errorf("left behind: %v\n%s", left, h.logs)
	}

	// Access denied: nothing was created, nothing is listed.
	h = newHarness(t, nil)
	h.api.createErr = apiErr("AccessDeniedException")
	if err := h.l.Start(context.Background()); err == nil {
		t.Fatal("Start succeeded")
	}
	for _, c := range h.api.Calls() {
		if strings.HasPrefix(c, "DescribeActivations") {
			t.Errorf("swept after access denied: %q", h.api.Calls())
		}
	}
}

// TestActivationDeleteRetried: a DeleteActivation that timed out (as under
// heavy throttling) is retried once Online, and again at Deregister.
func TestActivationDeleteRetried(t *testing.T) {
	for _, fails := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d failures", fails), func(t *testing.T) {
			h := newHarness(t, nil)
			h.api.deleteFails = fails
			ctx := context.Background()
			if err := h.l.Start(ctx); err != nil {
				t.Fatalf("Start: %v\n%s", err, h.logs)
			}
			want := []string{"instance " + h.l.InstanceID()}
			if fails == 2 {
				want = append([]string{"activation " + actID(1)}, want...)
			}
			if got := h.api.leftovers(); !slices.Equal(got, want) {
				t.Errorf("after Start: %q, want %q", got, want)
			}
			if err := h.l.Deregister(ctx); err != nil {
				t.Fatalf("Deregister: %v", err)
			}
			if left := h.api.leftovers(); len(left) != 0 {
				t.Errorf("left behind: %v\n%s", left, h.logs)
			}
		})
	}
	t.Run("failed start", func(t *testing.T) {
		h := newHarness(t, nil)
		h.api.deleteFails = 1
		h.st.regMode = "refused"
		if err := h.l.Start(context.Background()); err == nil {
			t.Fatal("Start succeeded")
		}
		if left := h.api.leftovers(); len(left) != 0 {
			t.Errorf("left behind: %v\n%s", left, h.logs)
		}
	})
}
