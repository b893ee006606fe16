package procfs

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// line is a /proc/<pid>/stat line as the kernel writes it (proc(5), 52
// fields) with the fields bastion reads set.
func line(pid int, comm string, state byte, ppid, pgrp int, utime, stime, cutime, cstime, start uint64) string {
	return fmt.Sprintf("%d (%s) %c %d %d %d 0 -1 4194560 97 0 0 0 %d %d %d %d 20 0 1 0 %d 2363392 220 "+
		"18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
		pid, comm, state, ppid, pgrp, pgrp, utime, stime, cutime, cstime, start)
}

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     Stat
		err      bool
	}{
		{name: "plain", in: line(4242, "sleep", 'S', 17, 4242, 1, 2, 3, 4, 987654),
			want: Stat{PID: 4242, Comm: "sleep", State: 'S', PPID: 17, PGRP: 4242, UTime: 1, STime: 2, CUTime: 3, CSTime: 4, StartTime: 987654}},
		{name: "spaces and parentheses in the name", in: line(7, "a) b (c", 'R', 1, 7, 0, 0, 0, 0, 5),
			want: Stat{PID: 7, Comm: "a) b (c", State: 'R', PPID: 1, PGRP: 7, StartTime: 5}},
		{name: "a name that looks like fields", in: line(9, ") Z 1 1 1 1", 'Z', 1, 9, 0, 0, 0, 0, 6),
			want: Stat{PID: 9, Comm: ") Z 1 1 1 1", State: 'Z', PPID: 1, PGRP: 9, StartTime: 6}},
		{name: "newline in the name", in: line(3, "x\ny", 'T', 0, 0, 0, 0, 0, 0, 1),
			want: Stat{PID: 3, Comm: "x\ny", State: 'T', StartTime: 1}},
		{name: "empty name", in: line(3, "", 'S', 2, 3, 0, 0, 0, 0, 1),
			want: Stat{PID: 3, State: 'S', PPID: 2, PGRP: 3, StartTime: 1}},
		{name: "PID 1 with parent 0", in: line(1, "bastion", 'S', 0, 1, 10, 20, 30, 40, 50),
			want: Stat{PID: 1, Comm: "bastion", State: 'S', PGRP: 1, UTime: 10, STime: 20, CUTime: 30, CSTime: 40, StartTime: 50}},
		{name: "empty", in: "", err: true},
		{name: "no name", in: "12 S 1 1 1", err: true},
		{name: "unclosed name", in: "12 (sleep S 1 1 1", err: true},
		{name: "short", in: "1 (x) S 0", err: true},
		{name: "pid not a number", in: strings.Replace(line(1, "x", 'S', 0, 1, 0, 0, 0, 0, 1), "1 (", "one (", 1), err: true},
		{name: "pid zero", in: line(0, "x", 'S', 0, 1, 0, 0, 0, 0, 1), err: true},
		{name: "state two letters", in: strings.Replace(line(1, "x", 'S', 0, 1, 0, 0, 0, 0, 1), ") S ", ") SS ", 1), err: true},
		{name: "ppid not a number", in: strings.Replace(line(1, "x", 'S', 0, 1, 0, 0, 0, 0, 1), ") S 0 ", ") S x ", 1), err: true},
		{name: "negative start time", in: strings.Replace(line(1, "x", 'S', 0, 1, 0, 0, 0, 0, 77), " 77 ", " -77 ", 1), err: true},
		{name: "state not a letter", in: line(1, "x", '?', 0, 1, 0, 0, 0, 0, 1), err: true},
		{name: "no space after the name", in: strings.Replace(line(1, "x", 'S', 0, 1, 0, 0, 0, 0, 1), "(x) ", "(x)\t", 1), err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseStat([]byte(tc.in))
			if tc.err {
				if err == nil {
					t.Fatalf("ParseStat(%q) = %+v, want an error", tc.in, got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseStat(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestReadStatSelf(t *testing.T) {
	s, err := ReadStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.PID != os.Getpid() || s.PPID != os.Getppid() || s.StartTime == 0 || !s.Alive() || s.Comm != Comm(testBinaryName(t)) {
		t.Fatalf("ReadStat(self) = %+v", s)
	}
	if _, err := ReadStat(1 << 30); !os.IsNotExist(err) {
		t.Fatalf("ReadStat of a pid that does not exist: %v", err)
	}
	all, err := All()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range all {
		found = found || p.PID == s.PID && p.StartTime == s.StartTime
	}
	if !found {
		t.Fatalf("All (%d processes) lacks this one", len(all))
	}
}

func testBinaryName(t *testing.T) string {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe[strings.LastIndexByte(exe, '/')+1:]
}

func TestComm(t *testing.T) {
	for in, want := range map[string]string{
		"":                     "",
		"sleep":                "sleep",
		"amazon-ssm-agen":      "amazon-ssm-agen",
		"amazon-ssm-agent":     "amazon-ssm-agen",
		"ssm-session-worker":   "ssm-session-wor",
		"/usr/bin/amazon-ssm-": "/usr/bin/amazon",
	} {
		if got := Comm(in); got != want {
			t.Errorf("Comm(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzParseStat: the stat line of any process is untrusted (its command
// name is whatever the process set with prctl or exec). Parsing never
// panics, the name is exactly what lies between the first " (" and the last
// ")", and what parses writes back to a line that parses to the same.
func FuzzParseStat(f *testing.F) {
	f.Add([]byte(line(4242, "sleep", 'S', 17, 4242, 1, 2, 3, 4, 987654)))
	f.Add([]byte(line(7, "a) b (c", 'R', 1, 7, 0, 0, 0, 0, 5)))
	f.Add([]byte(line(1, ") Z 1 1 1 1", 'Z', 0, 1, 0, 0, 0, 0, 6)))
	f.Add([]byte("1 (x) S 0"))
	f.Add([]byte("12 (sleep S 1 1 1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseStat(b)
		if err != nil {
			return
		}
		open, end := strings.Index(string(b), " ("), strings.LastIndexByte(string(b), ')')
		if s.Comm != string(b[open+2:end]) || s.PID <= 0 {
			t.Fatalf("ParseStat(%q) = %+v", b, s)
		}
		again, err := ParseStat([]byte(line(s.PID, s.Comm, s.State, s.PPID, s.PGRP, s.UTime, s.STime, s.CUTime, s.CSTime, s.StartTime)))
		if err != nil || again != s {
			t.Fatalf("ParseStat(%q) = %+v; written back and parsed: %+v, %v", b, s, again, err)
		}
	})
}
