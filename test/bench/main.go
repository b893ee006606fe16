// Command bench measures bastion as an SSH jump host against OpenSSH's sshd
// in the same run, on loopback, with fresh keys and the stock OpenSSH client:
//
//	go run ./test/bench -out bench.json   # full run (needs root, sshd, ssh)
//	go run ./test/bench -smoke            # short run that checks the harness
//
// It starts an OpenSSH target, an OpenSSH sshd jump host and bastion, then
// measures, interleaving the two jump hosts:
//
//  1. wall time of `head -c SIZE /dev/zero | ssh -J jump target 'cat >/dev/null'`
//  2. jump-host CPU seconds per GiB over the same transfers (whole process tree)
//  3. jump-host memory with N concurrent idle direct-tcpip tunnels (one SSH
//     connection each, opened by an x/crypto/ssh client in this process) to
//     an echo service, and after they close
//  4. jump-host idle memory after start
//  5. latency of sequential `ssh -W echo jump </dev/null` (connect, key
//     exchange, auth, channel, close): p50 and p99
//  6. the SSM-shaped load: S concurrent `ssh -W echo jump` sessions (the
//     way an SSM session worker reaches bastion: one SSH connection per
//     session, handshake included), each writing 1 KiB every 4 ms (256
//     KiB/s) for D seconds and reading the echo back; jump-host CPU seconds
//     over the whole phase
//
// The stock client negotiates chacha20-poly1305 with OpenSSH's sshd and
// aes128-gcm with bastion (which offers only AES-GCM on AES hardware), so
// transfers and the SSM-shaped load also run through the OpenSSH jump host
// with `Ciphers aes128-gcm@openssh.com` for the jump connection
// (openssh-gcm): ratios are given against both.
//
// The admission limits are raised on both sides so the 1,000 tunnels can be
// opened concurrently: OpenSSH `MaxStartups 2000`, bastion
// BASTION_MAX_STARTUPS=2000, BASTION_MAX_STARTUPS_PER_SOURCE=2000 and
// BASTION_MAX_CONNECTIONS_PER_KEY=2000 (one key opens them all). Both
// send keepalives every 15 s (OpenSSH ClientAliveInterval 15, bastion's
// default). Everything else is each server's default.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-dev/bastion/internal/procfs"
)

type options struct {
	out         string
	smoke       bool
	runs        int
	size        int64
	tunnels     int
	handshakes  int
	bastionBin  string
	perf        string
	keep        bool
	bastionEnv  []string
	bastionB    string
	bastionBEnv []string
	// The SSM-shaped load; zero values take the defaults of the mode
	// (full or smoke), negative ssmRuns skips it.
	ssmSessions int
	ssmSeconds  float64
	ssmRuns     int
}

// SSM-shaped load: frame size and pace per session.
const (
	ssmFrame    = 1 << 10
	ssmInterval = 4 * time.Millisecond // 256 KiB/s
)

func main() {
	var o options
	var sizeMiB int64
	flag.StringVar(&o.out, "out", "", "write results as JSON to this file")
	flag.BoolVar(&o.smoke, "smoke", false, "short run: 64 MiB, 1 run, 50 tunnels, 20 handshakes (flags given explicitly still win)")
	flag.IntVar(&o.runs, "runs", 5, "timed transfers per jump host (median reported)")
	flag.Int64Var(&sizeMiB, "size", 1024, "MiB per transfer")
	flag.IntVar(&o.tunnels, "tunnels", 1000, "concurrent idle tunnels")
	flag.IntVar(&o.handshakes, "handshakes", 200, "sequential connections per jump host for handshake latency")
	flag.StringVar(&o.bastionBin, "bastion", "", "prebuilt bastion binary (default: go build ./cmd/bastion)")
	flag.StringVar(&o.perf, "perf", "", "record `perf record -g` of bastion (and bastion-b, to FILE.bastion-b) during the first timed transfer; a name ending in .stat records `perf stat` syscall/context-switch counts instead")
	flag.StringVar(&o.bastionB, "ab", "", "A/B: also run this second bastion binary as a third, interleaved jump host (reported as bastion-b)")
	flag.Func("ab-env", "extra K=V for bastion-b's environment (repeatable)", func(v string) error {
		o.bastionBEnv = append(o.bastionBEnv, v)
		return nil
	})
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory")
	flag.IntVar(&o.ssmSessions, "ssm-sessions", 0, "SSM-shaped load: concurrent sessions (default 20, smoke 5)")
	flag.Float64Var(&o.ssmSeconds, "ssm-seconds", 0, "SSM-shaped load: seconds each session sends (default 5, smoke 2)")
	flag.IntVar(&o.ssmRuns, "ssm-runs", 0, "SSM-shaped load: runs per jump host, median reported (default 3, smoke 1; negative skips)")
	flag.Func("bastion-env", "extra K=V for bastion's environment (repeatable), e.g. GOGC=50", func(v string) error {
		o.bastionEnv = append(o.bastionEnv, v)
		return nil
	})
	flag.Parse()
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.smoke {
		if !set["runs"] {
			o.runs = 1
		}
		if !set["size"] {
			sizeMiB = 64
		}
		if !set["tunnels"] {
			o.tunnels = 50
		}
		if !set["handshakes"] {
			o.handshakes = 20
		}
	}
	o.size = sizeMiB << 20
	res, err := run(context.Background(), o, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	if o.out != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(o.out, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
	}
}

// Results is what -out writes.
type Results struct {
	Started     time.Time `json:"started"`
	Host        hostInfo  `json:"host"`
	Settings    settings  `json:"settings"`
	Bastion     *jumpRes  `json:"bastion"`
	OpenSSH     *jumpRes  `json:"openssh"`
	OpenSSHGCM  *jumpRes  `json:"openssh_gcm"`
	BastionB    *jumpRes  `json:"bastion_b,omitempty"`
	Ratios      ratios    `json:"ratios_bastion_over_openssh"`
	RatiosGCM   ratios    `json:"ratios_bastion_over_openssh_gcm"`
	Goals       []goal    `json:"goals"`
	DurationSec float64   `json:"duration_s"`
}

type hostInfo struct {
	CPU        string `json:"cpu"`
	Cores      int    `json:"cores"`
	Kernel     string `json:"kernel"`
	OpenSSH    string `json:"openssh"`
	Go         string `json:"go"`
	CPUMethod  string `json:"cpu_method"`
	MemMethod  string `json:"memory_method"`
	ClientNote string `json:"client"`
}

type settings struct {
	TransferMiB int64    `json:"transfer_mib"`
	Runs        int      `json:"runs"`
	Tunnels     int      `json:"tunnels"`
	Handshakes  int      `json:"handshakes"`
	SSMSessions int      `json:"ssm_sessions"`
	SSMSeconds  float64  `json:"ssm_seconds"`
	SSMRuns     int      `json:"ssm_runs"`
	SSMCommand  string   `json:"ssm_command"`
	BastionEnv  []string `json:"bastion_env"`
	OpenSSHConf []string `json:"openssh_jump_config"`
	Command     string   `json:"transfer_command"`
	HSCommand   string   `json:"handshake_command"`
	BastionB    string   `json:"bastion_b_binary,omitempty"`
}

type jumpRes struct {
	Name             string    `json:"name"`
	Kex              string    `json:"kex"`
	Cipher           string    `json:"cipher"`
	MAC              string    `json:"mac"`
	TransferSec      []float64 `json:"transfer_s"`
	TransferMedian   float64   `json:"transfer_median_s"`
	MiBps            float64   `json:"transfer_median_mib_per_s"`
	CPUPerGiB        []float64 `json:"cpu_s_per_gib"`
	CPUPerGiBMedian  float64   `json:"cpu_s_per_gib_median"`
	Idle             memSample `json:"idle"`
	TunnelsOpen      memSample `json:"tunnels_open"`
	TunnelsClosed    memSample `json:"tunnels_closed"`
	TunnelOpenSec    float64   `json:"tunnels_open_s"`
	TunnelFailures   int       `json:"tunnel_failures"`
	HandshakeP50ms   float64   `json:"handshake_p50_ms"`
	HandshakeP99ms   float64   `json:"handshake_p99_ms"`
	HandshakeMeanms  float64   `json:"handshake_mean_ms"`
	HandshakeFailure int       `json:"handshake_failures"`
	SSMCPU           []float64 `json:"ssm_cpu_s"`
	SSMCPUMedian     float64   `json:"ssm_cpu_s_median"`
	SSMMiB           float64   `json:"ssm_mib_each_way"`
	SSMFailures      int       `json:"ssm_failures"`
}

type ratios struct {
	Transfer       float64 `json:"transfer_wall_median"`
	CPUPerGiB      float64 `json:"cpu_s_per_gib_median"`
	TunnelsRSS     float64 `json:"tunnels_open_rss"`
	TunnelsPSS     float64 `json:"tunnels_open_pss"`
	IdleRSS        float64 `json:"idle_rss"`
	HandshakeP50   float64 `json:"handshake_p50"`
	HandshakeP99   float64 `json:"handshake_p99"`
	TunnelsOpenSec float64 `json:"tunnels_open_time"`
	SSMCPU         float64 `json:"ssm_cpu_s"`
}

type goal struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Limit float64 `json:"limit"`
	Met   bool    `json:"met"`
}

// jump is one jump host under test.
type jump struct {
	daemon
	alias   string
	ciphers string // the jump connection's Ciphers; "" = the client's default
	addr    string
	hostKey gossh.PublicKey
	cmd     *exec.Cmd
	log     string
	cgfd    int
	res     *jumpRes
}

type bench struct {
	o        options
	dir      string
	sshCfg   string
	signer   gossh.Signer
	echoAddr string
	target   *exec.Cmd
	jumps    []*jump // bastion, openssh, bastion-b: the daemons
	gcm      *jump   // openssh's daemon reached with aes128-gcm
	out      io.Writer
	lastCmd  *exec.Cmd
	extra    []*exec.Cmd
}

func run(ctx context.Context, o options, out io.Writer) (*Results, error) {
	start := time.Now()
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root (sshd)")
	}
	for _, t := range []string{"/usr/sbin/sshd", "ssh", "ssh-keygen", "sh", "head"} {
		if _, err := exec.LookPath(t); err != nil {
			return nil, fmt.Errorf("missing %s", t)
		}
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "bastion-bench-")
	if err != nil {
		return nil, err
	}
	if o.keep {
		fmt.Fprintln(out, "work directory:", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	switch {
	case o.ssmSessions == 0 && o.smoke:
		o.ssmSessions = 5
	case o.ssmSessions == 0:
		o.ssmSessions = 20
	}
	switch {
	case o.ssmSeconds == 0 && o.smoke:
		o.ssmSeconds = 2
	case o.ssmSeconds == 0:
		o.ssmSeconds = 5
	}
	switch {
	case o.ssmRuns == 0 && o.smoke:
		o.ssmRuns = 1
	case o.ssmRuns == 0:
		o.ssmRuns = 3
	}
	b := &bench{o: o, dir: dir, out: out}
	defer b.stop()
	res, err := b.setupAndRun(ctx)
	if res != nil {
		res.Started = start
		res.DurationSec = time.Since(start).Seconds()
		b.print(res)
	}
	return res, err
}

func (b *bench) logf(format string, a ...any) {
	fmt.Fprintf(b.out, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
}

func (b *bench) setupAndRun(ctx context.Context) (*Results, error) {
	o := b.o
	res := &Results{Settings: settings{
		TransferMiB: o.size >> 20, Runs: o.runs, Tunnels: o.tunnels, Handshakes: o.handshakes,
		Command:     fmt.Sprintf("head -c %d /dev/zero | ssh -F CFG -J JUMP target 'cat > /dev/null'", o.size),
		HSCommand:   "ssh -F CFG -W 127.0.0.1:ECHO JUMP </dev/null",
		SSMSessions: o.ssmSessions, SSMSeconds: o.ssmSeconds, SSMRuns: max(o.ssmRuns, 0),
		SSMCommand: fmt.Sprintf("%d x ssh -F CFG -W 127.0.0.1:ECHO JUMP, each fed %d B every %v for %gs, echo read back", o.ssmSessions, ssmFrame, ssmInterval, o.ssmSeconds),
	}}
	res.Host = hostInformation()

	// Keys.
	clientKey, clientPub, err := keygen(b.dir, "client")
	if err != nil {
		return nil, err
	}
	pem, err := os.ReadFile(clientKey)
	if err != nil {
		return nil, err
	}
	if b.signer, err = gossh.ParsePrivateKey(pem); err != nil {
		return nil, err
	}

	// Echo service for tunnels and handshakes.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	go serveEcho(ln)
	b.echoAddr = ln.Addr().String()

	// Target, OpenSSH jump, bastion.
	targetPort, targetHK, err := b.startOpenSSH("target", clientPub, nil, false, -1)
	if err != nil {
		return nil, err
	}
	jumpConf := []string{"AllowTcpForwarding yes", "MaxStartups 2000", "ClientAliveInterval 15", "ClientAliveCountMax 3"}
	res.Settings.OpenSSHConf = jumpConf
	osj := &jump{alias: "jump-openssh", res: &jumpRes{Name: "openssh"}, cgfd: -1}
	osj.name = "openssh"
	bj := &jump{alias: "jump-bastion", res: &jumpRes{Name: "bastion"}, cgfd: -1}
	bj.name = "bastion"
	useCgroup := cgroup2Available()
	if useCgroup {
		for _, j := range []*jump{bj, osj} {
			dir, fd, err := newCgroup(fmt.Sprintf("bastion-bench-%s-%d", j.name, os.Getpid()))
			if err != nil {
				useCgroup = false
				break
			}
			j.cgroup, j.cgfd = dir, fd
		}
	}
	if useCgroup {
		res.Host.CPUMethod = "cgroup v2 cpu.stat usage_usec (one cgroup per jump daemon)"
	} else {
		res.Host.CPUMethod = "procfs: sum of utime+stime+cutime+cstime over the daemon's live process tree (/sys/fs/cgroup is not cgroup2fs)"
		for _, j := range []*jump{bj, osj} {
			if j.cgroup != "" {
				os.Remove(j.cgroup)
			}
			if j.cgfd >= 0 {
				syscall.Close(j.cgfd)
			}
			j.cgroup, j.cgfd = "", -1
		}
	}
	res.Host.MemMethod = "procfs: sum of VmRSS over the daemon's live process tree (/proc/*/status); PSS from smaps_rollup alongside"
	if useCgroup {
		res.Host.MemMethod += "; cgroup memory.current alongside (includes kernel socket memory)"
	}

	port, hk, err := b.startOpenSSH("jump-openssh", clientPub, jumpConf, true, osj.cgfd)
	if err != nil {
		return nil, err
	}
	osj.addr, osj.hostKey = "127.0.0.1:"+strconv.Itoa(port), hk
	osj.cmd = b.lastCmd
	osj.pid = osj.cmd.Process.Pid
	b.jumps = append(b.jumps, bj, osj)
	gcm := *osj
	gcm.alias, gcm.ciphers, gcm.res = "jump-openssh-gcm", "aes128-gcm@openssh.com", &jumpRes{Name: "openssh-gcm"}
	b.gcm = &gcm

	benv, err := b.startBastion(bj, clientPub)
	if err != nil {
		return nil, err
	}
	res.Settings.BastionEnv = benv
	var bb *jump
	if o.bastionB != "" {
		bb = &jump{alias: "jump-bastion-b", res: &jumpRes{Name: "bastion-b"}, cgfd: -1}
		bb.name = "bastion-b"
		bo := *b
		bo.o.bastionBin = o.bastionB
		bo.o.bastionEnv = o.bastionBEnv
		if _, err := bo.startBastion(bb, clientPub); err != nil {
			return nil, err
		}
		b.extra = append(b.extra, bb.cmd)
		b.jumps = append(b.jumps, bb)
		res.Settings.BastionB = o.bastionB
	}

	// Client config with pinned host keys.
	if err := b.clientConfig(targetPort, targetHK); err != nil {
		return nil, err
	}
	for _, j := range b.jumps {
		if err := waitTCP(j.addr, 10*time.Second); err != nil {
			return nil, fmt.Errorf("%s: %w", j.name, err)
		}
	}

	// 4. Idle memory after start (before any connection).
	time.Sleep(time.Second)
	for _, j := range b.jumps {
		j.res.Idle = j.mem()
	}
	b.logf("idle: bastion %.1f MiB RSS, openssh %.1f MiB RSS", bj.res.Idle.RSSMiB, osj.res.Idle.RSSMiB)

	// Negotiated algorithms with the stock client.
	for _, j := range b.flows() {
		if err := b.algorithms(ctx, j); err != nil {
			return nil, fmt.Errorf("%s: %w", j.res.Name, err)
		}
		b.logf("%s: kex %s, cipher %s, mac %s", j.res.Name, j.res.Kex, j.res.Cipher, j.res.MAC)
	}

	// 5. Handshakes, interleaved.
	if err := b.handshakes(ctx); err != nil {
		return res, err
	}
	// 1+2. Transfers, interleaved, warm-up first.
	if err := b.transfers(ctx); err != nil {
		return res, err
	}
	// 6. The SSM-shaped load, interleaved.
	if err := b.ssmLoad(ctx); err != nil {
		return res, err
	}
	// 3. Concurrent idle tunnels, one jump host at a time (bastion first).
	for _, j := range b.jumps {
		if err := b.tunnels(ctx, j); err != nil {
			return res, err
		}
	}

	res.Bastion, res.OpenSSH, res.OpenSSHGCM = bj.res, osj.res, b.gcm.res
	if bb != nil {
		res.BastionB = bb.res
	}
	r := &res.Ratios
	r.Transfer = ratio(bj.res.TransferMedian, osj.res.TransferMedian)
	r.CPUPerGiB = ratio(bj.res.CPUPerGiBMedian, osj.res.CPUPerGiBMedian)
	r.TunnelsRSS = ratio(bj.res.TunnelsOpen.RSSMiB, osj.res.TunnelsOpen.RSSMiB)
	r.TunnelsPSS = ratio(bj.res.TunnelsOpen.PSSMiB, osj.res.TunnelsOpen.PSSMiB)
	r.IdleRSS = ratio(bj.res.Idle.RSSMiB, osj.res.Idle.RSSMiB)
	r.HandshakeP50 = ratio(bj.res.HandshakeP50ms, osj.res.HandshakeP50ms)
	r.HandshakeP99 = ratio(bj.res.HandshakeP99ms, osj.res.HandshakeP99ms)
	r.TunnelsOpenSec = ratio(bj.res.TunnelOpenSec, osj.res.TunnelOpenSec)
	r.SSMCPU = ratio(bj.res.SSMCPUMedian, osj.res.SSMCPUMedian)
	g := &res.RatiosGCM
	g.Transfer = ratio(bj.res.TransferMedian, b.gcm.res.TransferMedian)
	g.CPUPerGiB = ratio(bj.res.CPUPerGiBMedian, b.gcm.res.CPUPerGiBMedian)
	g.SSMCPU = ratio(bj.res.SSMCPUMedian, b.gcm.res.SSMCPUMedian)
	res.Goals = []goal{
		{Name: "transfer wall time ratio <= 1.0", Value: r.Transfer, Limit: 1.0},
		{Name: "jump CPU s/GiB ratio <= 1.0 (goal 0.8)", Value: r.CPUPerGiB, Limit: 1.0},
		{Name: "SSM-shaped load CPU ratio <= 0.6", Value: r.SSMCPU, Limit: 0.6},
		{Name: fmt.Sprintf("bastion RSS with %d tunnels <= 200 MiB", o.tunnels), Value: bj.res.TunnelsOpen.RSSMiB, Limit: 200},
		{Name: "bastion idle RSS <= 20 MiB", Value: bj.res.Idle.RSSMiB, Limit: 20},
		{Name: "handshake p50 ratio <= 1.0", Value: r.HandshakeP50, Limit: 1.0},
	}
	for i := range res.Goals {
		res.Goals[i].Met = res.Goals[i].Value <= res.Goals[i].Limit && res.Goals[i].Value > 0
	}
	return res, nil
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return math.Round(a/b*1000) / 1000
}

func hostInformation() hostInfo {
	h := hostInfo{Cores: runtime.NumCPU(), Go: runtime.Version(),
		ClientNote: "OpenSSH client with default algorithms for transfers and handshakes; x/crypto/ssh client (this process) for the concurrent tunnels"}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				h.CPU = strings.TrimSpace(l[strings.IndexByte(l, ':')+1:])
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		h.Kernel = strings.TrimSpace(string(b))
	}
	if out, err := exec.Command("ssh", "-V").CombinedOutput(); err == nil {
		h.OpenSSH = strings.TrimSpace(string(out))
	}
	return h
}

func keygen(dir, name string) (path, pub string, err error) {
	path = filepath.Join(dir, name)
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", path).CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("ssh-keygen: %v: %s", err, out)
	}
	p, err := os.ReadFile(path + ".pub")
	return path, strings.TrimSpace(string(p)), err
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func waitTCP(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening: %w", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func serveEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
			c.(*net.TCPConn).CloseWrite()
		}()
	}
}

// startOpenSSH runs sshd -D on loopback. A jump gets its own cgroup when
// cgroup v2 is in use.
func (b *bench) startOpenSSH(name, authorized string, extra []string, isJump bool, cgfd int) (int, gossh.PublicKey, error) {
	d := filepath.Join(b.dir, name)
	os.MkdirAll(d, 0o700)
	hkPath, hkPub, err := keygen(d, "host")
	if err != nil {
		return 0, nil, err
	}
	ak := filepath.Join(d, "authorized_keys")
	if err := os.WriteFile(ak, []byte(authorized+"\n"), 0o600); err != nil {
		return 0, nil, err
	}
	// The port is picked before sshd binds it, so another process can take
	// it in between (the smoke test runs beside the rest of the suite):
	// sshd then exits, and another port is tried. "Server listening" (at
	// sshd's default LogLevel INFO) proves that sshd itself holds the port.
	var port int
	var cmd *exec.Cmd
	for attempt := 1; ; attempt++ {
		if port, err = freePort(); err != nil {
			return 0, nil, err
		}
		cfg := fmt.Sprintf("Port %d\nListenAddress 127.0.0.1\nHostKey %s\nAuthorizedKeysFile %s\nPidFile none\nUsePAM no\nStrictModes no\n"+
			"PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n%s\n",
			port, hkPath, ak, strings.Join(extra, "\n"))
		cfgPath := filepath.Join(d, "sshd_config")
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			return 0, nil, err
		}
		logPath := filepath.Join(d, "sshd.log")
		logf, err := os.Create(logPath)
		if err != nil {
			return 0, nil, err
		}
		cmd = exec.Command("/usr/sbin/sshd", "-D", "-e", "-f", cfgPath)
		cmd.Stdout, cmd.Stderr = logf, logf
		if cgfd >= 0 {
			cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgfd}
		}
		err = cmd.Start()
		logf.Close()
		if err != nil {
			return 0, nil, err
		}
		listening, err := waitSSHD(cmd, logPath, port, 10*time.Second)
		if listening {
			break
		}
		log, _ := os.ReadFile(logPath)
		if err != nil || attempt == 5 || !strings.Contains(string(log), "Address already in use") {
			return 0, nil, fmt.Errorf("sshd %s did not listen on port %d (%v):\n%s", name, port, err, log)
		}
	}
	b.lastCmd = cmd
	if !isJump {
		b.target = cmd
	}
	pk, _, _, _, err := gossh.ParseAuthorizedKey([]byte(hkPub))
	if err != nil {
		return 0, nil, err
	}
	return port, pk, nil
}

// waitSSHD waits for sshd's "Server listening" line for port in its log. It
// returns false, with the exit reaped, when sshd exits first (it stays a
// zombie until then: nothing else waits for it); an error when neither
// happens in time (sshd is then killed).
func waitSSHD(cmd *exec.Cmd, logPath string, port int, timeout time.Duration) (bool, error) {
	want := fmt.Sprintf("Server listening on 127.0.0.1 port %d.", port)
	deadline := time.Now().Add(timeout)
	for {
		if log, _ := os.ReadFile(logPath); strings.Contains(string(log), want) {
			return true, nil
		}
		if st, err := procfs.ReadStat(cmd.Process.Pid); err != nil || !st.Alive() {
			cmd.Wait()
			return false, nil
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			return false, fmt.Errorf("no %q within %v", want, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
