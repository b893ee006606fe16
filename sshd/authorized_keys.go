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
	// NoTouchRequired waives the security-key user-presence (touch) check,
	// as sshd's no-touch-required does; for a certificate sshd waives it
	// only when the certificate carries that extension too.
	NoTouchRequired bool
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

// ErrVerifyRequired refuses authorized_keys lines with verify-required:
// sshd then demands the FIDO user-verification flag (a PIN or biometric) in
// the signature, but x/crypto/ssh verifies security-key signatures without
// reporting their flags, so bastion could not tell a verified signature from
// a touch-only one. Refusing the line at start is the safe failure.
var ErrVerifyRequired = errors.New(`option "verify-required" cannot be enforced: ` +
	`the SSH library bastion uses does not report the security key's user-verification flag, ` +
	`so a touch-only signature would be accepted; remove the option or use OpenSSH's sshd for this key`)

// keyOption is how one authorized_keys option is read: whether it takes a
// quoted value, and what it does to the options so far. Options apply in
// order, so a later flag overrides an earlier one, as in sshd's
// auth-options.c (sshauthopt_parse).
type keyOption struct {
	value bool
	apply func(o *KeyOptions, v string) error
}

func flagOption(apply func(o *KeyOptions)) keyOption {
	return keyOption{apply: func(o *KeyOptions, _ string) error { apply(o); return nil }}
}

// sessionOnly options are accepted as written and kept in Ignored: a server
// that serves only direct-tcpip has nothing to apply them to.
func sessionOnly(name string, value bool) keyOption {
	return keyOption{value: value, apply: func(o *KeyOptions, _ string) error {
		o.Ignored = append(o.Ignored, name)
		return nil
	}}
}

// keyOptions lists every option sshd(8) knows, by lower-case name. sshd
// lets these flags be negated with "no-": port-forwarding, agent-forwarding,
// x11-forwarding, pty, user-rc, touch-required, verify-required.
var keyOptions = map[string]keyOption{
	"restrict":           flagOption(func(o *KeyOptions) { o.PortForwarding = false }),
	"port-forwarding":    flagOption(func(o *KeyOptions) { o.PortForwarding = true }),
	"no-port-forwarding": flagOption(func(o *KeyOptions) { o.PortForwarding = false }),
	"cert-authority":     flagOption(func(o *KeyOptions) { o.CertAuthority = true }),
	"no-touch-required":  flagOption(func(o *KeyOptions) { o.NoTouchRequired = true }),
	"touch-required":     flagOption(func(o *KeyOptions) { o.NoTouchRequired = false }),
	"verify-required":    {apply: func(*KeyOptions, string) error { return ErrVerifyRequired }},
	"no-verify-required": flagOption(func(*KeyOptions) {}),
	"from":               {value: true, apply: applyFrom},
	"permitopen":         {value: true, apply: applyPermitOpen},
	"expiry-time":        {value: true, apply: applyExpiryTime},
	"principals":         {value: true, apply: applyPrincipals},

	"agent-forwarding":    sessionOnly("agent-forwarding", false),
	"no-agent-forwarding": sessionOnly("no-agent-forwarding", false),
	"pty":                 sessionOnly("pty", false),
	"no-pty":              sessionOnly("no-pty", false),
	"user-rc":             sessionOnly("user-rc", false),
	"no-user-rc":          sessionOnly("no-user-rc", false),
	"x11-forwarding":      sessionOnly("x11-forwarding", false),
	"no-x11-forwarding":   sessionOnly("no-x11-forwarding", false),
	"command":             sessionOnly("command", true),
	"environment":         sessionOnly("environment", true),
	"tunnel":              sessionOnly("tunnel", true),
	"permitlisten":        sessionOnly("permitlisten", true),
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
		opt, ok := keyOptions[name]
		switch {
		case !ok:
			return KeyOptions{}, fmt.Errorf("unknown option %q", name)
		case hasValue && !opt.value:
			return KeyOptions{}, fmt.Errorf("option %q takes no value", name)
		case !hasValue && opt.value:
			return KeyOptions{}, fmt.Errorf("option %q needs a value", name)
		}
		if hasValue {
			v, err := unquoteOption(value)
			if err != nil {
				return KeyOptions{}, fmt.Errorf("option %q: %w", name, err)
			}
			value = v
		}
		if err := opt.apply(&o, value); err != nil {
			return KeyOptions{}, err
		}
	}
	if len(o.Principals) > 0 && !o.CertAuthority {
		return KeyOptions{}, errors.New(`option "principals" is only valid with cert-authority`)
	}
	return o, nil
}

func applyFrom(o *KeyOptions, v string) error {
	if o.From != nil {
		return errors.New(`option "from" given more than once`)
	}
	pats, err := parsePatternList(v)
	if err != nil {
		return fmt.Errorf(`option "from": %w`, err)
	}
	o.From = pats
	return nil
}

func applyPermitOpen(o *KeyOptions, v string) error {
	p, err := parsePermitOpen(v)
	if err != nil {
		return fmt.Errorf(`option "permitopen": %w`, err)
	}
	o.PermitOpen = append(o.PermitOpen, p)
	return nil
}

// applyExpiryTime keeps the earliest of several expiry-time options.
func applyExpiryTime(o *KeyOptions, v string) error {
	t, err := parseExpiryTime(v)
	if err != nil {
		return fmt.Errorf(`option "expiry-time": %w`, err)
	}
	if o.ExpiryTime.IsZero() || t.Before(o.ExpiryTime) {
		o.ExpiryTime = t
	}
	return nil
}

func applyPrincipals(o *KeyOptions, v string) error {
	if o.Principals != nil {
		return errors.New(`option "principals" given more than once`)
	}
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			o.Principals = append(o.Principals, p)
		}
	}
	if len(o.Principals) == 0 {
		return errors.New(`option "principals": empty list`)
	}
	return nil
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
			if _, err := parseNetwork(strings.TrimPrefix(p, "!")); err != nil {
				return nil, fmt.Errorf("bad CIDR %q: %w", p, err)
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
