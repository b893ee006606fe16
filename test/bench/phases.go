package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

func b64(s []byte) string { return base64.StdEncoding.EncodeToString(s) }

// startBastion builds (unless -bastion) and runs the binary, reading its
// listen address from the "bastion started" log line.
func (b *bench) startBastion(j *jump, authorized string) ([]string, error) {
	bin := b.o.bastionBin
	if bin == "" {
		gomod, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil || strings.TrimSpace(string(gomod)) == "" || strings.TrimSpace(string(gomod)) == os.DevNull {
			return nil, fmt.Errorf("go env GOMOD: run from inside the module (%v)", err)
		}
		bin = filepath.Join(b.dir, "bastion")
		cmd := exec.Command("go", "build", "-o", bin, "./cmd/bastion")
		cmd.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build: %v\n%s", err, out)
		}
	}
	d := filepath.Join(b.dir, j.name+"-host")
	os.MkdirAll(d, 0o700)
	hkPath, hkPub, err := keygen(d, "host")
	if err != nil {
		return nil, err
	}
	pem, err := os.ReadFile(hkPath)
	if err != nil {
		return nil, err
	}
	if j.hostKey, _, _, _, err = gossh.ParseAuthorizedKey([]byte(hkPub)); err != nil {
		return nil, err
	}
	shown := []string{
		"BASTION_SSH_ADDR=127.0.0.1:0",
		"BASTION_ALLOW=127.0.0.1/32",
		"BASTION_MAX_STARTUPS=2000",
		"BASTION_MAX_STARTUPS_PER_SOURCE=2000",
		// One key opens every connection of the tunnels phase.
		"BASTION_MAX_CONNECTIONS_PER_KEY=2000",
	}
	shown = append(shown, b.o.bastionEnv...)
	env := append([]string{"PATH=" + os.Getenv("PATH"), "HOME=/root",
		"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED=" + b64([]byte(authorized)),
		"SSH_PRIVATE_HOST_KEY_BASE64ENCODED=" + b64(pem),
	}, shown...)
	logPath := filepath.Join(d, "bastion.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	if j.cgfd >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: j.cgfd}
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	logf.Close()
	j.cmd, j.pid, j.log = cmd, cmd.Process.Pid, logPath
	deadline := time.Now().Add(30 * time.Second)
	for {
		f, err := os.Open(logPath)
		if err == nil {
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				var m map[string]any
				if json.Unmarshal(sc.Bytes(), &m) == nil && m["msg"] == "bastion started" {
					j.addr = fmt.Sprint(m["ssh_addr"])
				}
			}
			f.Close()
		}
		if j.addr != "" {
			break
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("bastion did not start:\n%s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, p, err := net.SplitHostPort(j.addr); err == nil {
		j.addr = "127.0.0.1:" + p
	}
	return shown, nil
}

func (b *bench) clientConfig(targetPort int, targetHK gossh.PublicKey) error {
	kh := filepath.Join(b.dir, "known_hosts")
	lines := []string{fmt.Sprintf("[127.0.0.1]:%d %s", targetPort, strings.TrimSpace(string(gossh.MarshalAuthorizedKey(targetHK))))}
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "Host target\n  HostName 127.0.0.1\n  Port %d\n", targetPort)
	for _, j := range b.jumps {
		_, p, _ := net.SplitHostPort(j.addr)
		lines = append(lines, fmt.Sprintf("[127.0.0.1]:%s %s", p, strings.TrimSpace(string(gossh.MarshalAuthorizedKey(j.hostKey)))))
	}
	for _, j := range b.flows() {
		_, p, _ := net.SplitHostPort(j.addr)
		fmt.Fprintf(&cfg, "Host %s\n  HostName 127.0.0.1\n  Port %s\n", j.alias, p)
		if j.ciphers != "" {
			fmt.Fprintf(&cfg, "  Ciphers %s\n", j.ciphers)
		}
	}
	fmt.Fprintf(&cfg, "Host *\n  User root\n  IdentityFile %s\n  IdentitiesOnly yes\n  UserKnownHostsFile %s\n  GlobalKnownHostsFile /dev/null\n"+
		"  StrictHostKeyChecking yes\n  BatchMode yes\n  ConnectTimeout 10\n  ControlMaster no\n  LogLevel ERROR\n",
		filepath.Join(b.dir, "client"), kh)
	if err := os.WriteFile(kh, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		return err
	}
	b.sshCfg = filepath.Join(b.dir, "ssh_config")
	return os.WriteFile(b.sshCfg, []byte(cfg.String()), 0o600)
}

// algorithms records what the stock client negotiates with j.
func (b *bench) algorithms(ctx context.Context, j *jump) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ssh", "-F", b.sshCfg, "-v", "-W", b.echoAddr, j.alias)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ssh -W: %v\n%s", err, stderr.String())
	}
	for _, l := range strings.Split(stderr.String(), "\n") {
		if v, ok := strings.CutPrefix(l, "debug1: kex: algorithm: "); ok {
			j.res.Kex = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(l, "debug1: kex: client->server cipher: "); ok {
			f := strings.Fields(v)
			if len(f) >= 3 {
				j.res.Cipher, j.res.MAC = f[0], f[2]
			}
		}
	}
	return nil
}

// flows are the jump hosts as the client reaches them: each daemon with
// the client's default ciphers, and OpenSSH's again with AES-GCM.
func (b *bench) flows() []*jump {
	out := append([]*jump(nil), b.jumps...)
	if b.gcm != nil {
		out = append(out, b.gcm)
	}
	return out
}

// order interleaves list, rotating which goes first.
func order(list []*jump, i int) []*jump {
	n := len(list)
	out := make([]*jump, 0, n)
	for k := 0; k < n; k++ {
		out = append(out, list[(i+k)%n])
	}
	return out
}

func (b *bench) handshakes(ctx context.Context) error {
	n := b.o.handshakes
	if n <= 0 {
		return nil
	}
	b.logf("handshakes: %d sequential ssh -W per jump host, interleaved", n)
	durs := map[*jump][]float64{}
	for i := 0; i < n; i++ {
		for _, j := range order(b.jumps, i) {
			c, cancel := context.WithTimeout(ctx, 30*time.Second)
			cmd := exec.CommandContext(c, "ssh", "-F", b.sshCfg, "-W", b.echoAddr, j.alias)
			t0 := time.Now()
			err := cmd.Run()
			d := time.Since(t0)
			cancel()
			if err != nil {
				j.res.HandshakeFailure++
				continue
			}
			durs[j] = append(durs[j], float64(d.Microseconds())/1000)
		}
	}
	for _, j := range b.jumps {
		d := durs[j]
		if len(d) == 0 {
			return fmt.Errorf("%s: every handshake failed", j.name)
		}
		sort.Float64s(d)
		j.res.HandshakeP50ms = round(percentile(d, 50))
		j.res.HandshakeP99ms = round(percentile(d, 99))
		sum := 0.0
		for _, v := range d {
			sum += v
		}
		j.res.HandshakeMeanms = round(sum / float64(len(d)))
		b.logf("  %s: p50 %.1f ms, p99 %.1f ms, failures %d", j.name, j.res.HandshakeP50ms, j.res.HandshakeP99ms, j.res.HandshakeFailure)
	}
	return nil
}

// percentile is nearest-rank on sorted d.
func percentile(d []float64, p float64) float64 {
	k := int(float64(len(d))*p/100+0.999999) - 1
	if k < 0 {
		k = 0
	}
	if k >= len(d) {
		k = len(d) - 1
	}
	return d[k]
}

func median(d []float64) float64 {
	s := append([]float64(nil), d...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func round(v float64) float64 { return float64(int64(v*1000+0.5)) / 1000 }

func (b *bench) transfer(ctx context.Context, j *jump, size int64) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	script := fmt.Sprintf("head -c %d /dev/zero | ssh -F %s -J %s target 'cat > /dev/null'", size, b.sshCfg, j.alias)
	cmd := exec.CommandContext(ctx, "sh", "-c", script)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	t0 := time.Now()
	err := cmd.Run()
	d := time.Since(t0)
	if err != nil {
		return d, fmt.Errorf("%s: transfer: %v\n%s", j.res.Name, err, stderr.String())
	}
	return d, nil
}

func (b *bench) transfers(ctx context.Context) error {
	if b.o.runs <= 0 {
		return nil
	}
	gib := float64(b.o.size) / (1 << 30)
	b.logf("transfers: %d MiB x %d per jump host, interleaved (after a 32 MiB warm-up each)", b.o.size>>20, b.o.runs)
	for _, j := range b.flows() {
		if _, err := b.transfer(ctx, j, 32<<20); err != nil {
			return err
		}
	}
	for i := 0; i < b.o.runs; i++ {
		for _, j := range order(b.flows(), i) {
			j.settle(1, 10*time.Second)
			cpu0 := j.cpuSeconds()
			var perf *exec.Cmd
			if b.o.perf != "" && i == 0 && strings.HasPrefix(j.name, "bastion") {
				out := b.o.perf
				if j.name != "bastion" {
					out += "." + j.name
				}
				args := []string{"record", "-F", "999", "-g", "-o", out, "-p", strconv.Itoa(j.pid)}
				if strings.HasSuffix(b.o.perf, ".stat") {
					args = []string{"stat", "-e", "raw_syscalls:sys_enter,syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_futex,syscalls:sys_enter_nanosleep,syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_madvise,syscalls:sys_enter_tgkill,context-switches,page-faults,task-clock", "-o", out, "-p", strconv.Itoa(j.pid)}
				}
				perf = exec.Command("perf", args...)
				perf.Stdout, perf.Stderr = io.Discard, io.Discard
				if err := perf.Start(); err != nil {
					perf = nil
				} else {
					time.Sleep(300 * time.Millisecond)
				}
			}
			d, err := b.transfer(ctx, j, b.o.size)
			if perf != nil {
				perf.Process.Signal(syscall.SIGINT)
				perf.Wait()
			}
			if err != nil {
				return err
			}
			j.settle(1, 10*time.Second)
			cpu := j.cpuSeconds() - cpu0
			j.res.TransferSec = append(j.res.TransferSec, round(d.Seconds()))
			j.res.CPUPerGiB = append(j.res.CPUPerGiB, round(cpu/gib))
			b.logf("  %-11s run %d: %.2f s (%.0f MiB/s), jump CPU %.2f s/GiB", j.res.Name, i+1, d.Seconds(),
				float64(b.o.size>>20)/d.Seconds(), cpu/gib)
		}
	}
	for _, j := range b.flows() {
		j.res.TransferMedian = round(median(j.res.TransferSec))
		j.res.CPUPerGiBMedian = round(median(j.res.CPUPerGiB))
		if j.res.TransferMedian > 0 {
			j.res.MiBps = round(float64(b.o.size>>20) / j.res.TransferMedian)
		}
	}
	return nil
}

type tun struct {
	client *gossh.Client
	conn   net.Conn
}

// tunnels opens n SSH connections to j, one direct-tcpip channel each to
// the echo service, checks each echoes, measures, closes them all and
// measures again.
func (b *bench) tunnels(ctx context.Context, j *jump) error {
	n := b.o.tunnels
	if n <= 0 {
		return nil
	}
	cfg := &gossh.ClientConfig{
		User:            "root",
		Auth:            []gossh.AuthMethod{gossh.PublicKeys(b.signer)},
		HostKeyCallback: gossh.FixedHostKey(j.hostKey),
		Timeout:         30 * time.Second,
	}
	j.settle(1, 10*time.Second)
	tuns := make([]tun, n)
	var mu sync.Mutex
	var firstErr error
	work := make(chan int)
	var wg sync.WaitGroup
	t0 := time.Now()
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				t, err := openTunnel(j.addr, b.echoAddr, cfg)
				if err != nil {
					mu.Lock()
					j.res.TunnelFailures++
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				tuns[i] = t
			}
		}()
	}
	for i := 0; i < n; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	j.res.TunnelOpenSec = round(time.Since(t0).Seconds())
	time.Sleep(2 * time.Second)
	j.res.TunnelsOpen = j.mem()
	b.logf("tunnels %s: %d open in %.1f s (%d failed%s): %.1f MiB RSS, %.1f MiB PSS, %d processes",
		j.name, n-j.res.TunnelFailures, j.res.TunnelOpenSec, j.res.TunnelFailures, errSuffix(firstErr),
		j.res.TunnelsOpen.RSSMiB, j.res.TunnelsOpen.PSSMiB, j.res.TunnelsOpen.Procs)
	for _, t := range tuns {
		if t.client != nil {
			t.conn.Close()
			t.client.Close()
		}
	}
	j.settle(1, 60*time.Second)
	time.Sleep(3 * time.Second)
	j.res.TunnelsClosed = j.mem()
	b.logf("tunnels %s: closed: %.1f MiB RSS", j.name, j.res.TunnelsClosed.RSSMiB)
	return nil
}

func errSuffix(err error) string {
	if err == nil {
		return ""
	}
	return "; first: " + err.Error()
}

func openTunnel(addr, echo string, cfg *gossh.ClientConfig) (tun, error) {
	c, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		return tun{}, err
	}
	sc, chans, reqs, err := gossh.NewClientConn(c, addr, cfg)
	if err != nil {
		c.Close()
		return tun{}, err
	}
	client := gossh.NewClient(sc, chans, reqs)
	conn, err := client.Dial("tcp", echo)
	if err != nil {
		client.Close()
		return tun{}, err
	}
	buf := make([]byte, 4)
	if _, err := conn.Write([]byte("ping")); err == nil {
		_, err = io.ReadFull(conn, buf)
	}
	if err != nil || string(buf) != "ping" {
		conn.Close()
		client.Close()
		return tun{}, fmt.Errorf("echo through tunnel: %v", err)
	}
	return tun{client: client, conn: conn}, nil
}

func (b *bench) stop() {
	var procs []*exec.Cmd
	for _, j := range b.jumps {
		if j.cmd != nil {
			procs = append(procs, j.cmd)
		}
	}
	for _, c := range b.extra {
		procs = append(procs, c)
	}
	if b.target != nil {
		procs = append(procs, b.target)
	}
	for _, c := range procs {
		c.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			c.Process.Kill()
			<-done
		}
	}
	for _, j := range b.jumps {
		if j.cgroup != "" {
			os.WriteFile(filepath.Join(j.cgroup, "cgroup.kill"), []byte("1"), 0)
			for i := 0; i < 50 && os.Remove(j.cgroup) != nil; i++ {
				time.Sleep(100 * time.Millisecond)
			}
		}
		if j.cgfd >= 0 {
			syscall.Close(j.cgfd)
		}
	}
}

func (b *bench) print(r *Results) {
	w := b.out
	bs, os_ := r.Bastion, r.OpenSSH
	if bs == nil || os_ == nil {
		return
	}
	fmt.Fprintf(w, "\nbastion vs OpenSSH sshd as jump host (%s; %d cores; %s)\n", r.Host.CPU, r.Host.Cores, r.Host.OpenSSH)
	gcm := r.OpenSSHGCM
	if gcm == nil {
		gcm = &jumpRes{}
	}
	fmt.Fprintf(w, "negotiated with the stock client: bastion %s / %s; openssh %s / %s; openssh-gcm (Ciphers set for the jump) %s\n",
		bs.Kex, bs.Cipher, os_.Kex, os_.Cipher, gcm.Cipher)
	fmt.Fprintf(w, "CPU: %s\nmemory: %s\n\n", r.Host.CPUMethod, r.Host.MemMethod)
	row := func(name string, a, c float64, unit string) {
		fmt.Fprintf(w, "%-44s %10.2f %10.2f %8.3f  %s\n", name, a, c, ratio(a, c), unit)
	}
	fmt.Fprintf(w, "%-44s %10s %10s %8s\n", "metric", "bastion", "openssh", "ratio")
	row(fmt.Sprintf("%d MiB via ssh -J: wall median of %d", r.Settings.TransferMiB, len(bs.TransferSec)), bs.TransferMedian, os_.TransferMedian, "s")
	row("  throughput", bs.MiBps, os_.MiBps, "MiB/s")
	row("jump CPU per GiB (median)", bs.CPUPerGiBMedian, os_.CPUPerGiBMedian, "CPU s")
	row("  against openssh-gcm: wall", bs.TransferMedian, gcm.TransferMedian, "s")
	row("  against openssh-gcm: jump CPU per GiB", bs.CPUPerGiBMedian, gcm.CPUPerGiBMedian, "CPU s")
	if len(bs.SSMCPU) > 0 {
		row(fmt.Sprintf("SSM-shaped %dx%gs: jump CPU, median of %d", r.Settings.SSMSessions, r.Settings.SSMSeconds, len(bs.SSMCPU)),
			bs.SSMCPUMedian, os_.SSMCPUMedian, "CPU s")
		row("  against openssh-gcm", bs.SSMCPUMedian, gcm.SSMCPUMedian, "CPU s")
	}
	row(fmt.Sprintf("%d idle tunnels: RSS sum", r.Settings.Tunnels), bs.TunnelsOpen.RSSMiB, os_.TunnelsOpen.RSSMiB, "MiB")
	row("  PSS sum", bs.TunnelsOpen.PSSMiB, os_.TunnelsOpen.PSSMiB, "MiB")
	row("  processes", float64(bs.TunnelsOpen.Procs), float64(os_.TunnelsOpen.Procs), "")
	row("  time to open all (16 at a time)", bs.TunnelOpenSec, os_.TunnelOpenSec, "s")
	row("  RSS after they closed", bs.TunnelsClosed.RSSMiB, os_.TunnelsClosed.RSSMiB, "MiB")
	row("idle RSS after start", bs.Idle.RSSMiB, os_.Idle.RSSMiB, "MiB")
	row("  idle PSS", bs.Idle.PSSMiB, os_.Idle.PSSMiB, "MiB")
	row(fmt.Sprintf("connect+auth+close p50 (n=%d)", r.Settings.Handshakes), bs.HandshakeP50ms, os_.HandshakeP50ms, "ms")
	row("  p99", bs.HandshakeP99ms, os_.HandshakeP99ms, "ms")
	fmt.Fprintf(w, "\ntransfer runs (s): bastion %v, openssh %v\n", bs.TransferSec, os_.TransferSec)
	fmt.Fprintf(w, "CPU s/GiB runs:    bastion %v, openssh %v\n", bs.CPUPerGiB, os_.CPUPerGiB)
	fmt.Fprintf(w, "openssh-gcm runs:  transfer %v s, CPU %v s/GiB\n", gcm.TransferSec, gcm.CPUPerGiB)
	if len(bs.SSMCPU) > 0 {
		fmt.Fprintf(w, "SSM-shaped CPU s:  bastion %v, openssh %v, openssh-gcm %v (%.1f MiB each way per run)\n", bs.SSMCPU, os_.SSMCPU, gcm.SSMCPU, bs.SSMMiB)
	}
	if x := r.BastionB; x != nil {
		fmt.Fprintf(w, "A/B: bastion-b (%s): transfer median %.2f s (runs %v), CPU %.2f s/GiB (runs %v), SSM-shaped CPU %.2f s (runs %v), tunnels RSS %.1f MiB, idle RSS %.1f MiB, handshake p50 %.1f ms\n",
			r.Settings.BastionB, x.TransferMedian, x.TransferSec, x.CPUPerGiBMedian, x.CPUPerGiB, x.SSMCPUMedian, x.SSMCPU, x.TunnelsOpen.RSSMiB, x.Idle.RSSMiB, x.HandshakeP50ms)
	}
	if bs.TunnelFailures+os_.TunnelFailures+bs.HandshakeFailure+os_.HandshakeFailure+bs.SSMFailures+os_.SSMFailures+gcm.SSMFailures > 0 {
		fmt.Fprintf(w, "failures: tunnels bastion %d openssh %d; handshakes bastion %d openssh %d; SSM-shaped sessions bastion %d openssh %d openssh-gcm %d\n",
			bs.TunnelFailures, os_.TunnelFailures, bs.HandshakeFailure, os_.HandshakeFailure, bs.SSMFailures, os_.SSMFailures, gcm.SSMFailures)
	}
	fmt.Fprintln(w, "\ngoals:")
	for _, g := range r.Goals {
		met := "NOT MET"
		if g.Met {
			met = "met"
		}
		fmt.Fprintf(w, "  %-44s %8.3f  %s\n", g.Name, g.Value, met)
	}
	fmt.Fprintf(w, "total %.0f s\n", r.DurationSec)
}
