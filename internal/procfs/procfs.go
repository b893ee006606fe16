// Package procfs reads process facts from Linux's /proc: what the
// supervisor's sweep, the healthcheck and the tests know about processes.
// Each read is of one file at one moment; /proc is never an atomic
// snapshot, so callers treat a process that is gone as gone, not as an
// error.
package procfs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
)

// Stat is what bastion uses of /proc/<pid>/stat (proc(5)). Times are in
// clock ticks (USER_HZ).
type Stat struct {
	PID   int    // as the /proc it was read from numbers it (its PID namespace)
	Comm  string // command name, at most CommLen bytes
	State byte   // R, S, D, T, t, Z, X, I…
	PPID  int
	PGRP  int

	UTime, STime   uint64 // this process's CPU time
	CUTime, CSTime uint64 // its reaped children's CPU time
	StartTime      uint64 // after boot: with PID it names one process, across pid reuse
}

// CommLen is how much of a command name the kernel keeps (TASK_COMM_LEN-1).
const CommLen = 15

// Comm returns name as /proc shows it: cut to CommLen bytes.
func Comm(name string) string { return name[:min(len(name), CommLen)] }

// Alive reports whether the process still runs: not a zombie (Z) and not
// being torn down (X).
func (s Stat) Alive() bool { return s.State != 'Z' && s.State != 'X' }

// ParseStat parses the content of /proc/<pid>/stat. The command name may
// contain spaces, parentheses and newlines, so it runs from the first "("
// to the last ")" and the numbered fields are counted after that.
func ParseStat(b []byte) (Stat, error) {
	open := bytes.Index(b, []byte(" ("))
	end := bytes.LastIndexByte(b, ')')
	if open <= 0 || end < open+2 {
		return Stat{}, errors.New("procfs: stat: no \"pid (comm)\"")
	}
	pid, err := strconv.Atoi(string(b[:open]))
	if err != nil || pid <= 0 {
		return Stat{}, fmt.Errorf("procfs: stat: pid %q", b[:open])
	}
	// f[0] is field 3 (state) of proc(5); starttime is field 22.
	f := bytes.Fields(b[end+1:])
	if len(f) < 20 || b[end+1] != ' ' {
		return Stat{}, fmt.Errorf("procfs: stat of %d: too few fields after the command name", pid)
	}
	if c := f[0][0]; len(f[0]) != 1 || !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z') {
		return Stat{}, fmt.Errorf("procfs: stat of %d: state %q", pid, f[0])
	}
	s := Stat{PID: pid, Comm: string(b[open+2 : end]), State: f[0][0]}
	ints := []struct {
		field int
		dst   *int
	}{{4, &s.PPID}, {5, &s.PGRP}}
	for _, n := range ints {
		v, err := strconv.Atoi(string(f[n.field-3]))
		if err != nil {
			return Stat{}, fmt.Errorf("procfs: stat of %d: field %d: %w", pid, n.field, err)
		}
		*n.dst = v
	}
	uints := []struct {
		field int
		dst   *uint64
	}{{14, &s.UTime}, {15, &s.STime}, {16, &s.CUTime}, {17, &s.CSTime}, {22, &s.StartTime}}
	for _, n := range uints {
		v, err := strconv.ParseUint(string(f[n.field-3]), 10, 64)
		if err != nil {
			return Stat{}, fmt.Errorf("procfs: stat of %d: field %d: %w", pid, n.field, err)
		}
		*n.dst = v
	}
	return s, nil
}

// ReadStat reads and parses /proc/<pid>/stat. A process that has gone
// gives an error wrapping fs.ErrNotExist (or ESRCH mid-read).
func ReadStat(pid int) (Stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return Stat{}, err
	}
	return ParseStat(b)
}

// PIDs lists the process ids in /proc.
func PIDs() ([]int, error) { return pids("/proc") }

// pids lists the process ids under root, a proc file system.
func pids(root string) ([]int, error) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("procfs: list %s: %w", root, err)
	}
	pids := make([]int, 0, len(entries))
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// All reads the stat of every process in /proc. Processes that exit while
// it runs are left out.
func All() ([]Stat, error) {
	pids, err := PIDs()
	if err != nil {
		return nil, err
	}
	out := make([]Stat, 0, len(pids))
	for _, pid := range pids {
		if s, err := ReadStat(pid); err == nil {
			out = append(out, s)
		}
	}
	return out, nil
}
