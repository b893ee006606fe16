package ssm

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// registration is the content of RegistrationFile.
type registration struct {
	ManagedInstanceID string
	Region            string
}

func readRegistration(path string) (registration, error) {
	var r registration
	b, err := os.ReadFile(path)
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// transientRegistration lists failure texts of "amazon-ssm-agent -register"
// worth another try with the same activation: throttling, server errors and
// network trouble. The activation is unused after such a failure, so a retry
// registers at most once.
var transientRegistration = []string{
	"ThrottlingException", "Rate exceeded", "InternalServerError", "ServiceUnavailable",
	"timeout", "connection refused", "connection reset",
}

const registerAttempts = 6

// register runs registerOnce, retrying transient failures with jittered
// exponential backoff (2s doubling to 32s) inside ctx. Every instance an
// attempt reports or leaves in the registration file is recorded for
// Deregister, whatever the outcome.
func (l *Lifecycle) register(ctx context.Context, act *activation) (string, error) {
	backoff := 2 * time.Second
	for attempt := 1; ; attempt++ {
		id, err := l.registerOnce(ctx, act)
		if err == nil || attempt == registerAttempts || ctx.Err() != nil || !isTransientRegistration(err) {
			return id, err
		}
		wait := backoff/2 + time.Duration(rand.Int64N(int64(backoff)))
		l.log.Warn("registration failed transiently; retrying", "step", "register", "attempt", attempt,
			"retry_in", wait.Round(time.Millisecond).String(), "error", err.Error())
		if sleepCtx(ctx, wait) != nil {
			return "", err
		}
		backoff *= 2
	}
}

func isTransientRegistration(err error) bool {
	for _, s := range transientRegistration {
		if strings.Contains(err.Error(), s) {
			return true
		}
	}
	return false
}

// registerOnce runs "amazon-ssm-agent -register -y" and checks its result
// against RegistrationFile. The process is the Lifecycle's child while it
// runs: if ctx ends first, Start returns at once and StopAgent stops it.
func (l *Lifecycle) registerOnce(ctx context.Context, act *activation) (string, error) {
	var mu sync.Mutex // the reader goroutine writes, this one reads after out
	var reported, failure string
	onLine := func(line string) {
		if i := strings.Index(line, registeredMarker); i >= 0 {
			if f := strings.Fields(line[i+len(registeredMarker):]); len(f) > 0 {
				mu.Lock()
				reported = f[0]
				mu.Unlock()
				l.addInstance(f[0])
			}
		}
		if i := strings.Index(line, regFailedMarker); i >= 0 {
			mu.Lock()
			failure = strings.TrimSpace(line[i:])
			mu.Unlock()
		}
	}
	l.mu.Lock()
	l.registering = true // from now on the registration file is this run's
	l.mu.Unlock()
	cmd := exec.Command(l.agentPath, "-register", "-code", act.code, "-id", act.id, "-region", l.cfg.Region, "-y")
	p, out, err := l.startLogged(cmd, "register", act.code, onLine)
	if err != nil {
		return "", fmt.Errorf("ssm: register: start %s: %w", l.cfg.AgentPath, err)
	}
	l.setProc(p, out)
	rctx, cancel := context.WithTimeout(ctx, l.registerTimeout)
	defer cancel()
	select {
	case <-p.Done():
	case <-rctx.Done():
		if ctx.Err() != nil {
			return "", fmt.Errorf("ssm: register: %w", ctx.Err())
		}
		return "", fmt.Errorf("ssm: register: amazon-ssm-agent -register still running after %v", l.registerTimeout)
	}
	<-out // bounded by drainDelay
	l.setProc(nil, nil)
	reg, ferr := readRegistration(l.path(RegistrationFile))
	if ferr == nil {
		l.addInstance(reg.ManagedInstanceID)
	}
	mu.Lock()
	defer mu.Unlock()
	if code := p.ExitCode(); code != 0 || failure != "" {
		if failure == "" {
			failure = "no reason given"
		}
		return "", fmt.Errorf("ssm: register: amazon-ssm-agent exited with code %d: %s", code, failure)
	}
	switch {
	case reported == "":
		return "", fmt.Errorf("ssm: register: amazon-ssm-agent did not report a managed instance id")
	case ferr != nil:
		return "", fmt.Errorf("ssm: register: read registration file: %w", ferr)
	case reg.ManagedInstanceID != reported:
		return "", fmt.Errorf("ssm: register: registration file names %q but amazon-ssm-agent reported %q", reg.ManagedInstanceID, reported)
	case !instanceIDPattern.MatchString(reported):
		return "", fmt.Errorf("ssm: register: %q is not a managed instance id", reported)
	case reg.Region != l.cfg.Region:
		return "", fmt.Errorf("ssm: register: registration file names region %q, want %q", reg.Region, l.cfg.Region)
	}
	l.mu.Lock()
	l.instanceID = reported
	l.mu.Unlock()
	return reported, nil
}

// setProc makes p (nil: none) the child that StopAgent stops.
func (l *Lifecycle) setProc(p Process, out <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.proc, l.procOut = p, out
}
