package main

import (
	"fmt"
	"os"
	"sync"
	"time"
)

// logger mimics the agent's seelog setup: console (stdout) plus
// amazon-ssm-agent.log, and errors.log for ERROR lines, all with the format
// "%Date(2006-01-02 15:04:05.0000) %LEVEL %Msg%n".
type logger struct {
	mu     sync.Mutex
	prefix string // e.g. "[amazon-ssm-agent] ", like the real context logger
	file   *os.File
	errs   *os.File
}

func newLogger() *logger {
	// The real logger announces itself on stdout with plain lines.
	fmt.Println("Initializing new seelog logger")
	l := &logger{}
	if err := os.MkdirAll(logDir, 0o755); err == nil {
		l.file, _ = os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		l.errs, _ = os.OpenFile(errorLogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	}
	fmt.Println("New Seelog Logger Creation Complete")
	return l
}

// with returns a logger sharing the outputs, with a context prefix.
func (l *logger) with(prefix string) *logger {
	return &logger{prefix: l.prefix + prefix + " ", file: l.file, errs: l.errs}
}

func (l *logger) write(level, msg string) {
	line := fmt.Sprintf("%s %s %s%s\n", time.Now().Format("2006-01-02 15:04:05.0000"), level, l.prefix, msg)
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = os.Stdout.WriteString(line)
	if l.file != nil {
		_, _ = l.file.WriteString(line)
	}
	if level == "ERROR" && l.errs != nil {
		_, _ = l.errs.WriteString(line)
	}
}

func (l *logger) Infof(format string, args ...any)  { l.write("INFO", fmt.Sprintf(format, args...)) }
func (l *logger) Warnf(format string, args ...any)  { l.write("WARN", fmt.Sprintf(format, args...)) }
func (l *logger) Errorf(format string, args ...any) { l.write("ERROR", fmt.Sprintf(format, args...)) }

func (l *logger) Close() {
	if l.file != nil {
		_ = l.file.Close()
	}
	if l.errs != nil {
		_ = l.errs.Close()
	}
}
