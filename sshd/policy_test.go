package sshd

import (
	"net/netip"
	"strings"
	"testing"
)

func mustAllow(t testing.TB, s string) []AllowEntry {
	t.Helper()
	e, err := ParseAllowList(s)
	if err != nil {
		t.Fatalf("ParseAllowList(%q): %v", s, err)
	}
	return e
}

func TestParseAllowList(t *testing.T) {
	pfx := netip.MustParsePrefix
	tests := []struct {
		name    string
		in      string
		want    []AllowEntry
		wantErr string
	}{
		{name: "empty", in: "", want: nil},
		{name: "only commas and spaces", in: " , ,", want: nil},
		{name: "cidr", in: "10.0.0.0/8", want: []AllowEntry{{Prefix: pfx("10.0.0.0/8")}}},
		{name: "cidr is masked", in: "10.1.2.3/8", want: []AllowEntry{{Prefix: pfx("10.0.0.0/8")}}},
		{name: "bare ip", in: "10.1.2.3", want: []AllowEntry{{Prefix: pfx("10.1.2.3/32")}}},
		{name: "inet_aton ip", in: "127.1", want: []AllowEntry{{Prefix: pfx("127.0.0.1/32")}}},
		{name: "mapped ip unmapped", in: "::ffff:10.0.0.1", want: []AllowEntry{{Prefix: pfx("10.0.0.1/32")}}},
		{name: "mapped cidr unmapped", in: "::ffff:10.0.0.0/104", want: []AllowEntry{{Prefix: pfx("10.0.0.0/8")}}},
		{name: "host", in: "db.internal", want: []AllowEntry{{Host: "db.internal"}}},
		{name: "host lower-cased, final dot dropped", in: "DB.Internal.", want: []AllowEntry{{Host: "db.internal"}}},
		{name: "suffix", in: "*.internal", want: []AllowEntry{{Host: "*.internal"}}},
		{name: "cidr port", in: "10.0.0.0/8:443", want: []AllowEntry{{Prefix: pfx("10.0.0.0/8"), PortLo: 443, PortHi: 443}}},
		{name: "host port range", in: "db:5432-5440", want: []AllowEntry{{Host: "db", PortLo: 5432, PortHi: 5440}}},
		{name: "suffix port", in: "*.svc:80", want: []AllowEntry{{Host: "*.svc", PortLo: 80, PortHi: 80}}},
		{name: "v6 bracket port", in: "[fd00::/8]:443", want: []AllowEntry{{Prefix: pfx("fd00::/8"), PortLo: 443, PortHi: 443}}},
		{name: "v6 bracket range", in: "[fd00::1]:1-1024", want: []AllowEntry{{Prefix: pfx("fd00::1/128"), PortLo: 1, PortHi: 1024}}},
		{name: "v6 without port", in: "fd00::/8", want: []AllowEntry{{Prefix: pfx("fd00::/8")}}},
		{name: "v6 address without port", in: "::1", want: []AllowEntry{{Prefix: pfx("::1/128")}}},
		{name: "v6 bracket without port", in: "[::1]", want: []AllowEntry{{Prefix: pfx("::1/128")}}},
		{name: "v6 zone dropped", in: "fe80::1%eth0", want: []AllowEntry{{Prefix: pfx("fe80::1/128")}}},
		{name: "port bounds", in: "a:1,b:65535", want: []AllowEntry{{Host: "a", PortLo: 1, PortHi: 1}, {Host: "b", PortLo: 65535, PortHi: 65535}}},
		{name: "several with spaces", in: " 10.0.0.1 , ,db ", want: []AllowEntry{{Prefix: pfx("10.0.0.1/32")}, {Host: "db"}}},

		{name: "bits too long", in: "10.0.0.0/33", wantErr: "entry 1"},
		{name: "v6 bits too long", in: "[fd00::/129]:1", wantErr: "entry 1"},
		{name: "port zero", in: "db:0", wantErr: "port must be 1-65535"},
		{name: "port too big", in: "db:65536", wantErr: "port must be 1-65535"},
		{name: "port not a number", in: "db:http", wantErr: "port must be 1-65535"},
		{name: "range reversed", in: "db:10-5", wantErr: "port range"},
		{name: "range too big", in: "db:10-70000", wantErr: "port range"},
		{name: "range open", in: "db:10-", wantErr: "port range"},
		{name: "missing bracket", in: "[::1", wantErr: "missing ]"},
		{name: "bracket without colon", in: "[::1]443", wantErr: "want [address]:port"},
		{name: "bad quad", in: "256.1.1.1", wantErr: "not a valid address"},
		{name: "five parts", in: "1.2.3.4.5", wantErr: "not a valid address"},
		{name: "v6 port without brackets is not an address", in: "fd00::1:443:x", wantErr: "not a valid address"},
		{name: "space in host", in: "a b", wantErr: "not a valid host name"},
		{name: "bare star", in: "*", wantErr: "not a valid host name"},
		{name: "star in middle", in: "a.*.b", wantErr: "not a valid host name"},
		{name: "empty label", in: "a..b", wantErr: "not a valid host name"},
		{name: "label too long", in: strings.Repeat("a", 64) + ".x", wantErr: "not a valid host name"},
		{name: "address spelt with a final dot", in: "0x7f.1.", wantErr: "not a valid address"},
		{name: "hex zero with a final dot", in: "0X.", wantErr: "not a valid address"},
		{name: "error names the entry number", in: "10.0.0.1,db,bad host", wantErr: "entry 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseAllowList(tt.in)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseAllowList(%q) = %v, want error containing %q", tt.in, got, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseAllowList(%q) error %q, want it to contain %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseAllowList(%q): %v", tt.in, err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("ParseAllowList(%q) = %v, want %v", tt.in, got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("entry %d = %#v, want %#v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestAllowEntryString(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"10.0.0.0/8", "10.0.0.0/8"},
		{"10.0.0.0/8:443", "10.0.0.0/8:443"},
		{"10.0.0.1:1-2", "10.0.0.1/32:1-2"},
		{"[fd00::/8]:443", "[fd00::/8]:443"},
		{"fd00::/8", "fd00::/8"},
		{"DB:22-22", "db:22"},
		{"*.X", "*.x"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			e := mustAllow(t, tt.in)
			if got := e[0].String(); got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
			again := mustAllow(t, e[0].String())
			if again[0] != e[0] {
				t.Errorf("re-parse of %q = %#v, want %#v", e[0].String(), again[0], e[0])
			}
		})
	}
}

func TestDecide(t *testing.T) {
	keyOpts := func(t *testing.T, raw ...string) KeyOptions {
		t.Helper()
		o, err := ParseKeyOptions(raw)
		if err != nil {
			t.Fatalf("ParseKeyOptions(%q): %v", raw, err)
		}
		return o
	}
	plain := func(*testing.T) Access {
		return Access{Options: KeyOptions{PortForwarding: true}, CertForwarding: true}
	}
	withOpts := func(raw ...string) func(*testing.T) Access {
		return func(t *testing.T) Access { return Access{Options: keyOpts(t, raw...), CertForwarding: true} }
	}
	ip := netip.MustParseAddr
	tests := []struct {
		name   string
		allow  string
		local  string // comma-separated addresses of the host
		access func(*testing.T) Access
		dest   Dest
		want   Reason
	}{
		// Metadata and credential endpoints.
		{name: "ec2 metadata", dest: Dest{Host: "169.254.169.254", Port: 80, IP: ip("169.254.169.254")}, want: ReasonDefaultDeny},
		{name: "ecs credentials", dest: Dest{Host: "169.254.170.2", Port: 80, IP: ip("169.254.170.2")}, want: ReasonDefaultDeny},
		{name: "eks pod identity", dest: Dest{Host: "169.254.170.23", Port: 80, IP: ip("169.254.170.23")}, want: ReasonDefaultDeny},
		{name: "ec2 metadata v6", dest: Dest{Host: "fd00:ec2::254", Port: 80, IP: ip("fd00:ec2::254")}, want: ReasonDefaultDeny},
		{name: "metadata not opened by 0/0", allow: "0.0.0.0/0", dest: Dest{Host: "169.254.169.254", Port: 80, IP: ip("169.254.169.254")}, want: ReasonDefaultDeny},
		{name: "metadata v6 not opened by ::/0", allow: "::/0", dest: Dest{Host: "fd00:ec2::254", Port: 80, IP: ip("fd00:ec2::254")}, want: ReasonDefaultDeny},
		{name: "metadata not opened by fd00::/8", allow: "fd00::/8", dest: Dest{Host: "fd00:ec2::254", Port: 80, IP: ip("fd00:ec2::254")}, want: ReasonDefaultDeny},
		{name: "metadata not opened by a name", allow: "metadata.internal", dest: Dest{Host: "metadata.internal", Port: 80, IP: ip("169.254.169.254")}, want: ReasonDefaultDeny},
		{name: "metadata opened by its own address", allow: "169.254.169.254:80", dest: Dest{Host: "169.254.169.254", Port: 80, IP: ip("169.254.169.254")}, want: ReasonAllowed},
		{name: "opening one endpoint does not open another", allow: "169.254.169.254", dest: Dest{Host: "169.254.170.2", Port: 80, IP: ip("169.254.170.2")}, want: ReasonDefaultDeny},

		// Loopback and friends.
		{name: "loopback", dest: Dest{Host: "127.0.0.1", Port: 22, IP: ip("127.0.0.1")}, want: ReasonDefaultDeny},
		{name: "loopback other", dest: Dest{Host: "127.5.6.7", Port: 22, IP: ip("127.5.6.7")}, want: ReasonDefaultDeny},
		{name: "loopback v6", dest: Dest{Host: "::1", Port: 22, IP: ip("::1")}, want: ReasonDefaultDeny},
		{name: "loopback mapped", dest: Dest{Host: "::ffff:127.0.0.1", Port: 22, IP: ip("::ffff:127.0.0.1")}, want: ReasonDefaultDeny},
		{name: "this network", dest: Dest{Host: "0.0.0.0", Port: 22, IP: ip("0.0.0.0")}, want: ReasonDefaultDeny},
		{name: "unspecified v6", dest: Dest{Host: "::", Port: 22, IP: ip("::")}, want: ReasonDefaultDeny},
		{name: "link-local v6", dest: Dest{Host: "fe80::1", Port: 22, IP: ip("fe80::1")}, want: ReasonDefaultDeny},
		{name: "link-local v6 with zone", dest: Dest{Host: "fe80::1%eth0", Port: 22, IP: ip("fe80::1%eth0")}, want: ReasonDefaultDeny},
		{name: "loopback opened by /32", allow: "127.0.0.1/32", dest: Dest{Host: "127.0.0.1", Port: 22, IP: ip("127.0.0.1")}, want: ReasonAllowed},
		{name: "loopback /32 opens mapped spelling", allow: "127.0.0.1/32", dest: Dest{Host: "::ffff:127.0.0.1", Port: 22, IP: ip("::ffff:127.0.0.1")}, want: ReasonAllowed},
		{name: "loopback /32 opens only itself", allow: "127.0.0.1/32", dest: Dest{Host: "127.0.0.2", Port: 22, IP: ip("127.0.0.2")}, want: ReasonDefaultDeny},
		{name: "loopback /32 does not open ::1", allow: "127.0.0.1/32", dest: Dest{Host: "::1", Port: 22, IP: ip("::1")}, want: ReasonDefaultDeny},
		{name: "loopback /8 opens loopback", allow: "127.0.0.0/8", dest: Dest{Host: "127.9.9.9", Port: 22, IP: ip("127.9.9.9")}, want: ReasonAllowed},
		{name: "loopback /7 is wider than the deny range", allow: "126.0.0.0/7", dest: Dest{Host: "127.0.0.1", Port: 22, IP: ip("127.0.0.1")}, want: ReasonDefaultDeny},
		{name: "loopback not opened by 0/0", allow: "0.0.0.0/0", dest: Dest{Host: "127.0.0.1", Port: 22, IP: ip("127.0.0.1")}, want: ReasonDefaultDeny},
		{name: "loopback not opened by a name", allow: "localhost", dest: Dest{Host: "localhost", Port: 22, IP: ip("127.0.0.1")}, want: ReasonDefaultDeny},
		{name: "loopback not opened by a suffix", allow: "*.localhost", dest: Dest{Host: "a.localhost", Port: 22, IP: ip("127.0.0.1")}, want: ReasonDefaultDeny},
		{name: "loopback opened port checked", allow: "127.0.0.1/32:22", dest: Dest{Host: "127.0.0.1", Port: 23, IP: ip("127.0.0.1")}, want: ReasonDefaultDeny},
		{name: "loopback opened port matches", allow: "127.0.0.1/32:22", dest: Dest{Host: "127.0.0.1", Port: 22, IP: ip("127.0.0.1")}, want: ReasonAllowed},
		{name: "v6 loopback opened by ::1", allow: "::1", dest: Dest{Host: "::1", Port: 22, IP: ip("::1")}, want: ReasonAllowed},
		{name: "this network opened by 0.0.0.0/8", allow: "0.0.0.0/8", dest: Dest{Host: "0.0.0.0", Port: 22, IP: ip("0.0.0.0")}, want: ReasonAllowed},
		{name: "name resolving to loopback with an open name list", allow: "db.internal", dest: Dest{Host: "db.internal", Port: 5432, IP: ip("127.0.0.1")}, want: ReasonDefaultDeny},

		// Embedded IPv4 spellings of a denied address.
		{name: "nat64 of loopback", dest: Dest{Host: "64:ff9b::7f00:1", Port: 22, IP: ip("64:ff9b::7f00:1")}, want: ReasonDefaultDeny},
		{name: "nat64 of metadata", dest: Dest{Host: "64:ff9b::a9fe:a9fe", Port: 80, IP: ip("64:ff9b::a9fe:a9fe")}, want: ReasonDefaultDeny},
		{name: "6to4 of metadata", dest: Dest{Host: "2002:a9fe:a9fe::1", Port: 80, IP: ip("2002:a9fe:a9fe::1")}, want: ReasonDefaultDeny},
		{name: "v4-compatible loopback", dest: Dest{Host: "::127.0.0.1", Port: 22, IP: ip("::127.0.0.1")}, want: ReasonDefaultDeny},
		{name: "v4-compatible ecs credentials", dest: Dest{Host: "::169.254.170.2", Port: 80, IP: ip("::169.254.170.2")}, want: ReasonDefaultDeny},
		{name: "nat64 of loopback opened by 127.0.0.1", allow: "127.0.0.1/32", dest: Dest{Host: "64:ff9b::7f00:1", Port: 22, IP: ip("64:ff9b::7f00:1")}, want: ReasonAllowed},
		{name: "nat64 not opened by 64:ff9b::/96", allow: "64:ff9b::/96", dest: Dest{Host: "64:ff9b::7f00:1", Port: 22, IP: ip("64:ff9b::7f00:1")}, want: ReasonDefaultDeny},
		{name: "nat64 of a public address stays v6", allow: "64:ff9b::/96", dest: Dest{Host: "64:ff9b::808:808", Port: 53, IP: ip("64:ff9b::808:808")}, want: ReasonAllowed},
		{name: "nat64 of a public address, open allow list", dest: Dest{Host: "64:ff9b::808:808", Port: 53, IP: ip("64:ff9b::808:808")}, want: ReasonAllowed},
		{name: "6to4 of a local address", local: "10.0.5.7", dest: Dest{Host: "2002:a00:507::1", Port: 22, IP: ip("2002:a00:507::1")}, want: ReasonLocalAddress},

		// The host's own addresses.
		{name: "own address", local: "10.0.5.7", dest: Dest{Host: "10.0.5.7", Port: 8080, IP: ip("10.0.5.7")}, want: ReasonLocalAddress},
		{name: "own v6 address", local: "fd12::7", dest: Dest{Host: "fd12::7", Port: 8080, IP: ip("fd12::7")}, want: ReasonLocalAddress},
		{name: "own address, mapped", local: "10.0.5.7", dest: Dest{Host: "::ffff:10.0.5.7", Port: 8080, IP: ip("::ffff:10.0.5.7")}, want: ReasonLocalAddress},
		{name: "own address not opened by its network", local: "10.0.5.7", allow: "10.0.0.0/8", dest: Dest{Host: "10.0.5.7", Port: 8080, IP: ip("10.0.5.7")}, want: ReasonLocalAddress},
		{name: "own address opened by itself", local: "10.0.5.7", allow: "10.0.5.7/32:8080", dest: Dest{Host: "10.0.5.7", Port: 8080, IP: ip("10.0.5.7")}, want: ReasonAllowed},
		{name: "a neighbour is not local", local: "10.0.5.7", allow: "10.0.0.0/8", dest: Dest{Host: "10.0.5.8", Port: 8080, IP: ip("10.0.5.8")}, want: ReasonAllowed},
		{name: "own link-local with zone", local: "fe80::1%eth0", dest: Dest{Host: "fe80::1", Port: 22, IP: ip("fe80::1")}, want: ReasonDefaultDeny},

		// Explicit allow.
		{name: "cidr and port", allow: "10.0.0.0/8:443", dest: Dest{Host: "10.1.2.3", Port: 443, IP: ip("10.1.2.3")}, want: ReasonAllowed},
		{name: "cidr wrong port", allow: "10.0.0.0/8:443", dest: Dest{Host: "10.1.2.3", Port: 80, IP: ip("10.1.2.3")}, want: ReasonNotAllowed},
		{name: "outside cidr", allow: "10.0.0.0/8:443", dest: Dest{Host: "192.168.1.1", Port: 443, IP: ip("192.168.1.1")}, want: ReasonNotAllowed},
		{name: "range low", allow: "10.0.0.0/8:5000-5010", dest: Dest{Host: "10.0.0.1", Port: 5000, IP: ip("10.0.0.1")}, want: ReasonAllowed},
		{name: "range high", allow: "10.0.0.0/8:5000-5010", dest: Dest{Host: "10.0.0.1", Port: 5010, IP: ip("10.0.0.1")}, want: ReasonAllowed},
		{name: "below range", allow: "10.0.0.0/8:5000-5010", dest: Dest{Host: "10.0.0.1", Port: 4999, IP: ip("10.0.0.1")}, want: ReasonNotAllowed},
		{name: "above range", allow: "10.0.0.0/8:5000-5010", dest: Dest{Host: "10.0.0.1", Port: 5011, IP: ip("10.0.0.1")}, want: ReasonNotAllowed},
		{name: "any port", allow: "10.0.0.0/8", dest: Dest{Host: "10.0.0.1", Port: 65535, IP: ip("10.0.0.1")}, want: ReasonAllowed},
		{name: "second entry matches", allow: "10.0.0.0/8:443,192.168.0.0/16:22", dest: Dest{Host: "192.168.3.4", Port: 22, IP: ip("192.168.3.4")}, want: ReasonAllowed},
		{name: "mapped dest in v4 cidr", allow: "10.0.0.0/8", dest: Dest{Host: "::ffff:10.0.0.1", Port: 1, IP: ip("::ffff:10.0.0.1")}, want: ReasonAllowed},
		{name: "v6 cidr", allow: "[fd00::/8]:443", dest: Dest{Host: "fd12::1", Port: 443, IP: ip("fd12::1")}, want: ReasonAllowed},
		{name: "v6 cidr wrong port", allow: "[fd00::/8]:443", dest: Dest{Host: "fd12::1", Port: 444, IP: ip("fd12::1")}, want: ReasonNotAllowed},
		{name: "host name", allow: "db.internal:5432", dest: Dest{Host: "db.internal", Port: 5432, IP: ip("10.0.0.5")}, want: ReasonAllowed},
		{name: "host name case and final dot", allow: "db.internal:5432", dest: Dest{Host: "DB.Internal.", Port: 5432, IP: ip("10.0.0.5")}, want: ReasonAllowed},
		{name: "host name entry does not cover its address", allow: "db.internal:5432", dest: Dest{Host: "10.0.0.5", Port: 5432, IP: ip("10.0.0.5")}, want: ReasonNotAllowed},
		{name: "host name wrong port", allow: "db.internal:5432", dest: Dest{Host: "db.internal", Port: 5433, IP: ip("10.0.0.5")}, want: ReasonNotAllowed},
		{name: "suffix matches subdomain", allow: "*.internal", dest: Dest{Host: "a.b.internal", Port: 1, IP: ip("10.0.0.5")}, want: ReasonAllowed},
		{name: "suffix does not match the bare domain", allow: "*.internal", dest: Dest{Host: "internal", Port: 1, IP: ip("10.0.0.5")}, want: ReasonNotAllowed},
		{name: "suffix needs a dot", allow: "*.internal", dest: Dest{Host: "evilinternal", Port: 1, IP: ip("10.0.0.5")}, want: ReasonNotAllowed},
		{name: "empty allow: anything outside deny", dest: Dest{Host: "8.8.8.8", Port: 53, IP: ip("8.8.8.8")}, want: ReasonAllowed},
		{name: "empty allow: private v6", dest: Dest{Host: "fd12::1", Port: 53, IP: ip("fd12::1")}, want: ReasonAllowed},
		{name: "before resolution only key rules", allow: "10.0.0.0/8", dest: Dest{Host: "anything.example", Port: 22}, want: ReasonAllowed},

		// Key and certificate limits.
		{name: "no-port-forwarding", access: withOpts("no-port-forwarding"), dest: Dest{Host: "8.8.8.8", Port: 53, IP: ip("8.8.8.8")}, want: ReasonNoPortForwarding},
		{name: "restrict", access: withOpts("restrict"), dest: Dest{Host: "8.8.8.8", Port: 53, IP: ip("8.8.8.8")}, want: ReasonNoPortForwarding},
		{name: "restrict before resolution", access: withOpts("restrict"), dest: Dest{Host: "db", Port: 53}, want: ReasonNoPortForwarding},
		{name: "restrict then port-forwarding", access: withOpts("restrict", "port-forwarding"), dest: Dest{Host: "8.8.8.8", Port: 53, IP: ip("8.8.8.8")}, want: ReasonAllowed},
		{name: "no-port-forwarding wins over default deny", access: withOpts("no-port-forwarding"), dest: Dest{Host: "127.0.0.1", Port: 22, IP: ip("127.0.0.1")}, want: ReasonNoPortForwarding},
		{name: "cert without permit-port-forwarding", access: func(*testing.T) Access {
			return Access{Options: KeyOptions{PortForwarding: true}, CertForwarding: false}
		}, dest: Dest{Host: "8.8.8.8", Port: 53, IP: ip("8.8.8.8")}, want: ReasonCertNoForwarding},

		// permitopen compares the requested text.
		{name: "permitopen name", access: withOpts(`permitopen="db.internal:5432"`), dest: Dest{Host: "db.internal", Port: 5432, IP: ip("10.0.0.5")}, want: ReasonAllowed},
		{name: "permitopen name before resolution", access: withOpts(`permitopen="db.internal:5432"`), dest: Dest{Host: "db.internal", Port: 5432}, want: ReasonAllowed},
		{name: "permitopen name refuses its address", access: withOpts(`permitopen="db.internal:5432"`), dest: Dest{Host: "10.0.0.5", Port: 5432, IP: ip("10.0.0.5")}, want: ReasonPermitOpen},
		{name: "permitopen address refuses a name", access: withOpts(`permitopen="10.0.0.5:5432"`), dest: Dest{Host: "db.internal", Port: 5432, IP: ip("10.0.0.5")}, want: ReasonPermitOpen},
		{name: "permitopen wrong port", access: withOpts(`permitopen="db.internal:5432"`), dest: Dest{Host: "db.internal", Port: 5433, IP: ip("10.0.0.5")}, want: ReasonPermitOpen},
		{name: "permitopen compares exactly, like sshd's open_match", access: withOpts(`permitopen="DB.internal:5432"`), dest: Dest{Host: "db.INTERNAL", Port: 5432, IP: ip("10.0.0.5")}, want: ReasonPermitOpen},
		{name: "permitopen * host matches any host", access: withOpts(`permitopen="*:5432"`), dest: Dest{Host: "db.internal", Port: 5432, IP: ip("10.0.0.5")}, want: ReasonAllowed},
		{name: "permitopen * host keeps the port", access: withOpts(`permitopen="*:5432"`), dest: Dest{Host: "db.internal", Port: 5433, IP: ip("10.0.0.5")}, want: ReasonPermitOpen},
		{name: "permitopen star port low", access: withOpts(`permitopen="db:*"`), dest: Dest{Host: "db", Port: 1, IP: ip("10.0.0.5")}, want: ReasonAllowed},
		{name: "permitopen star port high", access: withOpts(`permitopen="db:*"`), dest: Dest{Host: "db", Port: 65535, IP: ip("10.0.0.5")}, want: ReasonAllowed},
		{name: "permitopen star port other host", access: withOpts(`permitopen="db:*"`), dest: Dest{Host: "db2", Port: 1, IP: ip("10.0.0.5")}, want: ReasonPermitOpen},
		{name: "permitopen second entry", access: withOpts(`permitopen="a:1"`, `permitopen="b:2"`), dest: Dest{Host: "b", Port: 2, IP: ip("10.0.0.5")}, want: ReasonAllowed},
		{name: "permitopen v6 plain request", access: withOpts(`permitopen="[fd00::5]:22"`), dest: Dest{Host: "fd00::5", Port: 22, IP: ip("fd00::5")}, want: ReasonAllowed},
		{name: "permitopen v6 bracketed request", access: withOpts(`permitopen="[fd00::5]:22"`), dest: Dest{Host: "[fd00::5]", Port: 22, IP: ip("fd00::5")}, want: ReasonAllowed},
		{name: "permitopen v6 compares exactly", access: withOpts(`permitopen="[FD00::5]:22"`), dest: Dest{Host: "fd00::5", Port: 22, IP: ip("fd00::5")}, want: ReasonPermitOpen},
		{name: "permitopen v6 brackets", access: withOpts(`permitopen="[fd00::5]:22"`), dest: Dest{Host: "fd00::5", Port: 22, IP: ip("fd00::5")}, want: ReasonAllowed},
		{name: "permitopen v6 other spelling is other text", access: withOpts(`permitopen="[fd00::5]:22"`), dest: Dest{Host: "fd00:0::5", Port: 22, IP: ip("fd00::5")}, want: ReasonPermitOpen},
		{name: "permitopen does not open default deny", access: withOpts(`permitopen="127.0.0.1:22"`), dest: Dest{Host: "127.0.0.1", Port: 22, IP: ip("127.0.0.1")}, want: ReasonDefaultDeny},
		{name: "permitopen and allow list both apply", allow: "10.0.0.0/8:443", access: withOpts(`permitopen="db:5432"`), dest: Dest{Host: "db", Port: 5432, IP: ip("10.0.0.5")}, want: ReasonNotAllowed},

		// Ports.
		{name: "port 0", dest: Dest{Host: "8.8.8.8", Port: 0, IP: ip("8.8.8.8")}, want: ReasonBadPort},
		{name: "port 65536", dest: Dest{Host: "8.8.8.8", Port: 65536, IP: ip("8.8.8.8")}, want: ReasonBadPort},
		{name: "negative port", dest: Dest{Host: "8.8.8.8", Port: -1}, want: ReasonBadPort},
		{name: "bad port before key rules", access: withOpts("restrict"), dest: Dest{Host: "8.8.8.8", Port: 0}, want: ReasonBadPort},
		{name: "port 65535", dest: Dest{Host: "8.8.8.8", Port: 65535, IP: ip("8.8.8.8")}, want: ReasonAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &Policy{Allow: mustAllow(t, tt.allow)}
			for _, a := range strings.Split(tt.local, ",") {
				if a != "" {
					p.Local = append(p.Local, netip.MustParseAddr(a))
				}
			}
			access := plain
			if tt.access != nil {
				access = tt.access
			}
			if got := p.Decide(access(t), tt.dest); got != tt.want {
				t.Errorf("Decide(%+v) with allow %q = %q, want %q", tt.dest, tt.allow, got, tt.want)
			}
		})
	}
}

func TestReasonsDistinct(t *testing.T) {
	all := []Reason{ReasonAllowed, ReasonNoPortForwarding, ReasonCertNoForwarding, ReasonPermitOpen, ReasonLocalAddress,
		ReasonDefaultDeny, ReasonNotAllowed, ReasonBadPort}
	seen := map[Reason]bool{}
	for _, r := range all {
		if r == "" || seen[r] {
			t.Errorf("reason %q empty or repeated", r)
		}
		seen[r] = true
	}
}

func TestDefaultDenyCoversMetadata(t *testing.T) {
	for _, s := range []string{"169.254.169.254", "169.254.170.2", "169.254.170.23", "fd00:ec2::254", "127.0.0.1", "::1", "0.0.0.0", "::", "fe80::1"} {
		a := netip.MustParseAddr(s)
		covered := false
		for _, p := range DefaultDeny {
			covered = covered || p.Contains(a)
		}
		if !covered {
			t.Errorf("%s not in DefaultDeny", s)
		}
	}
}

func FuzzParseAllowList(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "db:5432-5440", "[fd00::/8]:443", "*.internal", "fd00::/8",
		"127.1", "::ffff:10.0.0.0/104", "a,b,,c:1", "[::1]", "0x7f.1:22", "DB.X.:80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		entries, err := ParseAllowList(s)
		if err != nil {
			return
		}
		for _, e := range entries {
			if e.Prefix.IsValid() == (e.Host != "") {
				t.Fatalf("entry %#v: want exactly one of Prefix and Host", e)
			}
			if e.Prefix.IsValid() && e.Prefix.Addr().Is4In6() {
				t.Fatalf("entry %#v: mapped prefix", e)
			}
			if e.PortLo < 0 || e.PortHi > 65535 || e.PortLo > e.PortHi || (e.PortLo == 0) != (e.PortHi == 0) {
				t.Fatalf("entry %#v: bad port range", e)
			}
			str := e.String()
			again, err := ParseAllowList(str)
			if err != nil {
				t.Fatalf("String() %q of %#v does not re-parse: %v", str, e, err)
			}
			if len(again) != 1 || again[0] != e {
				t.Fatalf("String() %q of %#v re-parses to %#v", str, e, again)
			}
		}
	})
}
