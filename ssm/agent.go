package ssm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsssm "github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/ssm/types"
)

// startAgent starts the long-running agent in its own process group, after
// removing stale IPC channels. The caller must not hold l.mu.
func (l *Lifecycle) startAgent() (Process, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.startAgentLocked()
}

func (l *Lifecycle) startAgentLocked() (Process, error) {
	if err := os.RemoveAll(l.path(IPCDir)); err != nil {
		l.log.Warn("stale agent IPC directory not removed", "step", "agent", "error", err.Error())
	}
	p, out, err := l.startLogged(exec.Command(l.agentPath), "agent", "", l.watchOutput)
	if err != nil {
		return nil, err
	}
	l.proc, l.procOut, l.procStarted = p, out, l.cfg.Clock()
	l.log.Info("agent started", "step", "agent", "pid", p.Pid(), "instance_id", l.instanceID)
	return p, nil
}

// watchOutput looks at each line of the running agent's output: its pings
// failing with InvalidInstanceId mean the instance may be gone (someone
// deregistered it), which Run then checks.
func (l *Lifecycle) watchOutput(line string) {
	if strings.Contains(line, "InvalidInstanceId") {
		select {
		case l.suspect <- struct{}{}:
		default:
		}
	}
}

// waitOnline polls DescribeInstanceInformation until id is Online, backing
// off from pollMin to at most pollMax (short, so that Start returns soon
// after the instance is Online), for at most ReadyTimeout.
func (l *Lifecycle) waitOnline(ctx context.Context, id string, p Process) error {
	rctx, cancel := context.WithTimeout(ctx, l.cfg.ReadyTimeout)
	defer cancel()
	wait := l.pollMin
	status := "unknown"
	for {
		cctx, ccancel := l.call(rctx)
		out, err := l.api.DescribeInstanceInformation(cctx, &awsssm.DescribeInstanceInformationInput{
			Filters: []types.InstanceInformationStringFilter{{Key: aws.String("InstanceIds"), Values: []string{id}}},
		})
		ccancel()
		switch {
		case isAccessDenied(err):
			return apiError("wait for agent online", "ssm:DescribeInstanceInformation", err)
		case err != nil:
			l.log.Debug("readiness poll failed", "step", "ready", "instance_id", id, "error", err.Error())
		default:
			status = "not listed"
			for _, ii := range out.InstanceInformationList {
				if aws.ToString(ii.InstanceId) == id {
					status = string(ii.PingStatus)
				}
			}
			if status == string(types.PingStatusOnline) {
				return nil
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-p.Done():
			t.Stop()
			return fmt.Errorf("ssm: wait for agent online: amazon-ssm-agent exited with code %d", p.ExitCode())
		case <-rctx.Done():
			t.Stop()
		}
		if rctx.Err() != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("ssm: wait for agent online: %w", ctx.Err())
			}
			return fmt.Errorf("ssm: wait for agent online: instance %s not Online after %v (PingStatus %s): %w",
				id, l.cfg.ReadyTimeout, status, rctx.Err())
		}
		wait = min(wait*2, l.pollMax)
	}
}

// Run watches the agent until ctx is done (then it returns nil) or
// StopAgent is called. An unexpected exit of the agent (any exit code: the
// agent also exits 0 when it fails to start) is logged and followed by a
// restart after a backoff, at most Restarts times in a row; then Run
// returns an error, so the task exits non-zero and ECS replaces it.
// Meanwhile it checks that the managed instance still exists (see
// checkInstance).
func (l *Lifecycle) Run(ctx context.Context) error {
	l.mu.Lock()
	p, started, ok := l.proc, l.procStarted, l.started
	l.mu.Unlock()
	if !ok {
		return errors.New("ssm: run: Start did not succeed")
	}
	watch := time.NewTicker(l.watchInterval)
	defer watch.Stop()
	restarts := 0
	backoff := l.cfg.RestartBackoff
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-watch.C:
			l.checkInstance(ctx)
			continue
		case <-l.suspect:
			l.checkInstance(ctx)
			continue
		case <-p.Done():
		}
		if l.isStopping() {
			return nil
		}
		code := p.ExitCode()
		if l.cfg.Clock().Sub(started) >= l.stableAfter {
			restarts, backoff = 0, l.cfg.RestartBackoff
		}
		if restarts >= l.cfg.Restarts {
			l.log.Error("agent exited; no restarts left", "step", "agent", "exit_code", code,
				"restarts", restarts, "instance_id", l.InstanceID())
			return fmt.Errorf("ssm: amazon-ssm-agent exited with code %d after %d restarts", code, restarts)
		}
		restarts++
		l.log.Warn("agent exited unexpectedly; restarting", "step", "agent", "exit_code", code,
			"restart", restarts, "max_restarts", l.cfg.Restarts, "backoff", backoff.String(), "instance_id", l.InstanceID())
		if err := sleepCtx(ctx, backoff); err != nil {
			return nil
		}
		backoff = min(backoff*2, l.maxRestartBackoff)
		l.mu.Lock()
		if l.stopping {
			l.mu.Unlock()
			return nil
		}
		np, err := l.startAgentLocked()
		started = l.procStarted
		l.mu.Unlock()
		if err != nil {
			return fmt.Errorf("ssm: restart agent: %w", err)
		}
		p = np
	}
}

// checkInstance asks the service whether our instance still exists. One
// that is gone (deregistered by someone else, e.g. another task's orphan
// sweep) cannot come back: every session to it fails. The registration
// file is removed, so "bastion healthcheck" reports unhealthy and ECS
// replaces the task; the SSH server keeps serving until then. A failed
// check decides nothing and is tried again at the next occasion.
func (l *Lifecycle) checkInstance(ctx context.Context) {
	id := l.InstanceID()
	l.mu.Lock()
	gone := l.gone
	l.mu.Unlock()
	if gone || id == "" {
		return
	}
	ii, err := l.describeInstance(ctx, id)
	if err != nil {
		l.log.Warn("managed instance not checked", "step", "watch", "instance_id", id, "error", err.Error())
		return
	}
	if ii != nil {
		l.log.Debug("managed instance still registered", "step", "watch", "instance_id", id, "ping_status", string(ii.PingStatus))
		return
	}
	l.mu.Lock()
	l.gone = true
	l.mu.Unlock()
	file := l.path(RegistrationFile)
	ferr := os.Remove(file)
	if errors.Is(ferr, os.ErrNotExist) {
		ferr = nil
	}
	l.log.Error("managed instance gone: deregistered outside this task; healthcheck now reports unhealthy so ECS replaces the task",
		"step", "watch", "instance_id", id, "registration_file_removed", ferr == nil, "error", errString(ferr))
}

func (l *Lifecycle) isStopping() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stopping
}

// StopAgent stops the agent for shutdown, or the register process when
// Start was abandoned during the registration: SIGTERM to its process
// group, SIGKILL when ctx is done (Process.Stop). Run then returns nil. An
// agent that had to be killed is reported as ctx's error.
func (l *Lifecycle) StopAgent(ctx context.Context) error {
	l.mu.Lock()
	l.stopping = true
	p, out := l.proc, l.procOut
	l.mu.Unlock()
	if p == nil {
		return nil
	}
	select {
	case <-p.Done():
		l.log.Info("agent already exited", "step", "stop-agent", "exit_code", p.ExitCode())
		return nil
	default:
	}
	start := time.Now()
	killed, err := p.Stop(ctx)
	if err != nil {
		return fmt.Errorf("ssm: stop agent: %w", err)
	}
	select { // let its last lines through
	case <-out:
	case <-ctx.Done():
	}
	l.log.Info("agent stopped", "step", "stop-agent", "exit_code", p.ExitCode(), "killed", killed,
		"took", time.Since(start).String())
	if killed {
		if cause := context.Cause(ctx); cause != nil {
			return fmt.Errorf("ssm: stop agent: killed: %w", cause)
		}
		return errors.New("ssm: stop agent: killed")
	}
	return nil
}
