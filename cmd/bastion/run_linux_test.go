package main

import (
	"testing"

	"github.com/bastion-dev/bastion/entrypoint"
	"github.com/bastion-dev/bastion/ssm"
)

// TestStopPlanMinimum: the least BASTION_STOP_TIMEOUT entrypoint accepts
// with SSM on is what the stop plan's fixed parts need.
func TestStopPlanMinimum(t *testing.T) {
	if got := exitMargin + sweepReserve + ssm.DeregisterFloor; got != entrypoint.MinStopTimeoutSSM {
		t.Errorf("exit margin + sweep reserve + deregistration floor = %v, entrypoint.MinStopTimeoutSSM = %v", got, entrypoint.MinStopTimeoutSSM)
	}
	if sweepReserve <= sweepGrace {
		t.Errorf("sweep reserve %v leaves nothing for SIGKILL after the grace %v", sweepReserve, sweepGrace)
	}
}
