// Command fakesecrets runs the fake Secrets Manager API as its own process,
// for tests that drive the product from outside (e.g. in Docker). Steer it
// over /_fake/ (POST /_fake/secret, /_fake/put, /_fake/fail, /_fake/hang).
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/bastion-dev/bastion/test/fakesecrets"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address host:port")
	region := flag.String("region", fakesecrets.DefaultRegion, "region accepted in SigV4 scopes and written in ARNs")
	flag.Parse()

	srv := fakesecrets.New(fakesecrets.Options{Region: *region})
	if err := srv.ServeUntilSignal(*addr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
