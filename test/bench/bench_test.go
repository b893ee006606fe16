package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"testing"
)

// TestBenchSmoke runs the benchmark's short mode (64 MiB, one run, 50
// tunnels, 20 handshakes, 5 SSM-shaped sessions for 2 s) and checks that the harness works: every phase
// produced figures and nothing failed. It says nothing about the ratios.
// It needs root, sshd and ssh, loads both cores for about 30 s, and so is
// opt-in: BASTION_BENCH_SMOKE=1 go test ./test/bench
func TestBenchSmoke(t *testing.T) {
	if os.Getenv("BASTION_BENCH_SMOKE") == "" {
		t.Skip("set BASTION_BENCH_SMOKE=1 to run the benchmark smoke test")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, tool := range []string{"/usr/sbin/sshd", "ssh", "ssh-keygen"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("missing %s", tool)
		}
	}
	var out bytes.Buffer
	o := options{smoke: true, runs: 1, size: 64 << 20, tunnels: 50, handshakes: 20}
	res, err := run(context.Background(), o, &out)
	t.Log(out.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range []*jumpRes{res.Bastion, res.OpenSSH, res.OpenSSHGCM} {
		if j == nil {
			t.Fatal("missing results")
		}
		if len(j.TransferSec) != 1 || j.CPUPerGiBMedian <= 0 || len(j.SSMCPU) != 1 || j.SSMCPUMedian <= 0 || j.SSMFailures != 0 || j.SSMMiB <= 0 {
			t.Errorf("%s: transfer %v, SSM-shaped load %+v", j.Name, j.TransferSec, j)
		}
		if j.Name == "openssh-gcm" {
			if j.Cipher != "aes128-gcm@openssh.com" {
				t.Errorf("openssh-gcm negotiated %q", j.Cipher)
			}
			continue
		}
		if len(j.TransferSec) != 1 || j.TransferMedian <= 0 || j.CPUPerGiBMedian <= 0 {
			t.Errorf("%s: transfer %+v", j.Name, j)
		}
		if j.TunnelFailures != 0 || j.TunnelsOpen.RSSMiB <= 0 || j.TunnelsClosed.RSSMiB <= 0 {
			t.Errorf("%s: tunnels: %d failures, %+v / %+v", j.Name, j.TunnelFailures, j.TunnelsOpen, j.TunnelsClosed)
		}
		if j.Idle.RSSMiB <= 0 {
			t.Errorf("%s: idle %+v", j.Name, j.Idle)
		}
		if j.HandshakeFailure != 0 || j.HandshakeP50ms <= 0 || j.HandshakeP99ms < j.HandshakeP50ms {
			t.Errorf("%s: handshakes p50 %v p99 %v failures %d", j.Name, j.HandshakeP50ms, j.HandshakeP99ms, j.HandshakeFailure)
		}
		if j.Cipher == "" || j.Kex == "" {
			t.Errorf("%s: negotiated %q %q", j.Name, j.Kex, j.Cipher)
		}
	}
	if res.OpenSSH.TunnelsOpen.Procs < 2 {
		t.Errorf("openssh tree with tunnels open has %d processes; the tree walk misses the per-connection children", res.OpenSSH.TunnelsOpen.Procs)
	}
	if len(res.Goals) != 6 {
		t.Errorf("goals: %+v", res.Goals)
	}
}
