package ssm

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
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
// exponential backoff (2s doubling to 32s) inside ctx. candidates collects every id
// an attempt may have created.
func (l *Lifecycle) register(ctx context.Context, activationID, code string) (id string, candidates []string, err error) {
	backoff := 2 * time.Second
	for attempt := 1; ; attempt++ {
		var cands []string
		id, cands, err = l.registerOnce(ctx, activationID, code)
		for _, c := range cands {
			if !slices.Contains(candidates, c) {
				candidates = append(candidates, c)
			}
		}
		if err == nil || attempt == registerAttempts || !isTransientRegistration(err) {
			return id, candidates, err
		}
		wait := backoff/2 + time.Duration(rand.Int64N(int64(backoff)))
		l.log.Warn("registration failed transiently; retrying", "step", "register", "attempt", attempt,
			"retry_in", wait.Round(time.Millisecond).String(), "error", err.Error())
		select {
		case <-ctx.Done():
			return "", candidates, err
		case <-time.After(wait):
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
// against RegistrationFile. candidates are the ids a failed registration
// may have created.
func (l *Lifecycle) registerOnce(ctx context.Context, activationID, code string) (id string, candidates []string, err error) {
	var reported, failure string
	onLine := func(line string) {
		if i := strings.Index(line, registeredMarker); i >= 0 {
			f := strings.Fields(line[i+len(registeredMarker):])
			if len(f) > 0 {
				reported = f[0]
			}
		}
		if i := strings.Index(line, regFailedMarker); i >= 0 {
			failure = strings.TrimSpace(line[i:])
		}
	}
	cmd := exec.Command(l.agentPath, "-register", "-code", code, "-id", activationID, "-region", l.cfg.Region, "-y")
	p, out, err := l.startLogged(cmd, "register", code, onLine)
	if err != nil {
		return "", nil, fmt.Errorf("ssm: register: start %s: %w", l.cfg.AgentPath, err)
	}
	rctx, cancel := context.WithTimeout(ctx, l.registerTimeout)
	defer cancel()
	select {
	case <-p.Done():
	case <-rctx.Done():
		sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		p.Stop(sctx)
		scancel()
		<-out
		return "", l.registrationCandidates(reported), fmt.Errorf("ssm: register: %w", rctx.Err())
	}
	<-out // bounded by drainDelay
	candidates = l.registrationCandidates(reported)
	if code := p.ExitCode(); code != 0 || failure != "" {
		if failure == "" {
			failure = "no reason given"
		}
		return "", candidates, fmt.Errorf("ssm: register: amazon-ssm-agent exited with code %d: %s", code, failure)
	}
	reg, ferr := readRegistration(l.path(RegistrationFile))
	switch {
	case reported == "":
		return "", candidates, fmt.Errorf("ssm: register: amazon-ssm-agent did not report a managed instance id")
	case ferr != nil:
		return "", candidates, fmt.Errorf("ssm: register: read registration file: %w", ferr)
	case reg.ManagedInstanceID != reported:
		return "", candidates, fmt.Errorf("ssm: register: registration file names %q but amazon-ssm-agent reported %q", reg.ManagedInstanceID, reported)
	case !instanceIDPattern.MatchString(reported):
		return "", candidates, fmt.Errorf("ssm: register: %q is not a managed instance id", reported)
	case reg.Region != l.cfg.Region:
		return "", candidates, fmt.Errorf("ssm: register: registration file names region %q, want %q", reg.Region, l.cfg.Region)
	}
	return reported, candidates, nil
}

// registrationCandidates returns the ids a registration may have created:
// the reported one and the one in the registration file.
func (l *Lifecycle) registrationCandidates(reported string) []string {
	var ids []string
	if instanceIDPattern.MatchString(reported) {
		ids = append(ids, reported)
	}
	if reg, err := readRegistration(l.path(RegistrationFile)); err == nil && instanceIDPattern.MatchString(reg.ManagedInstanceID) {
		ids = append(ids, reg.ManagedInstanceID)
	}
	return ids
}
