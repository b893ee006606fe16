package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bastion-dev/bastion/internal/procfs"
)

// A jump daemon's resource use is measured over its whole process tree:
// OpenSSH forks (and re-executes) per connection, bastion is one process.
//
// CPU: with cgroup v2 mounted at /sys/fs/cgroup each daemon runs in its own
// cgroup and cpu.stat usage_usec is read. Otherwise (cgroup v1 or hybrid
// hosts, containers) the live tree's utime+stime+cutime+cstime from
// /proc/<pid>/stat are summed: a reaped process's time sits in exactly one
// live ancestor's cutime/cstime, so the sum counts all of it once.
//
// Memory: always the sum of VmRSS over the live tree (/proc/<pid>/status);
// PSS (/proc/<pid>/smaps_rollup) is reported next to it because forked
// OpenSSH children share pages that an RSS sum counts once per process.

var clkTck = 100.0 // USER_HZ; 100 on every Linux ABI Go supports

// tree returns root and its descendants as /proc lists them.
func tree(root int) []procfs.Stat {
	all, _ := procfs.All()
	children := map[int][]procfs.Stat{}
	var rootStat *procfs.Stat
	for i, st := range all {
		if st.PID == root {
			rootStat = &all[i]
		}
		children[st.PPID] = append(children[st.PPID], st)
	}
	if rootStat == nil {
		return nil
	}
	out := []procfs.Stat{*rootStat}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i].PID]...)
	}
	return out
}

// daemon is one measured jump host.
type daemon struct {
	name   string
	pid    int
	cgroup string // cgroup v2 directory, "" = procfs
}

func (d *daemon) cpuSeconds() float64 {
	if d.cgroup != "" {
		if v, err := cgroupKey(filepath.Join(d.cgroup, "cpu.stat"), "usage_usec"); err == nil {
			return float64(v) / 1e6
		}
	}
	var ticks uint64
	for _, p := range tree(d.pid) {
		ticks += p.UTime + p.STime + p.CUTime + p.CSTime
	}
	return float64(ticks) / clkTck
}

type memSample struct {
	Procs     int     `json:"procs"`
	RSSMiB    float64 `json:"rss_mib"`
	PSSMiB    float64 `json:"pss_mib"`
	CgroupMiB float64 `json:"cgroup_memory_current_mib,omitempty"`
}

func (d *daemon) mem() memSample {
	var m memSample
	for _, p := range tree(d.pid) {
		m.Procs++
		m.RSSMiB += float64(statusKB(p.PID, "VmRSS:")) / 1024
		m.PSSMiB += float64(rollupKB(p.PID, "Pss:")) / 1024
	}
	if d.cgroup != "" {
		if b, err := os.ReadFile(filepath.Join(d.cgroup, "memory.current")); err == nil {
			v, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
			m.CgroupMiB = float64(v) / (1 << 20)
		}
	}
	return m
}

// procs is the number of live processes in the tree.
func (d *daemon) procs() int { return len(tree(d.pid)) }

// settle waits until the tree has at most n processes (OpenSSH's
// per-connection children have exited and been reaped).
func (d *daemon) settle(n int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for d.procs() > n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}

func statusKB(pid int, key string) uint64 { return kvKB(fmt.Sprintf("/proc/%d/status", pid), key) }
func rollupKB(pid int, key string) uint64 {
	return kvKB(fmt.Sprintf("/proc/%d/smaps_rollup", pid), key)
}

func kvKB(path, key string) uint64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, key) {
			fs := strings.Fields(line[len(key):])
			if len(fs) > 0 {
				v, _ := strconv.ParseUint(fs[0], 10, 64)
				return v
			}
		}
	}
	return 0
}

func cgroupKey(path, key string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == key {
			return strconv.ParseUint(f[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("%s: no %s", path, key)
}

// cgroup2Available reports whether /sys/fs/cgroup is a cgroup v2 mount.
func cgroup2Available() bool {
	var st syscall.Statfs_t
	if err := syscall.Statfs("/sys/fs/cgroup", &st); err != nil {
		return false
	}
	return st.Type == 0x63677270 // CGROUP2_SUPER_MAGIC
}

// newCgroup makes /sys/fs/cgroup/<name> with cpu and memory accounting and
// returns its directory and an open fd for SysProcAttr.CgroupFD.
func newCgroup(name string) (string, int, error) {
	_ = os.WriteFile("/sys/fs/cgroup/cgroup.subtree_control", []byte("+cpu +memory"), 0)
	dir := filepath.Join("/sys/fs/cgroup", name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", -1, err
	}
	fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		os.Remove(dir)
		return "", -1, err
	}
	if _, err := cgroupKey(filepath.Join(dir, "cpu.stat"), "usage_usec"); err != nil {
		syscall.Close(fd)
		os.Remove(dir)
		return "", -1, err
	}
	return dir, fd, nil
}
