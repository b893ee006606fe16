package main

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// ssmLoad runs the SSM-shaped load through every flow, interleaved, and
// records the jump host's CPU seconds per run (handshakes included).
func (b *bench) ssmLoad(ctx context.Context) error {
	o := b.o
	if o.ssmRuns <= 0 || o.ssmSessions <= 0 {
		return nil
	}
	dur := time.Duration(o.ssmSeconds * float64(time.Second))
	b.logf("SSM-shaped load: %d sessions, %d B every %v for %v each, %d runs per jump host, interleaved",
		o.ssmSessions, ssmFrame, ssmInterval, dur, o.ssmRuns)
	for i := 0; i < o.ssmRuns; i++ {
		for _, j := range order(b.flows(), i) {
			j.settle(1, 10*time.Second)
			cpu0 := j.cpuSeconds()
			sent, failures, firstErr := b.ssmRun(ctx, j, dur)
			if failures == o.ssmSessions {
				return fmt.Errorf("%s: every SSM-shaped session failed: %v", j.res.Name, firstErr)
			}
			j.settle(1, 30*time.Second)
			cpu := j.cpuSeconds() - cpu0
			j.res.SSMCPU = append(j.res.SSMCPU, round(cpu))
			j.res.SSMFailures += failures
			j.res.SSMMiB = round(float64(sent) / (1 << 20))
			b.logf("  %-11s run %d: jump CPU %.2f s, %.1f MiB each way, %d failed%s", j.res.Name, i+1, cpu,
				float64(sent)/(1<<20), failures, errSuffix(firstErr))
		}
	}
	for _, j := range b.flows() {
		j.res.SSMCPUMedian = round(median(j.res.SSMCPU))
	}
	return nil
}

// ssmRun runs the sessions of one run at once and returns the bytes sent
// (and echoed) in all, the number that failed and the first failure.
func (b *bench) ssmRun(ctx context.Context, j *jump, dur time.Duration) (int64, int, error) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	var total int64
	failures := 0
	var firstErr error
	for range b.o.ssmSessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sent, err := ssmSession(ctx, b.sshCfg, b.echoAddr, j.alias, dur)
			mu.Lock()
			defer mu.Unlock()
			total += sent
			if err != nil {
				failures++
				if firstErr == nil {
					firstErr = err
				}
			}
		}()
	}
	wg.Wait()
	return total, failures, firstErr
}

// ssmSession is one session: connect through the jump host to the echo
// service, wait for the first frame's echo (the handshake is done), then
// send a frame every ssmInterval for dur, close, and check that every byte
// came back.
func ssmSession(ctx context.Context, cfg, echo, alias string, dur time.Duration) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, dur+60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ssh", "-F", cfg, "-W", echo, alias)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return 0, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	frame := []byte(strings.Repeat("0123456789abcdef", ssmFrame/16))
	fail := func(sent int64, err error) (int64, error) {
		stdin.Close()
		cancel()
		cmd.Wait()
		return sent, fmt.Errorf("%s: %v: %s", alias, err, strings.TrimSpace(stderr.String()))
	}
	if _, err := stdin.Write(frame); err != nil {
		return fail(0, err)
	}
	if _, err := io.ReadFull(stdout, make([]byte, ssmFrame)); err != nil {
		return fail(0, fmt.Errorf("first echo: %w", err))
	}
	sent := int64(ssmFrame)
	echoed := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, stdout)
		echoed <- n + ssmFrame
	}()
	t := time.NewTicker(ssmInterval)
	defer t.Stop()
	for end := time.Now().Add(dur); time.Now().Before(end); {
		<-t.C
		if _, err := stdin.Write(frame); err != nil {
			return fail(sent, err)
		}
		sent += ssmFrame
	}
	stdin.Close()
	got := <-echoed
	if err := cmd.Wait(); err != nil {
		return sent, fmt.Errorf("%s: ssh: %v: %s", alias, err, strings.TrimSpace(stderr.String()))
	}
	if got != sent {
		return sent, fmt.Errorf("%s: %d of %d bytes echoed", alias, got, sent)
	}
	return sent, nil
}
