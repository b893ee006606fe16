// Command hashsvc is a tunnel destination for the Docker tests: for every
// TCP connection it reads until EOF and only then answers with the hex
// SHA-256 of what it read, so a matching answer proves the whole stream and
// the client's half-close crossed the bastion. Static, for a FROM scratch
// image.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
)

func main() {
	addr := flag.String("addr", ":9000", "listen address")
	flag.Parse()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("hashsvc listening on %s\n", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		go func() {
			defer c.Close()
			h := sha256.New()
			n, err := io.Copy(h, c)
			fmt.Printf("hashsvc: %d bytes from %s (err %v)\n", n, c.RemoteAddr(), err)
			fmt.Fprintf(c, "%s\n", hex.EncodeToString(h.Sum(nil)))
		}()
	}
}
