// Command fakessm runs the fake SSM API as its own process, for tests that
// drive the product from outside (e.g. in Docker). Steer it over /_fake/.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/bastion-dev/bastion/test/fakessm"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address host:port")
	region := flag.String("region", fakessm.DefaultRegion, "region accepted in SigV4 scopes")
	tier := flag.String("activation-tier", "advanced", "initial /ssm/managed-instance/activation-tier value")
	window := flag.Duration("online-window", fakessm.DefaultOnlineWindow, "how long after a ping an instance stays Online")
	flag.Parse()

	srv := fakessm.New(fakessm.Options{Region: *region, ActivationTier: *tier, OnlineWindow: *window})
	if err := srv.ServeUntilSignal(*addr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
