package sshd

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Reason names the outcome of a policy decision. ReasonAllowed is the only
// one that lets a tunnel open; every other value is a refusal cause that goes
// to the audit log, never to the client.
type Reason string

const (
	ReasonAllowed          Reason = "allowed"
	ReasonNoPortForwarding Reason = "key forbids port forwarding"
	ReasonCertNoForwarding Reason = "certificate lacks permit-port-forwarding"
	ReasonPermitOpen       Reason = "destination not in the key's permitopen list"
	ReasonDefaultDeny      Reason = "destination in the default deny list"
	ReasonLocalAddress     Reason = "destination is an address of this host"
	ReasonNotAllowed       Reason = "destination not in BASTION_ALLOW"
	ReasonBadPort          Reason = "port out of range"
)

// DefaultDeny lists the networks no tunnel may reach unless an entry of
// BASTION_ALLOW lies inside them: loopback, "this network" (0.0.0.0 connects
// to loopback on Linux), link-local with the EC2/ECS metadata and credential
// endpoints 169.254.169.254, 169.254.170.2, 169.254.170.23, and the EC2 IPv6
// metadata network.
var DefaultDeny = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("::/128"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("fd00:ec2::/32"),
}

// AllowEntry is one BASTION_ALLOW element: a network or a host name, with an
// optional port range.
type AllowEntry struct {
	Prefix netip.Prefix // valid for address entries
	Host   string       // lower-case name for host entries; "*.x" matches subdomains of x
	PortLo int          // 0 with PortHi 0 = any port
	PortHi int
}

func (e AllowEntry) String() string {
	s := e.Host
	if e.Prefix.IsValid() {
		s = e.Prefix.String()
		if e.Prefix.Addr().Is6() && e.PortLo != 0 {
			s = "[" + s + "]"
		}
	}
	switch {
	case e.PortLo == 0:
	case e.PortLo == e.PortHi:
		s += ":" + strconv.Itoa(e.PortLo)
	default:
		s += fmt.Sprintf(":%d-%d", e.PortLo, e.PortHi)
	}
	return s
}

func (e AllowEntry) portOK(port int) bool {
	return e.PortLo == 0 || (port >= e.PortLo && port <= e.PortHi)
}

// opens reports whether the entry lies wholly inside a default-deny network,
// which is what it takes to open one: 0.0.0.0/0 does not open 127.0.0.1,
// 127.0.0.1/32 does.
func (e AllowEntry) opens(denied netip.Prefix) bool {
	return e.Prefix.IsValid() && e.Prefix.Bits() >= denied.Bits() && denied.Contains(e.Prefix.Addr())
}

// ParseAllowList parses BASTION_ALLOW: comma-separated CIDRs, addresses or
// host names, each with an optional :port or :lo-hi. IPv6 networks with a
// port go in brackets: [fd00::/8]:443.
func ParseAllowList(s string) ([]AllowEntry, error) {
	var out []AllowEntry
	for i, raw := range strings.Split(s, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		e, err := parseAllowEntry(raw)
		if err != nil {
			return nil, fmt.Errorf("entry %d %q: %w", i+1, raw, err)
		}
		out = append(out, e)
	}
	return out, nil
}

func parseAllowEntry(raw string) (AllowEntry, error) {
	host, ports := raw, ""
	switch {
	case strings.HasPrefix(raw, "["):
		end := strings.Index(raw, "]")
		if end < 0 {
			return AllowEntry{}, errors.New("missing ]")
		}
		host, ports = raw[1:end], raw[end+1:]
		if ports != "" {
			if !strings.HasPrefix(ports, ":") || ports == ":" {
				return AllowEntry{}, errors.New("want [address]:port")
			}
			ports = ports[1:]
		}
	case strings.Count(raw, ":") == 1:
		host, ports, _ = strings.Cut(raw, ":")
		if ports == "" {
			return AllowEntry{}, errors.New("empty port after ':'")
		}
	}
	var e AllowEntry
	if ports != "" {
		lo, hi, err := parsePortRange(ports)
		if err != nil {
			return AllowEntry{}, err
		}
		e.PortLo, e.PortHi = lo, hi
	}
	if p, err := parseCIDR(host); err == nil {
		e.Prefix = p
		return e, nil
	}
	if strings.ContainsAny(host, "/:[]") || looksNumeric(host) {
		return AllowEntry{}, errors.New("not a valid address or network")
	}
	name := strings.ToLower(strings.TrimSuffix(host, "."))
	if _, err := parseIP(name); err == nil {
		// "0x7f.1." is an address spelt with a final dot, not a name.
		return AllowEntry{}, errors.New("not a valid address or network")
	}
	if err := checkHostName(strings.TrimPrefix(name, "*.")); err != nil {
		return AllowEntry{}, err
	}
	e.Host = name
	return e, nil
}

func looksNumeric(s string) bool {
	return strings.Trim(s, "0123456789.") == ""
}

func checkHostName(h string) error {
	if h == "" || len(h) > 253 {
		return errors.New("not a valid host name")
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return errors.New("not a valid host name")
		}
		for _, c := range label {
			if !(c == '-' || c == '_' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
				return errors.New("not a valid host name")
			}
		}
	}
	return nil
}

func parsePortRange(s string) (int, int, error) {
	loS, hiS, isRange := strings.Cut(s, "-")
	lo, err := strconv.Atoi(loS)
	if err != nil || lo < 1 || lo > 65535 {
		return 0, 0, errors.New("port must be 1-65535")
	}
	if !isRange {
		return lo, lo, nil
	}
	hi, err := strconv.Atoi(hiS)
	if err != nil || hi < lo || hi > 65535 {
		return 0, 0, errors.New("port range must be lo-hi within 1-65535")
	}
	return lo, hi, nil
}

// Policy decides which destinations a tunnel may reach.
type Policy struct {
	Allow []AllowEntry // empty = any destination outside DefaultDeny
	// Local are the addresses of this host's (the task's) own interfaces:
	// sidecars bound to 0.0.0.0 answer on them. They are denied like
	// DefaultDeny, and opened only by an entry that lies inside one.
	Local []netip.Addr
}

// Embedded-IPv4 spellings: a NAT64 address, a 6to4 address and the old
// IPv4-compatible form reach (or name) an IPv4 address; when that address is
// denied, so is the spelling.
var (
	nat64Prefix      = netip.MustParsePrefix("64:ff9b::/96")
	sixToFourPrefix  = netip.MustParsePrefix("2002::/16")
	v4CompatPrefix   = netip.MustParsePrefix("::/96")
	v4CompatExcluded = netip.MustParsePrefix("::/127") // :: and ::1 are IPv6's own
)

// embeddedIPv4 returns the IPv4 address an IPv6 address embeds, if any.
func embeddedIPv4(ip netip.Addr) (netip.Addr, bool) {
	if !ip.Is6() || ip.Is4In6() {
		return netip.Addr{}, false
	}
	b := ip.As16()
	switch {
	case nat64Prefix.Contains(ip):
		return netip.AddrFrom4([4]byte(b[12:16])), true
	case sixToFourPrefix.Contains(ip):
		return netip.AddrFrom4([4]byte(b[2:6])), true
	case v4CompatPrefix.Contains(ip) && !v4CompatExcluded.Contains(ip):
		return netip.AddrFrom4([4]byte(b[12:16])), true
	}
	return netip.Addr{}, false
}

// deniedNetwork returns the denied network holding ip and the reason it is
// denied, or an invalid prefix.
func (p *Policy) deniedNetwork(ip netip.Addr) (netip.Prefix, Reason) {
	for _, n := range DefaultDeny {
		if n.Contains(ip) {
			return n, ReasonDefaultDeny
		}
	}
	for _, a := range p.Local {
		if a.Unmap().WithZone("") == ip {
			return netip.PrefixFrom(ip, ip.BitLen()), ReasonLocalAddress
		}
	}
	return netip.Prefix{}, ""
}

// Access is what the authenticated key (or certificate) grants.
type Access struct {
	Options KeyOptions
	// CertForwarding is false when a certificate authenticated without the
	// permit-port-forwarding extension; true for plain keys.
	CertForwarding bool
}

// Dest is a requested destination. IP is the address about to be dialed;
// zero when deciding before resolution (only per-key rules are checked).
type Dest struct {
	Host string
	Port int
	IP   netip.Addr
}

// Decide is pure: no DNS, sockets, clock or logging. First the key's own
// limits (sshd's order: forwarding flag, then permitopen on the requested
// name), then the destination policy on the dialed IP.
func (p *Policy) Decide(a Access, d Dest) Reason {
	if d.Port < 1 || d.Port > 65535 {
		return ReasonBadPort
	}
	if !a.Options.PortForwarding {
		return ReasonNoPortForwarding
	}
	if !a.CertForwarding {
		return ReasonCertNoForwarding
	}
	if len(a.Options.PermitOpen) > 0 && !permitOpenMatches(a.Options.PermitOpen, d) {
		return ReasonPermitOpen
	}
	if !d.IP.IsValid() {
		return ReasonAllowed
	}
	ip := d.IP.Unmap().WithZone("")
	if v4, ok := embeddedIPv4(ip); ok {
		if n, _ := p.deniedNetwork(v4); n.IsValid() {
			ip = v4
		}
	}
	if denied, reason := p.deniedNetwork(ip); denied.IsValid() {
		for _, e := range p.Allow {
			if e.opens(denied) && e.Prefix.Contains(ip) && e.portOK(d.Port) {
				return ReasonAllowed
			}
		}
		return reason
	}
	if len(p.Allow) == 0 {
		return ReasonAllowed
	}
	host := normalizeHost(d.Host)
	for _, e := range p.Allow {
		if !e.portOK(d.Port) {
			continue
		}
		if e.Prefix.IsValid() && e.Prefix.Contains(ip) {
			return ReasonAllowed
		}
		if e.Host != "" && hostMatches(e.Host, host) {
			return ReasonAllowed
		}
	}
	return ReasonNotAllowed
}

// permitOpenMatches compares the requested host text, not its addresses,
// exactly (case included) as sshd's open_match does: permitopen="db:5432"
// does not allow a request for 10.0.0.5:5432 or DB:5432. A host of "*"
// matches any host, a port of "*" (0 here) any port.
func permitOpenMatches(list []PermitOpen, d Dest) bool {
	host := unbracket(d.Host)
	for _, p := range list {
		if (p.Port == 0 || p.Port == d.Port) && (p.Host == "*" || unbracket(p.Host) == host) {
			return true
		}
	}
	return false
}

func unbracket(h string) string {
	return strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
}

func normalizeHost(h string) string {
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	return strings.ToLower(strings.TrimSuffix(h, "."))
}

func hostMatches(pattern, host string) bool {
	if suffix, ok := strings.CutPrefix(pattern, "*."); ok {
		return strings.HasSuffix(host, "."+suffix)
	}
	return pattern == host
}
