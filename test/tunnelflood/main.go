// Command tunnelflood is the client side of the memory tests: it opens
// many SSH connections with many direct-tcpip tunnels each into a
// destination that never reads, and writes into every tunnel so that each
// fills its channel window on the server. It is built without the race
// detector, so it can push the data fast.
//
// It prints one JSON line when every tunnel is open or refused
// ({"opened":N,"refused":M,"reasons":{...}}), one when every opened tunnel
// has had at least -fill bytes accepted ({"filled":N}), and then holds all
// of it until its standard input closes.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

func main() {
	addr := flag.String("addr", "", "bastion host:port")
	user := flag.String("user", "root", "user name")
	keyPath := flag.String("key", "", "private key file")
	hostKey := flag.String("hostkey", "", "bastion's public host key (authorized_keys format)")
	dest := flag.String("dest", "", "tunnel destination host:port")
	conns := flag.Int("conns", 4, "SSH connections")
	tunnels := flag.Int("tunnels", 100, "tunnels per connection")
	fill := flag.Int("fill", 2<<20, "bytes each tunnel must have accepted before reporting filled")
	flag.Parse()
	if err := run(*addr, *user, *keyPath, *hostKey, *dest, *conns, *tunnels, *fill); err != nil {
		fmt.Fprintln(os.Stderr, "tunnelflood:", err)
		os.Exit(1)
	}
}

func run(addr, user, keyPath, hostKeyText, dest string, nconns, ntunnels, fill int) error {
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return err
	}
	signer, err := gossh.ParsePrivateKey(keyPEM)
	if err != nil {
		return err
	}
	hostKey, _, _, _, err := gossh.ParseAuthorizedKey([]byte(hostKeyText))
	if err != nil {
		return fmt.Errorf("host key: %w", err)
	}
	cfg := &gossh.ClientConfig{
		User:            user,
		Auth:            []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: gossh.FixedHostKey(hostKey),
		Timeout:         30 * time.Second,
	}
	var clients []*gossh.Client
	for i := 0; i < nconns; i++ {
		c, err := gossh.Dial("tcp", addr, cfg)
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		clients = append(clients, c)
	}
	var channels []net.Conn
	reasons := map[string]int{}
	refused := 0
	for _, c := range clients {
		for i := 0; i < ntunnels; i++ {
			ch, err := c.Dial("tcp", dest)
			if err != nil {
				refused++
				var oce *gossh.OpenChannelError
				if errors.As(err, &oce) {
					reasons[oce.Message]++
				} else {
					reasons[err.Error()]++
				}
				continue
			}
			channels = append(channels, ch)
		}
	}
	report(map[string]any{"opened": len(channels), "refused": refused, "reasons": reasons})

	// Fill: each channel accepts data until the server's window for it is
	// spent; a write of fill bytes returns once the server has taken them.
	var wg sync.WaitGroup
	chunk := make([]byte, 32<<10)
	for _, ch := range channels {
		wg.Add(1)
		go func(ch net.Conn) {
			defer wg.Done()
			for sent := 0; sent < fill; sent += len(chunk) {
				if _, err := ch.Write(chunk); err != nil {
					return
				}
			}
		}(ch)
	}
	wg.Wait()
	report(map[string]any{"filled": len(channels)})
	// Keep writing past the window, so nothing the server holds drains.
	for _, ch := range channels {
		go func(ch net.Conn) { io.Copy(ch, zeros{}) }(ch)
	}
	io.Copy(io.Discard, os.Stdin)
	for _, c := range clients {
		c.Close()
	}
	return nil
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func report(v map[string]any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}
