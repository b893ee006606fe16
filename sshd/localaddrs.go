package sshd

import (
	"context"
	"net"
	"net/netip"
	"slices"
)

// interfaceAddrs lists the addresses of this host's network interfaces:
// what a sidecar bound to 0.0.0.0 in the task's network namespace answers
// on. The policy denies them like loopback.
func interfaceAddrs() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range addrs {
		pfx, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := pfx.Addr().Unmap().WithZone("")
		if !slices.Contains(out, ip) {
			out = append(out, ip)
		}
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out, nil
}

// refreshLocalAddrs re-reads the interface addresses and, when they
// changed, puts them in the policy.
func (s *Server) refreshLocalAddrs() {
	addrs, err := interfaceAddrs()
	if err != nil {
		s.log.Warn("reading interface addresses", "error", err.Error())
		return
	}
	for {
		old := s.policy.Load()
		if slices.Equal(old.Local, addrs) {
			return
		}
		p := *old
		p.Local = addrs
		if s.policy.CompareAndSwap(old, &p) {
			strs := make([]string, len(addrs))
			for i, a := range addrs {
				strs[i] = a.String()
			}
			s.log.Info("local addresses denied as destinations", "addresses", strs)
			return
		}
	}
}

// watchLocalAddrs keeps the policy's local addresses current until ctx
// ends: on every address change the kernel reports, where it reports them,
// and otherwise on a timer.
func (s *Server) watchLocalAddrs(ctx context.Context) {
	watchAddrChanges(ctx, s.log, s.refreshLocalAddrs)
}
