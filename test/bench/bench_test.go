package main

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/test/harness"
)

// TestBenchSmoke runs the benchmark in miniature (16 MiB once, 20 tunnels,
// 10 handshakes per jump host, the SSM-shaped load briefly) and checks that
// the harness works: every phase produced figures and nothing failed. It
// says nothing about the ratios. Like the rest of the suite it needs root,
// sshd and ssh, and fails when they are missing.
func TestBenchSmoke(t *testing.T) {
	harness.RequireRoot(t)
	harness.RequireTools(t, "/usr/sbin/sshd", "ssh", "ssh-keygen", "sh", "head")
	start := time.Now()
	var out bytes.Buffer
	o := options{smoke: true, runs: 1, size: 16 << 20, tunnels: 20, handshakes: 10}
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
	t.Logf("smoke took %v", time.Since(start).Round(time.Millisecond))
}
