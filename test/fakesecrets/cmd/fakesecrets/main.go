// Command fakesecrets runs the fake Secrets Manager API as its own process,
// for tests that drive the product from outside (e.g. in Docker). Steer it
// over /_fake/ (POST /_fake/secret, /_fake/put, /_fake/fail, /_fake/hang).
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/bastion-dev/bastion/test/fakesecrets"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address host:port")
	region := flag.String("region", fakesecrets.DefaultRegion, "region accepted in SigV4 scopes and written in ARNs")
	flag.Parse()

	srv := fakesecrets.New(fakesecrets.Options{Region: *region})
	if err := srv.StartAddr(*addr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("listening on %s\n", srv.URL())

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	srv.Close()
}
