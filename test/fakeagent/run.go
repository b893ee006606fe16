package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/bastion-dev/bastion/test/fakessm"
)

// run is the long-running mode (no flags). Like the real agent it exits 0
// both after a stop signal and when start-up fails.
func run(root *logger) int {
	m := modes()
	// Set up signal handling first so a TERM during start-up is not lost.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, os.Interrupt)

	root.Infof("Proxy environment variables:")
	for _, k := range []string{"https_proxy", "http_proxy", "no_proxy"} {
		root.Infof("%s: %s", k, os.Getenv(k))
	}
	cfg, err := loadConfig()
	if err != nil {
		root.Errorf("Error occurred when starting amazon-ssm-agent: app config could not be loaded - %v", err)
		return 0
	}
	id, reg, containerIdentity, err := selectIdentity(root, cfg)
	if err != nil {
		root.Errorf("failed to get identity: %v", err)
		root.Errorf("Error occurred when starting amazon-ssm-agent: failed to get identity: %v", err)
		return 0
	}
	log := root.with("[amazon-ssm-agent]")
	log.Infof("amazon-ssm-agent - v%s", agentVersion)
	log.Infof("OS: %s, Arch: %s", runtime.GOOS, runtime.GOARCH)
	log.Infof("Starting Core Agent")

	ctx, stopPings := context.WithCancel(context.Background())
	defer stopPings()
	_, hang := m["hang"]
	if !containerIdentity && !hang {
		go pingLoop(ctx, log, cfg, id, reg)
	}
	workers := startWorker(log)
	if v, ok := m["orphans"]; ok {
		makeOrphans(log, v)
	}

	if v, ok := m["crash-after"]; ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			d = time.Second
		}
		time.AfterFunc(d, func() {
			log.Errorf("Core Agent crashed with message fake crash (FAKE_AGENT_MODE=crash-after=%s)!", v)
			os.Exit(1) // workers are left behind, as after a real crash
		})
	}

	for s := range sigs {
		if _, ok := m["ignore-sigterm"]; ok {
			continue // only SIGKILL stops this one
		}
		root.Infof("amazon-ssm-agent got signal:%v value:%v", s, s)
		break
	}
	stopPings()
	stop(log, workers)
	return 0
}

// selectIdentity walks Identity.ConsumptionOrder like the agent's selector.
// Only OnPrem can succeed here (EC2 has no IMDS; CustomIdentity is unset).
func selectIdentity(log *logger, cfg agentConfig) (id, region string, container bool, err error) {
	order := cfg.Identity.ConsumptionOrder
	if cfg.Agent.ContainerMode && equal(order, defaultConsumptionOrder) {
		if os.Getenv("ECS_CONTAINER_METADATA_URI_V4") == "" {
			return "", "", false, fmt.Errorf("failed to get identity from ECS metadata")
		}
		log.Infof("Agent will take identity from ECS")
		return "", "", true, nil
	}
	for _, kind := range order {
		switch kind {
		case "OnPrem", "EC2", "CustomIdentity", "ECS":
		default:
			log.Warnf("Identity type '%s' does not exist", kind)
			continue
		}
		log.Infof("Checking if agent identity type %s can be assumed", kind)
		if kind != "OnPrem" {
			continue
		}
		v := readVault()
		if v.InstanceID == "" {
			continue
		}
		region := v.Region
		if cfg.Agent.Region != "" {
			region = cfg.Agent.Region
		}
		log.Infof("Agent will take identity from %s", kind)
		return v.InstanceID, region, false, nil
	}
	log.Errorf("Agent failed to assume any identity")
	return "", "", false, fmt.Errorf("failed to find agent identity")
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// pingLoop calls UpdateInstanceInformation at start and then every interval,
// signed as the managed instance.
func pingLoop(ctx context.Context, log *logger, cfg agentConfig, id, region string) {
	interval := envDuration("FAKE_AGENT_PING_INTERVAL", 5*time.Minute)
	if interval <= 0 {
		interval = 5 * time.Minute
	}
	client := &ssmClient{
		endpoint: endpointURL(cfg, region), region: region,
		creds: &aws.Credentials{AccessKeyID: id, SecretAccessKey: fakessm.AgentSecret(id), Source: "fakeagent"},
		http:  &http.Client{Timeout: 30 * time.Second},
	}
	host, _ := os.Hostname()
	name, version := platform()
	in := map[string]string{
		"InstanceId": id, "AgentName": "amazon-ssm-agent", "AgentVersion": agentVersion, "AgentStatus": "Active",
		"PlatformType": "Linux", "PlatformName": name, "PlatformVersion": version, "IPAddress": ipAddress(), "ComputerName": host,
	}
	hlog := log.with("[HealthCheck]")
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := client.call(ctx, "UpdateInstanceInformation", in, nil); err != nil {
			if ctx.Err() != nil {
				return
			}
			hlog.Errorf("error when calling AWS APIs. error details - %v", err)
		} else {
			hlog.Infof("HealthCheck reporting agent health.")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func platform() (name, version string) {
	name, version = "Linux", ""
	raw, err := os.ReadFile("/etc/os-release")
	if err != nil {
		return name, version
	}
	for _, line := range splitLines(string(raw)) {
		k, v, ok := cut(line, "=")
		if !ok {
			continue
		}
		v = trimQuotes(v)
		switch k {
		case "NAME":
			name = v
		case "VERSION_ID":
			version = v
		}
	}
	return name, version
}

func ipAddress() string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return ""
	}
	var ips []string
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			ips = append(ips, n.IP.String())
		}
	}
	sort.Strings(ips)
	if len(ips) == 0 {
		return ""
	}
	return ips[0]
}

// worker is a spawned ssm-agent-worker.
type worker struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// startWorker re-executes this binary as ssm-agent-worker in its own process
// group (the real agent does this so group kills by systemd spare workers),
// sharing our stdout/stderr.
func startWorker(log *logger) []*worker {
	wlog := log.with("[LongRunningWorkerContainer] [WorkerProvider]")
	self, err := os.Executable()
	if err != nil {
		wlog.Errorf("failed to start worker %s: %v", workerName, err)
		return nil
	}
	wlog.Infof("Worker %s is not running, starting worker process", workerName)
	cmd := &exec.Cmd{
		Path:        self,
		Args:        []string{workerName},
		Env:         os.Environ(),
		Stdout:      os.Stdout,
		Stderr:      os.Stderr,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	if err := cmd.Start(); err != nil {
		wlog.Errorf("failed to start worker %s: %v", workerName, err)
		return nil
	}
	w := &worker{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(w.done) }() // reap it if it ends first
	wlog.Infof("Worker %s (pid:%d) started", workerName, cmd.Process.Pid)
	return []*worker{w}
}

// stop mirrors SSMCoreAgent.Stop + WorkerContainer.Stop: ask workers to end
// over IPC (≤1 s), sleep the hard-stop timeout, kill workers only when our
// parent pid is 0, exit. Total FAKE_AGENT_STOP_DELAY (default 7 s).
func stop(log *logger, workers []*worker) {
	start := time.Now()
	total := envDuration("FAKE_AGENT_STOP_DELAY", 7*time.Second)
	log.Infof("Stopping Core Agent")
	clog := log.with("[LongRunningWorkerContainer]")
	clog.Infof("Receiving stop signal, stop worker monitor")

	ipc := min(time.Second, total)
	if os.Getenv("FAKE_AGENT_WORKER_IGNORES_IPC") == "" {
		for _, w := range workers {
			_ = w.cmd.Process.Signal(syscall.SIGTERM) // stands in for the IPC termination survey
		}
	}
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Add(1)
		go func(w *worker) {
			defer wg.Done()
			select {
			case <-w.done:
				clog.Infof("Received worker termination result, {WorkerName:%s Pid:%d IsTerminating:true}", workerName, w.cmd.Process.Pid)
			case <-time.After(ipc):
			}
		}(w)
	}
	wg.Wait()
	if rest := total - time.Since(start); rest > 0 {
		time.Sleep(rest)
	}
	// Only when the agent's parent is outside its PID namespace (getppid()==0)
	// does the real agent kill its workers itself; under a PID 1 it never does.
	if os.Getppid() == 0 {
		for _, w := range workers {
			_ = w.cmd.Process.Kill()
		}
	}
	log.Infof("Bye.")
}

// runWorker is the ssm-agent-worker process: it idles until told to stop.
func runWorker() int {
	// Handle signals before announcing ourselves, so that whoever waits for
	// the start-up lines can rely on the worker's signal behaviour.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, os.Interrupt)
	log := (&logger{}).with("[ssm-agent-worker]")
	log.Infof("ssm-agent-worker - v%s", agentVersion)
	log.Infof("OS: %s, Arch: %s", runtime.GOOS, runtime.GOARCH)
	_, ignore := modes()["worker-ignores-term"]
	for s := range sigs {
		if ignore {
			continue
		}
		log.Infof("ssm-agent-worker got signal:%v", s)
		break
	}
	log.Infof("Bye.")
	return 0
}

// makeOrphans double-forks n short-lived sleepers (FAKE_AGENT_MODE
// orphans=<n>), as session shells that background jobs do: their parent shell
// exits at once, so the kernel re-parents them to the nearest subreaper or
// the namespace's init, which must reap them.
func makeOrphans(log *logger, v string) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return
	}
	for i := 0; i < n; i++ {
		cmd := exec.Command("/bin/sh", "-c", "sleep 8 </dev/null >/dev/null 2>&1 &")
		if err := cmd.Run(); err != nil {
			log.Errorf("orphan %d: %v", i, err)
		}
	}
	log.Infof("started %d orphaned sleepers", n)
}
