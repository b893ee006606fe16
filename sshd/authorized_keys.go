package sshd

import (
	"bufio"
	"bytes"
	"crypto/rsa"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// MinRSABits is the smallest RSA modulus accepted for user and host keys.
const MinRSABits = 2048

// AuthorizedKey is one parsed line of an authorized_keys file.
type AuthorizedKey struct {
	Line        int // 1-based line number in the file, for messages
	Key         gossh.PublicKey
	Comment     string
	Fingerprint string // SHA256:…
	Options     KeyOptions
}

// KeyOptions are the authorized_keys options bastion acts on, with the
// meaning sshd(8) gives them. Options that only concern sessions are parsed
// and kept in Ignored, because a bastion that serves no session has nothing
// to apply them to.
type KeyOptions struct {
	// From holds from="pattern-list" entries; empty means any source.
	From []string
	// PortForwarding is false after no-port-forwarding or restrict (unless a
	// later port-forwarding re-enables it).
	PortForwarding bool
	// PermitOpen limits direct-tcpip destinations; empty means no limit.
	PermitOpen []PermitOpen
	// ExpiryTime is the earliest expiry-time given; zero means none.
	ExpiryTime time.Time
	// CertAuthority marks the key as a CA trusted to sign user certificates.
	CertAuthority bool
	// Principals restricts which certificate principals a cert-authority line accepts.
	Principals []string
	// Ignored lists session-only options that were accepted as written.
	Ignored []string
}

// PermitOpen is one permitopen="host:port" entry. Port 0 stands for "*".
type PermitOpen struct {
	Host string
	Port int
}

func (p PermitOpen) String() string {
	port := "*"
	if p.Port != 0 {
		port = strconv.Itoa(p.Port)
	}
	return net.JoinHostPort(p.Host, port)
}

// LineError reports a bad authorized_keys line. It never carries the line's
// content, which may be a secret pasted in the wrong place.
type LineError struct {
	Line int
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }
func (e *LineError) Unwrap() error { return e.Err }

// sessionOnlyOptions are accepted and have nothing to act on in a server
// that serves only direct-tcpip. Flags take no value; the rest take one.
var sessionOnlyFlags = map[string]bool{
	"agent-forwarding": true, "no-agent-forwarding": true,
	"pty": true, "no-pty": true,
	"user-rc": true, "no-user-rc": true,
	"x11-forwarding": true, "no-x11-forwarding": true,
	"touch-required": true, "no-touch-required": true,
	"verify-required": true,
}

var sessionOnlyValues = map[string]bool{
	"command": true, "environment": true, "tunnel": true, "permitlisten": true,
}

// ParseAuthorizedKeys parses a whole authorized_keys file. Blank lines and
// comments are skipped; any other line that does not parse is an error that
// names the line.
func ParseAuthorizedKeys(data []byte) ([]AuthorizedKey, error) {
	var keys []AuthorizedKey
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		k, err := parseAuthorizedKeyLine(line)
		if err != nil {
			return nil, &LineError{Line: n, Err: err}
		}
		k.Line = n
		keys = append(keys, k)
	}
	if err := sc.Err(); err != nil {
		return nil, &LineError{Line: n + 1, Err: err}
	}
	return keys, nil
}

func parseAuthorizedKeyLine(line []byte) (AuthorizedKey, error) {
	key, comment, rawOpts, rest, err := gossh.ParseAuthorizedKey(line)
	if err != nil {
		return AuthorizedKey{}, errors.New("not a public key line (want [options] type base64 [comment])")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return AuthorizedKey{}, errors.New("more than one key on the line")
	}
	// A second key on the same line ends up in the comment.
	if _, _, _, _, err := gossh.ParseAuthorizedKey([]byte(comment)); err == nil {
		return AuthorizedKey{}, errors.New("more than one key on the line")
	}
	if err := CheckKeyStrength(key); err != nil {
		return AuthorizedKey{}, err
	}
	if _, ok := key.(*gossh.Certificate); ok {
		return AuthorizedKey{}, errors.New("a certificate cannot be authorized directly; add its CA key with cert-authority")
	}
	opts, err := ParseKeyOptions(rawOpts)
	if err != nil {
		return AuthorizedKey{}, err
	}
	return AuthorizedKey{
		Key:         key,
		Comment:     comment,
		Fingerprint: gossh.FingerprintSHA256(key),
		Options:     opts,
	}, nil
}

// CheckKeyStrength refuses DSA keys and RSA keys under MinRSABits.
func CheckKeyStrength(key gossh.PublicKey) error {
	if c, ok := key.(*gossh.Certificate); ok {
		key = c.Key
	}
	switch key.Type() {
	case gossh.KeyAlgoDSA:
		return errors.New("ssh-dss keys are not accepted")
	case gossh.KeyAlgoRSA:
		ck, ok := key.(gossh.CryptoPublicKey)
		if !ok {
			return errors.New("unreadable RSA key")
		}
		rk, ok := ck.CryptoPublicKey().(*rsa.PublicKey)
		if !ok {
			return errors.New("unreadable RSA key")
		}
		if bits := rk.N.BitLen(); bits < MinRSABits {
			return fmt.Errorf("RSA key of %d bits is too short (minimum %d)", bits, MinRSABits)
		}
	}
	return nil
}

// ParseKeyOptions interprets the raw option strings returned by
// gossh.ParseAuthorizedKey, in order, the way sshd's auth-options.c does:
// names are case-insensitive and later flags override earlier ones.
func ParseKeyOptions(raw []string) (KeyOptions, error) {
	o := KeyOptions{PortForwarding: true}
	for _, r := range raw {
		name, value, hasValue := strings.Cut(r, "=")
		name = strings.ToLower(name)
		flag := sessionOnlyFlags[name] || name == "restrict" || name == "port-forwarding" ||
			name == "no-port-forwarding" || name == "cert-authority"
		if hasValue && flag {
			return KeyOptions{}, fmt.Errorf("option %q takes no value", name)
		}
		if hasValue {
			v, err := unquoteOption(value)
			if err != nil {
				return KeyOptions{}, fmt.Errorf("option %q: %w", name, err)
			}
			value = v
		}
		flagOnly := func() error {
			if hasValue {
				return fmt.Errorf("option %q takes no value", name)
			}
			return nil
		}
		needValue := func() error {
			if !hasValue {
				return fmt.Errorf("option %q needs a value", name)
			}
			return nil
		}
		switch {
		case name == "restrict":
			if err := flagOnly(); err != nil {
				return KeyOptions{}, err
			}
			o.PortForwarding = false
		case name == "port-forwarding":
			if err := flagOnly(); err != nil {
				return KeyOptions{}, err
			}
			o.PortForwarding = true
		case name == "no-port-forwarding":
			if err := flagOnly(); err != nil {
				return KeyOptions{}, err
			}
			o.PortForwarding = false
		case name == "cert-authority":
			if err := flagOnly(); err != nil {
				return KeyOptions{}, err
			}
			o.CertAuthority = true
		case name == "from":
			if err := needValue(); err != nil {
				return KeyOptions{}, err
			}
			if o.From != nil {
				return KeyOptions{}, errors.New("option \"from\" given more than once")
			}
			pats, err := parsePatternList(value)
			if err != nil {
				return KeyOptions{}, fmt.Errorf("option \"from\": %w", err)
			}
			o.From = append(o.From, pats...)
		case name == "permitopen":
			if err := needValue(); err != nil {
				return KeyOptions{}, err
			}
			p, err := parsePermitOpen(value)
			if err != nil {
				return KeyOptions{}, fmt.Errorf("option \"permitopen\": %w", err)
			}
			o.PermitOpen = append(o.PermitOpen, p)
		case name == "expiry-time":
			if err := needValue(); err != nil {
				return KeyOptions{}, err
			}
			t, err := parseExpiryTime(value)
			if err != nil {
				return KeyOptions{}, fmt.Errorf("option \"expiry-time\": %w", err)
			}
			if o.ExpiryTime.IsZero() || t.Before(o.ExpiryTime) {
				o.ExpiryTime = t
			}
		case name == "principals":
			if err := needValue(); err != nil {
				return KeyOptions{}, err
			}
			if o.Principals != nil {
				return KeyOptions{}, errors.New("option \"principals\" given more than once")
			}
			for _, p := range strings.Split(value, ",") {
				if p = strings.TrimSpace(p); p != "" {
					o.Principals = append(o.Principals, p)
				}
			}
			if len(o.Principals) == 0 {
				return KeyOptions{}, errors.New("option \"principals\": empty list")
			}
		case sessionOnlyFlags[name]:
			if err := flagOnly(); err != nil {
				return KeyOptions{}, err
			}
			o.Ignored = append(o.Ignored, name)
		case sessionOnlyValues[name]:
			if err := needValue(); err != nil {
				return KeyOptions{}, err
			}
			o.Ignored = append(o.Ignored, name)
		default:
			return KeyOptions{}, fmt.Errorf("unknown option %q", name)
		}
	}
	if len(o.Principals) > 0 && !o.CertAuthority {
		return KeyOptions{}, errors.New("option \"principals\" is only valid with cert-authority")
	}
	return o, nil
}

// unquoteOption removes the double quotes around an option value; inside,
// \" stands for a quote, as in sshd's opt_dequote.
func unquoteOption(v string) (string, error) {
	if !strings.HasPrefix(v, `"`) {
		// sshd's opt_dequote refuses unquoted values too.
		return "", errors.New("value must be in double quotes")
	}
	var b strings.Builder
	for i := 1; i < len(v); i++ {
		c := v[i]
		if c == '\\' && i+1 < len(v) && v[i+1] == '"' {
			b.WriteByte('"')
			i++
			continue
		}
		if c == '"' {
			if i != len(v)-1 {
				return "", errors.New("text after closing quote")
			}
			return b.String(), nil
		}
		b.WriteByte(c)
	}
	return "", errors.New("missing closing quote")
}

func parsePatternList(v string) ([]string, error) {
	var pats []string
	for _, p := range strings.Split(v, ",") {
		p = strings.TrimSpace(p)
		if p == "" || p == "!" {
			return nil, errors.New("empty pattern")
		}
		if strings.Contains(p, "/") {
			if _, err := parseCIDR(strings.TrimPrefix(p, "!")); err != nil {
				return nil, fmt.Errorf("bad CIDR %q", p)
			}
		}
		pats = append(pats, p)
	}
	return pats, nil
}

func parsePermitOpen(v string) (PermitOpen, error) {
	var host, port string
	if strings.HasPrefix(v, "[") {
		end := strings.Index(v, "]")
		if end < 0 || end+1 >= len(v) || v[end+1] != ':' {
			return PermitOpen{}, errors.New("want [host]:port")
		}
		host, port = v[1:end], v[end+2:]
	} else {
		i := strings.LastIndex(v, ":")
		if i <= 0 {
			return PermitOpen{}, errors.New("want host:port")
		}
		host, port = v[:i], v[i+1:]
		if strings.Contains(host, ":") {
			return PermitOpen{}, errors.New("IPv6 addresses need brackets: [addr]:port")
		}
	}
	if host == "" {
		return PermitOpen{}, errors.New("empty host")
	}
	if port == "*" {
		return PermitOpen{Host: host}, nil
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return PermitOpen{}, errors.New("port must be 1-65535 or *")
	}
	return PermitOpen{Host: host, Port: n}, nil
}

// parseExpiryTime accepts sshd's YYYYMMDD[Z] and YYYYMMDDHHMM[SS][Z] forms:
// local time unless suffixed with Z.
func parseExpiryTime(v string) (time.Time, error) {
	loc := time.Local
	if strings.HasSuffix(v, "Z") || strings.HasSuffix(v, "z") {
		loc = time.UTC
		v = v[:len(v)-1]
	}
	var layout string
	switch len(v) {
	case 8:
		layout = "20060102"
	case 12:
		layout = "200601021504"
	case 14:
		layout = "20060102150405"
	default:
		return time.Time{}, errors.New("want YYYYMMDD[Z] or YYYYMMDDHHMM[SS][Z]")
	}
	t, err := time.ParseInLocation(layout, v, loc)
	if err != nil {
		return time.Time{}, errors.New("want YYYYMMDD[Z] or YYYYMMDDHHMM[SS][Z]")
	}
	return t, nil
}
