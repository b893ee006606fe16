package sshd

import (
	"net/netip"
	"testing"
)

func TestParseIP(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string // "" = error
	}{
		{name: "dotted quad", in: "127.0.0.1", want: "127.0.0.1"},
		{name: "two parts", in: "127.1", want: "127.0.0.1"},
		{name: "three parts", in: "127.0.1", want: "127.0.0.1"},
		{name: "one decimal part", in: "2130706433", want: "127.0.0.1"},
		{name: "hex first part", in: "0x7f.1", want: "127.0.0.1"},
		{name: "hex upper prefix", in: "0X7F000001", want: "127.0.0.1"},
		{name: "octal first part", in: "0177.0.0.1", want: "127.0.0.1"},
		{name: "one octal part", in: "017700000001", want: "127.0.0.1"},
		{name: "hex every part", in: "0x1.0x2.0x3.0x4", want: "1.2.3.4"},
		{name: "zero", in: "0", want: "0.0.0.0"},
		{name: "max one part", in: "4294967295", want: "255.255.255.255"},
		{name: "max two parts", in: "1.16777215", want: "1.255.255.255"},
		{name: "max three parts", in: "1.2.65535", want: "1.2.255.255"},
		{name: "metadata as one number", in: "2852039166", want: "169.254.169.254"},
		{name: "v6", in: "::1", want: "::1"},
		{name: "v6 brackets", in: "[::1]", want: "::1"},
		{name: "mapped in brackets", in: "[::ffff:127.0.0.1]", want: "127.0.0.1"},
		{name: "mapped hex", in: "::ffff:7f00:1", want: "127.0.0.1"},
		{name: "zone dropped", in: "fe80::1%eth0", want: "fe80::1"},
		{name: "bracketed zone dropped", in: "[fe80::1%25eth0]", want: "fe80::1"},

		{name: "first part too big", in: "256.1", want: ""},
		{name: "last part too big", in: "1.2.3.256", want: ""},
		{name: "two-part tail too big", in: "1.16777216", want: ""},
		{name: "one part too big", in: "4294967296", want: ""},
		{name: "five parts", in: "1.2.3.4.5", want: ""},
		{name: "empty", in: "", want: ""},
		{name: "brackets only", in: "[]", want: ""},
		{name: "name", in: "localhost", want: ""},
		{name: "empty part", in: "1..2", want: ""},
		{name: "trailing dot", in: "1.2.3.", want: ""},
		{name: "leading dot", in: ".1", want: ""},
		{name: "bad octal", in: "08", want: ""},
		{name: "sign", in: "+1", want: ""},
		{name: "negative", in: "-1", want: ""},
		{name: "space", in: " 127.0.0.1", want: ""},
		{name: "underscore", in: "1_000", want: ""},
		{name: "v6 with port", in: "[::1]:22", want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseIP(tt.in)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("parseIP(%q) = %v, want error", tt.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseIP(%q): %v", tt.in, err)
			}
			if got != netip.MustParseAddr(tt.want) {
				t.Errorf("parseIP(%q) = %v, want %v", tt.in, got, tt.want)
			}
			if got.Is4In6() || got.Zone() != "" {
				t.Errorf("parseIP(%q) = %v: mapped or zoned", tt.in, got)
			}
		})
	}
}

func TestParseCIDR(t *testing.T) {
	tests := []struct {
		in   string
		want string // "" = error
	}{
		{"10.1.2.3/8", "10.0.0.0/8"},
		{"10.0.0.1", "10.0.0.1/32"},
		{"127.1", "127.0.0.1/32"},
		{"::1", "::1/128"},
		{"::ffff:10.0.0.0/104", "10.0.0.0/8"},
		{"::ffff:10.0.0.1/128", "10.0.0.1/32"},
		{"::ffff:0:0/96", "0.0.0.0/0"},
		{"::ffff:0:0/95", ""},
		{"10.0.0.0/33", ""},
		{"10.0.0.0/", ""},
		{"db/8", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseCIDR(tt.in)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("parseCIDR(%q) = %v, want error", tt.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseCIDR(%q): %v", tt.in, err)
			}
			if got != netip.MustParsePrefix(tt.want) {
				t.Errorf("parseCIDR(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestMatchFrom(t *testing.T) {
	tests := []struct {
		name     string
		patterns []string
		addr     string
		want     bool
	}{
		{name: "cidr in", patterns: []string{"10.0.0.0/8"}, addr: "10.1.2.3", want: true},
		{name: "cidr out", patterns: []string{"10.0.0.0/8"}, addr: "11.0.0.1", want: false},
		{name: "exact", patterns: []string{"10.0.0.5"}, addr: "10.0.0.5", want: true},
		{name: "exact other", patterns: []string{"10.0.0.5"}, addr: "10.0.0.6", want: false},
		{name: "star", patterns: []string{"10.0.*"}, addr: "10.0.7.1", want: true},
		{name: "star other", patterns: []string{"10.0.*"}, addr: "10.1.0.1", want: false},
		{name: "star is text, not octets", patterns: []string{"10.1*"}, addr: "10.100.0.1", want: true},
		{name: "question", patterns: []string{"10.0.0.?"}, addr: "10.0.0.7", want: true},
		{name: "question one char only", patterns: []string{"10.0.0.?"}, addr: "10.0.0.17", want: false},
		{name: "any", patterns: []string{"*"}, addr: "192.0.2.1", want: true},
		{name: "negated any", patterns: []string{"!*"}, addr: "192.0.2.1", want: false},
		{name: "negation first", patterns: []string{"!10.0.0.5", "10.0.0.0/8"}, addr: "10.0.0.5", want: false},
		{name: "negation first, other address", patterns: []string{"!10.0.0.5", "10.0.0.0/8"}, addr: "10.0.0.6", want: true},
		{name: "negation last still wins", patterns: []string{"10.0.0.0/8", "!10.0.0.5"}, addr: "10.0.0.5", want: false},
		{name: "negated cidr", patterns: []string{"10.0.0.0/8", "!10.9.0.0/16"}, addr: "10.9.1.1", want: false},
		{name: "negated wildcard", patterns: []string{"10.0.0.0/8", "!10.9.*"}, addr: "10.9.1.1", want: false},
		{name: "negation alone admits nobody", patterns: []string{"!10.0.0.5"}, addr: "10.0.0.6", want: false},
		{name: "none", patterns: nil, addr: "10.0.0.1", want: false},
		{name: "v6 cidr", patterns: []string{"2001:db8::/32"}, addr: "2001:db8::1", want: true},
		{name: "v6 cidr out", patterns: []string{"2001:db8::/32"}, addr: "2001:db9::1", want: false},
		{name: "v6 exact case-insensitive", patterns: []string{"2001:DB8::1"}, addr: "2001:db8::1", want: true},
		{name: "v6 wildcard case-insensitive", patterns: []string{"2001:DB8::*"}, addr: "2001:db8::abc", want: true},
		{name: "mapped client, v4 cidr", patterns: []string{"10.0.0.0/8"}, addr: "::ffff:10.0.0.1", want: true},
		{name: "mapped client, v4 wildcard", patterns: []string{"10.0.0.*"}, addr: "::ffff:10.0.0.1", want: true},
		{name: "mapped client, v4 exact", patterns: []string{"10.0.0.1"}, addr: "::ffff:10.0.0.1", want: true},
		{name: "mapped client, negated", patterns: []string{"10.0.0.0/8", "!10.0.0.1"}, addr: "::ffff:10.0.0.1", want: false},
		{name: "mapped pattern", patterns: []string{"::ffff:10.0.0.0/104"}, addr: "10.0.0.1", want: true},
		{name: "host name never matches (UseDNS off)", patterns: []string{"bastion.example"}, addr: "10.0.0.1", want: false},
		{name: "inet_aton pattern", patterns: []string{"127.1"}, addr: "127.0.0.1", want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := matchFrom(tt.patterns, netip.MustParseAddr(tt.addr)); got != tt.want {
				t.Errorf("matchFrom(%q, %s) = %v, want %v", tt.patterns, tt.addr, got, tt.want)
			}
		})
	}
}

func TestWildcardMatch(t *testing.T) {
	tests := []struct {
		pattern, s string
		want       bool
	}{
		{"*", "", true},
		{"**", "x", true},
		{"a*b", "ab", true},
		{"a*b", "axxb", true},
		{"a*b", "axxbc", false},
		{"a?c", "abc", true},
		{"a?c", "ac", false},
		{"?", "", false},
		{"", "", true},
		{"", "a", false},
		{"*.*.*.*", "1.2.3.4", true},
		{"*a", "bbb", false},
	}
	for _, tt := range tests {
		t.Run(tt.pattern+"|"+tt.s, func(t *testing.T) {
			if got := wildcardMatch(tt.pattern, tt.s); got != tt.want {
				t.Errorf("wildcardMatch(%q, %q) = %v, want %v", tt.pattern, tt.s, got, tt.want)
			}
		})
	}
}

func TestMatchSourceAddress(t *testing.T) {
	tests := []struct {
		list, addr string
		want       bool
	}{
		{"127.0.0.1/32", "127.0.0.1", true},
		{"10.0.0.0/8, 127.0.0.0/8", "127.0.0.1", true},
		{"10.0.0.0/8", "127.0.0.1", false},
		{"127.0.0.1", "::ffff:127.0.0.1", true},
		{"garbage", "127.0.0.1", false},
		{"", "127.0.0.1", false},
		{"127.0.0.1/8", "127.0.0.1", false},             // host bits set: invalid, as in sshd
		{"127.0.0.0/8, 10.0.0.1/8", "127.0.0.1", false}, // one invalid entry fails the list
		{"127.0.0.0/8, garbage", "127.0.0.1", false},    // likewise
		{"::ffff:127.0.0.0/104", "127.0.0.1", true},     // mapped spelling of 127.0.0.0/8
	}
	for _, tt := range tests {
		t.Run(tt.list+"|"+tt.addr, func(t *testing.T) {
			if got := matchSourceAddress(tt.list, netip.MustParseAddr(tt.addr)); got != tt.want {
				t.Errorf("matchSourceAddress(%q, %s) = %v, want %v", tt.list, tt.addr, got, tt.want)
			}
		})
	}
}

func FuzzParseIP(f *testing.F) {
	for _, s := range []string{"127.0.0.1", "127.1", "2130706433", "0x7f.1", "0177.0.0.1", "[::1]",
		"[::ffff:127.0.0.1]", "::ffff:7f00:1", "256.1", "1.2.3.4.5", "", "localhost", "fe80::1%eth0", "0x", "00x1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := parseIP(s)
		if err != nil {
			if a.IsValid() {
				t.Fatalf("parseIP(%q) = %v with error %v", s, a, err)
			}
			return
		}
		if !a.IsValid() {
			t.Fatalf("parseIP(%q) returned an invalid address without error", s)
		}
		if a.Is4In6() {
			t.Fatalf("parseIP(%q) = %v: mapped", s, a)
		}
		if a.Zone() != "" {
			t.Fatalf("parseIP(%q) = %v: zoned", s, a)
		}
		// What parseIP returns, it parses back to itself.
		if b, err := parseIP(a.String()); err != nil || b != a {
			t.Fatalf("parseIP(%q) = %v; parseIP(%q) = %v, %v", s, a, a.String(), b, err)
		}
		// A bare address is a /32 or /128 prefix of itself.
		if p, err := parseCIDR(s); err == nil && !p.Contains(a) && !containsSlash(s) {
			t.Fatalf("parseCIDR(%q) = %v does not contain %v", s, p, a)
		}
	})
}

func containsSlash(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			return true
		}
	}
	return false
}
