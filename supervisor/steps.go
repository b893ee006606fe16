package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// stepGrace is how long past its deadline RunSteps waits for a step that
// honours its context to return, taken from the steps after it.
const stepGrace = 20 * time.Millisecond

// Step is one stage of the ordered shutdown.
type Step struct {
	Name string
	// Weight is the step's share of what is left of the budget when it
	// starts, relative to the weights of the steps not yet run; <= 0 counts
	// as 1.
	Weight int
	// Run should return ctx.Err() when its context ends first.
	Run func(ctx context.Context) error
}

// StepResult is what one step did.
type StepResult struct {
	Name     string
	Duration time.Duration
	Err      error
}

// RunSteps runs steps in order within budget (and within ctx). Each step's
// context gets a deadline cut from the time left by its weight among the
// remaining steps, so time a step leaves unused goes to the later ones, and
// a step that overruns is abandoned (its goroutine left to finish) at its
// own deadline: it never eats the later steps' share. A step returning after
// its context ended is logged as cut short; steps for which no time is left
// are skipped with context.DeadlineExceeded. The sequence never outlasts
// budget. Each step is logged with its name and duration_ms.
func RunSteps(ctx context.Context, log *slog.Logger, budget time.Duration, steps []Step) []StepResult {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	end := time.Now().Add(budget)
	if d, ok := ctx.Deadline(); ok && d.Before(end) {
		end = d
	}
	weight := func(s Step) int { return max(s.Weight, 1) }
	rest := 0
	for _, s := range steps {
		rest += weight(s)
	}
	results := make([]StepResult, 0, len(steps))
	for _, st := range steps {
		w := weight(st)
		start := time.Now()
		left := end.Sub(start)
		if left <= 0 || ctx.Err() != nil {
			err := ctx.Err()
			if err == nil {
				err = context.DeadlineExceeded
			}
			err = fmt.Errorf("supervisor: step %q skipped: no time left: %w", st.Name, err)
			log.Warn("shutdown step skipped", "step", st.Name, "duration_ms", 0, "err", err.Error())
			results = append(results, StepResult{Name: st.Name, Err: err})
			rest -= w
			continue
		}
		share := time.Duration(int64(left) * int64(w) / int64(rest))
		rest -= w
		deadline := start.Add(share)
		// The last step may use all that is left but no grace beyond it.
		wait := deadline.Add(stepGrace)
		if rest == 0 || wait.After(end) {
			wait = end
		}
		err := runStep(ctx, st, deadline, wait)
		d := time.Since(start)
		results = append(results, StepResult{Name: st.Name, Duration: d, Err: err})
		switch {
		case err == nil:
			log.Info("shutdown step done", "step", st.Name, "duration_ms", d.Milliseconds(), "budget_ms", share.Milliseconds())
		case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
			log.Warn("shutdown step cut short", "step", st.Name, "duration_ms", d.Milliseconds(), "budget_ms", share.Milliseconds(), "err", err.Error())
		default:
			log.Error("shutdown step failed", "step", st.Name, "duration_ms", d.Milliseconds(), "budget_ms", share.Milliseconds(), "err", err.Error())
		}
	}
	return results
}

// runStep runs st with a context ending at deadline and waits for it until
// wait at most.
func runStep(ctx context.Context, st Step, deadline, wait time.Time) error {
	sctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	done := make(chan error, 1) // buffered: an abandoned step must not block forever
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- fmt.Errorf("supervisor: step %q panicked: %v", st.Name, r)
			}
		}()
		done <- st.Run(sctx)
	}()
	t := time.NewTimer(time.Until(wait))
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		select {
		case err := <-done:
			return err
		default:
		}
		return fmt.Errorf("supervisor: step %q abandoned: did not return by its deadline: %w", st.Name, context.DeadlineExceeded)
	}
}
