package ssm

import (
	"context"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsssm "github.com/aws/aws-sdk-go-v2/service/ssm"
)

// TestRunNoticesInstanceGone: when our instance is deregistered behind our
// back (another task's orphan sweep), the agent's pings fail with
// InvalidInstanceId; Run checks with the service and removes the
// registration file, so the healthcheck reports unhealthy. A line alone, or
// a failed check, removes nothing.
func TestRunNoticesInstanceGone(t *testing.T) {
	const msg = "managed instance gone: deregistered outside this task; healthcheck now reports unhealthy so ECS replaces the task"
	for _, trigger := range []string{"agent output", "periodic check"} {
		t.Run(trigger, func(t *testing.T) {
			h := newHarness(t, nil)
			if trigger == "periodic check" {
				h.l.watchInterval = 20 * time.Millisecond
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if err := h.l.Start(ctx); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- h.l.Run(ctx) }()
			id := h.l.InstanceID()
			line := "2025-01-02 03:04:05.0000 ERROR [HealthCheck] error when calling AWS APIs. error details - InvalidInstanceId: Instance Id " + id + " is not valid."

			// Still registered: nothing happens.
			if trigger == "agent output" {
				h.l.watchOutput(line)
				h.waitLog(t, "managed instance still registered")
			}
			if !h.exists(RegistrationFile) {
				t.Fatal("registration file removed while the instance exists")
			}

			// Gone.
			cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
			defer ccancel()
			if _, err := h.api.API.DeregisterManagedInstance(cctx, &awsssm.DeregisterManagedInstanceInput{InstanceId: aws.String(id)}); err != nil {
				t.Fatal(err)
			}
			if trigger == "agent output" {
				h.l.watchOutput(line)
			}
			r := h.waitLog(t, msg)
			if r["level"] != "ERROR" || r["instance_id"] != id || h.exists(RegistrationFile) {
				t.Errorf("record %v, file still there %v", r, h.exists(RegistrationFile))
			}
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run = %v", err)
			}
			// The shutdown finds it already gone.
			if err := h.shutdown(t); err != nil {
				t.Errorf("Deregister: %v", err)
			}
			h.waitLog(t, "instance was already deregistered")
		})
	}
}
