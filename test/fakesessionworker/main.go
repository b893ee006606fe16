// Command ssm-session-worker stands in for the SSM agent's per-session
// process in tests. The agent starts the real one from its own directory as
// exactly [<dir>/ssm-session-worker, <sessionId>]; for AWS-StartSSHSession
// its Port plugin dials localhost:<portNumber> once and relays the session's
// bytes. This one is started the same way (the harness builds it beside the
// fake agent), dials localhost:$FAKE_SESSION_PORT (host $FAKE_SESSION_HOST,
// default "localhost", which may resolve to ::1 or 127.0.0.1 as on the
// agent) and relays its stdin and stdout, so the OpenSSH client can use it
// as its ProxyCommand: client → this worker → the bastion, as client → SSM
// → worker → localhost:22 in production.
package main

import (
	"fmt"
	"io"
	"net"
	"os"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: ssm-session-worker SESSION_ID")
		os.Exit(2)
	}
	host := os.Getenv("FAKE_SESSION_HOST")
	if host == "" {
		host = "localhost"
	}
	c, err := net.Dial("tcp", net.JoinHostPort(host, os.Getenv("FAKE_SESSION_PORT")))
	if err != nil {
		fmt.Fprintln(os.Stderr, "ssm-session-worker:", err)
		os.Exit(1)
	}
	go func() {
		io.Copy(c, os.Stdin)
		c.(*net.TCPConn).CloseWrite()
	}()
	// The session ends when the connection does, as the real worker's
	// does, whether or not stdin has ended.
	io.Copy(os.Stdout, c)
}
