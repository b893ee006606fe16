package sshd

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// parseCIDR parses "addr/bits" or a bare address (as a single-host prefix),
// with IPv4-mapped IPv6 unmapped so one rule covers both spellings.
func parseCIDR(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		if p.Addr().Is4In6() {
			bits := p.Bits() - 96
			if bits < 0 {
				return netip.Prefix{}, errors.New("mapped IPv4 prefix shorter than /96")
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), bits)
		}
		return p.Masked(), nil
	}
	a, err := parseIP(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// parseNetwork parses a CIDR the way sshd's addr_pton_cidr reads a match
// pattern (from=, a certificate's source-address): host bits set under the
// mask ("127.0.0.1/8") make it invalid rather than silently widened.
func parseNetwork(s string) (netip.Prefix, error) {
	p, err := parseCIDR(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if raw, err := netip.ParsePrefix(s); err == nil && raw.Addr().Unmap() != p.Addr() {
		return netip.Prefix{}, fmt.Errorf("host bits set (the network would be %s)", p)
	}
	return p, nil
}

// parseIP parses an IP literal the way the C library's resolver does, so the
// policy sees what a connect(2) would reach: dotted quads, IPv6 (with or
// without brackets or zone), and the inet_aton shorthands 127.1, 2130706433,
// 0x7f.1 and 0177.0.0.1. IPv4-mapped IPv6 is unmapped.
func parseIP(s string) (netip.Addr, error) {
	s = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().WithZone(""), nil
	}
	if a, ok := parseInetAton(s); ok {
		return a, nil
	}
	return netip.Addr{}, errors.New("not an IP address")
}

// parseInetAton implements inet_aton(3): one to four parts in decimal, octal
// (leading 0) or hex (0x); the last part fills the remaining bytes.
func parseInetAton(s string) (netip.Addr, bool) {
	if s == "" || strings.HasSuffix(s, ".") {
		return netip.Addr{}, false
	}
	parts := strings.Split(s, ".")
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	vals := make([]uint64, len(parts))
	for i, p := range parts {
		if p == "" {
			return netip.Addr{}, false
		}
		base := 10
		switch {
		case strings.HasPrefix(p, "0x") || strings.HasPrefix(p, "0X"):
			base, p = 16, p[2:]
			if p == "" {
				p = "0"
			}
		case len(p) > 1 && p[0] == '0':
			base, p = 8, p[1:]
		}
		v, err := strconv.ParseUint(p, base, 32)
		if err != nil {
			return netip.Addr{}, false
		}
		vals[i] = v
	}
	var out uint64
	last := len(vals) - 1
	for i := 0; i < last; i++ {
		if vals[i] > 0xff {
			return netip.Addr{}, false
		}
		out |= vals[i] << (24 - 8*i)
	}
	if vals[last] >= 1<<(8*(4-last)) {
		return netip.Addr{}, false
	}
	out |= vals[last]
	return netip.AddrFrom4([4]byte{byte(out >> 24), byte(out >> 16), byte(out >> 8), byte(out)}), true
}

// matchFrom applies a from= pattern list to the client address with the
// semantics of sshd's match_host_and_ip with UseDNS off (the host name is the
// address): any matching negated pattern denies, otherwise any matching
// pattern allows, otherwise deny. Patterns are CIDRs, addresses, or
// wildcards (* and ?) matched against the address text.
func matchFrom(patterns []string, addr netip.Addr) bool {
	addr = addr.Unmap()
	text := addr.String()
	matched := false
	for _, p := range patterns {
		neg := strings.HasPrefix(p, "!")
		p = strings.TrimPrefix(p, "!")
		if !patternMatchesAddr(p, addr, text) {
			continue
		}
		if neg {
			return false
		}
		matched = true
	}
	return matched
}

func patternMatchesAddr(p string, addr netip.Addr, text string) bool {
	if strings.ContainsAny(p, "*?") {
		return wildcardMatch(strings.ToLower(p), strings.ToLower(text))
	}
	if pfx, err := parseCIDR(p); err == nil {
		return pfx.Contains(addr)
	}
	return strings.EqualFold(p, text)
}

// wildcardMatch is sshd's match_pattern: * matches any run, ? one character.
func wildcardMatch(pattern, s string) bool {
	for len(pattern) > 0 {
		switch pattern[0] {
		case '*':
			for len(pattern) > 0 && pattern[0] == '*' {
				pattern = pattern[1:]
			}
			if pattern == "" {
				return true
			}
			for i := 0; i <= len(s); i++ {
				if wildcardMatch(pattern, s[i:]) {
					return true
				}
			}
			return false
		case '?':
			if s == "" {
				return false
			}
		default:
			if s == "" || s[0] != pattern[0] {
				return false
			}
		}
		pattern, s = pattern[1:], s[1:]
	}
	return s == ""
}
