// Command fakeagent is a stand-in for amazon-ssm-agent, built by tests as
// `amazon-ssm-agent` because the real agent cannot be installed here.
//
// It has the real CLI surface (single-dash flags parsed by Go's flag
// package: unknown flag → exit 2), prints what the real agent prints (seelog
// lines "2006-01-02 15:04:05.0000 INFO …" mixed with plain lines), uses the
// real fixed paths (/var/lib/amazon/ssm, /etc/amazon/ssm, /var/log/amazon/ssm;
// tests isolate them with a mount namespace), registers with and pings the SSM
// endpoint configured in amazon-ssm-agent.json (Ssm.Endpoint) — in tests the
// in-process fake from test/fakessm — and stops the way the real one does.
//
// Environment knobs (test only; the real agent reads none of them):
//
//	FAKE_AGENT_PING_INTERVAL       ping period in run mode (Go duration, default 5m)
//	FAKE_AGENT_STOP_DELAY          total stop time after SIGTERM/SIGINT (default 7s)
//	FAKE_AGENT_WORKER_IGNORES_IPC  if set, the stop sequence does not reach the worker
//	FAKE_AGENT_MODE                comma list of: crash-after=<dur>, hang,
//	                               ignore-sigterm, refuse-register, register-hang,
//	                               worker-ignores-term, orphans=<n>
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

// Fixed paths of the real agent on Linux.
const (
	dataDir          = "/var/lib/amazon/ssm"
	registrationFile = dataDir + "/registration"
	vaultDir         = dataDir + "/Vault"
	vaultManifest    = vaultDir + "/Manifest"
	vaultStoreDir    = vaultDir + "/Store"
	vaultRegKey      = vaultStoreDir + "/RegistrationKey"
	configFile       = "/etc/amazon/ssm/amazon-ssm-agent.json"
	logDir           = "/var/log/amazon/ssm"
	logFile          = logDir + "/amazon-ssm-agent.log"
	errorLogFile     = logDir + "/errors.log"

	agentVersion = "3.3.987.0"
	workerName   = "ssm-agent-worker"
)

func init() {
	// Workers are this binary re-executed with argv[0] = ssm-agent-worker.
	// Rename the main thread (init runs on it) so /proc/<pid>/comm and ps
	// show the worker's name, as with the real separate binary.
	if filepath.Base(os.Args[0]) == workerName {
		name := []byte(workerName[:15] + "\x00") // comm holds 15 chars
		_, _, _ = syscall.RawSyscall6(syscall.SYS_PRCTL, syscall.PR_SET_NAME,
			uintptr(unsafe.Pointer(&name[0])), 0, 0, 0, 0)
	}
}

var (
	register, disableSimilarityCheck, clear, force, fpFlag, versionFlag bool
	activationCode, activationID, region, role, tags                    string
	similarityThreshold                                                 int
)

func main() {
	if filepath.Base(os.Args[0]) == workerName {
		os.Exit(runWorker())
	}
	reportExecMask()
	reportCredentialVars()
	fs := flag.NewFlagSet(os.Args[0], flag.ExitOnError)
	fs.Usage = flagUsage
	fs.BoolVar(&register, "register", false, "")
	fs.BoolVar(&disableSimilarityCheck, "disableSimilarityCheck", false, "")
	fs.StringVar(&activationCode, "code", "", "")
	fs.StringVar(&activationID, "id", "", "")
	fs.StringVar(&region, "region", "", "")
	fs.StringVar(&role, "role", "", "")
	fs.StringVar(&tags, "tags", "", "")
	fs.BoolVar(&versionFlag, "version", false, "")
	fs.BoolVar(&clear, "clear", false, "")
	fs.BoolVar(&fpFlag, "fingerprint", false, "")
	fs.IntVar(&similarityThreshold, "similarityThreshold", 40, "")
	fs.BoolVar(&force, "y", false, "")
	_ = fs.Parse(os.Args[1:]) // ExitOnError: bad flags exit 2 like the real agent

	if fs.NFlag() == 1 && versionFlag {
		fmt.Println("SSM Agent version: " + agentVersion)
		os.Exit(0)
	}
	log := newLogger()
	if fs.NFlag() > 0 {
		code := 1
		switch {
		case register:
			code = processRegistration(log)
		case fpFlag:
			log.Infof("Fingerprint SimilarityThreshold set to %v", similarityThreshold)
			code = 0
		default:
			flagUsage()
		}
		log.Close()
		os.Exit(code)
	}
	code := run(log)
	log.Close()
	os.Exit(code)
}

func flagUsage() {
	w := os.Stderr
	fmt.Fprintln(w, "\n\nCommand-line Usage:")
	fmt.Fprintln(w, "\t-register\tregister managed instance")
	fmt.Fprintln(w, "\t\t-id                    \tSSM activation ID                                                                          \t(REQUIRED)")
	fmt.Fprintln(w, "\t\t-code                  \tSSM activation code                                                                        \t(REQUIRED)")
	fmt.Fprintln(w, "\t\t-region                \tSSM region                                                                                 \t(REQUIRED)")
	fmt.Fprintln(w, "\t\t-disableSimilarityCheck\tDisable the agent hardware/fingerprint similarity check (similarity threshold is set to -1)\t(OPTIONAL)")
	fmt.Fprintln(w, "\n\t\t-clear\tClears the previously saved SSM registration")
	fmt.Fprintln(w, "\t-fingerprint\tWhether to update the machine fingerprint similarity threshold\t(OPTIONAL)")
	fmt.Fprintln(w, "\t\t-similarityThreshold\tThe new required percentage of matching hardware values (-1 disables hardware check)\t(OPTIONAL)")
	fmt.Fprintln(w, "\n\t-y\tAnswer yes for all questions")
}

// modes parses FAKE_AGENT_MODE into name → value ("" for bare flags).
func modes() map[string]string {
	m := map[string]string{}
	for _, part := range strings.Split(os.Getenv("FAKE_AGENT_MODE"), ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		m[k] = v
	}
	return m
}

func hasMode(name string) bool {
	_, ok := modes()[name]
	return ok
}

func envDuration(name string, def time.Duration) time.Duration {
	if v := os.Getenv(name); v != "" {
		if d, err := time.ParseDuration(v); err == nil && d >= 0 {
			return d
		}
	}
	return def
}

// reportExecMask prints the signal mask and ignored set this process was
// started with (read before any goroutine of ours runs; the runtime only
// unblocks the synchronous signals it needs), so tests can check what the
// supervisor handed over: a Go program's later /proc status shows its own
// runtime's per-thread masks instead.
func reportExecMask() {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return
	}
	var blk, ign string
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "SigBlk:"); ok {
			blk = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(l, "SigIgn:"); ok {
			ign = strings.TrimSpace(v)
		}
	}
	// Descriptors handed over at exec: minus the one reading the list and
	// those the Go runtime opens itself before main (cgroup CPU limits,
	// the netpoller's epoll and eventfd).
	var fds []string
	if d, err := os.Open("/proc/self/fd"); err == nil {
		names, _ := d.Readdirnames(-1)
		self := strconv.Itoa(int(d.Fd()))
		for _, n := range names {
			target, _ := os.Readlink("/proc/self/fd/" + n)
			if n == self || target == "anon_inode:[eventpoll]" || target == "anon_inode:[eventfd]" ||
				strings.HasPrefix(target, "/sys/fs/cgroup/") {
				continue
			}
			fds = append(fds, n)
		}
		d.Close()
	}
	sort.Slice(fds, func(i, j int) bool { a, _ := strconv.Atoi(fds[i]); b, _ := strconv.Atoi(fds[j]); return a < b })
	fmt.Fprintf(os.Stderr, "fake-agent exec state: SigBlk=%s SigIgn=%s fds=%s\n", blk, ign, strings.Join(fds, ","))
}

// credentialVars are the variables through which an AWS SDK (the real
// agent's included) finds credentials other than its own on-prem identity.
var credentialVars = []string{
	"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
	"AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
	"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
	"AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
}

// reportCredentialVars prints the names (never the values) of the AWS
// credential variables this process was started with, so tests can check
// what its parent let through.
func reportCredentialVars() {
	var set []string
	for _, name := range credentialVars {
		if _, ok := os.LookupEnv(name); ok {
			set = append(set, name)
		}
	}
	if len(set) == 0 {
		set = []string{"none"}
	}
	fmt.Fprintf(os.Stderr, "fake-agent credential variables: %s\n", strings.Join(set, ","))
}
