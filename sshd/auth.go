package sshd

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	gliderssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// Auth refusal reasons, for the audit log only.
var (
	errKeyNotAuthorized  = errors.New("key not authorized")
	errFromMismatch      = errors.New("client address not permitted by from=")
	errKeyExpired        = errors.New("key expired (expiry-time)")
	errUnknownCA         = errors.New("certificate signed by an unknown authority")
	errNotUserCert       = errors.New("not a user certificate")
	errNoPrincipals      = errors.New("certificate has no principals")
	errPrincipalMismatch = errors.New("no certificate principal is allowed for this login")
	errSourceAddress     = errors.New("client address not permitted by the certificate's source-address")
	errCertTouchWaiver   = errors.New("certificate waives the security-key touch (no-touch-required) but its cert-authority line does not; " +
		"sshd would then require a touch, which bastion cannot check for a certificate whose extension waives it")
	errUserChanged = errors.New("change of user name not allowed")
)

// caSignatureAlgorithms are the algorithms a CA may sign a user certificate
// with: sshd's default CASignatureAlgorithms (myproposal.h
// SSH_ALLOWED_CA_SIGALGS), so no SHA-1 (ssh-rsa) and no DSA.
var caSignatureAlgorithms = []string{
	gossh.KeyAlgoED25519,
	gossh.KeyAlgoECDSA256, gossh.KeyAlgoECDSA384, gossh.KeyAlgoECDSA521,
	gossh.KeyAlgoSKED25519, gossh.KeyAlgoSKECDSA256,
	"webauthn-sk-ecdsa-sha2-nistp256@openssh.com",
	gossh.KeyAlgoRSASHA512, gossh.KeyAlgoRSASHA256,
}

// noTouchRequired is the authorized_keys option and certificate extension
// that waive the security-key user-presence check; x/crypto/ssh acts on it
// when the Permissions of the key carry it.
const noTouchRequired = "no-touch-required"

// grant is what one offered key would give, computed once per offer.
type grant struct {
	from        *authorizer // the set of keys that made it
	key         gossh.PublicKey
	keyType     string
	fingerprint string // of the key, or of the certificate's key
	comment     string // authorized_keys comment of the matching line
	line        int
	certID      string
	certSerial  uint64
	caFP        string
	access      Access
	// noTouch waives the security-key touch: the line's no-touch-required
	// for a plain key (for a certificate x/crypto reads the extension).
	noTouch bool
	err     error // nil = this key may authenticate
}

// authorizer matches offered keys against the authorized_keys set.
type authorizer struct {
	keys  []AuthorizedKey
	clock func() time.Time
}

// check evaluates an offered key for user from addr. Like sshd, the first
// line whose key matches and whose options admit the client wins; if none
// admits it, the first matching line's refusal is reported.
func (a *authorizer) check(user string, addr netip.Addr, key gossh.PublicKey) *grant {
	g := &grant{from: a, key: key, keyType: key.Type(), fingerprint: gossh.FingerprintSHA256(key)}
	if cert, ok := key.(*gossh.Certificate); ok {
		a.checkCert(g, user, addr, cert)
		return g
	}
	if err := CheckKeyStrength(key); err != nil {
		g.err = err
		return g
	}
	wire := key.Marshal()
	var firstErr error
	for i := range a.keys {
		k := &a.keys[i]
		if k.Options.CertAuthority || !bytes.Equal(k.Key.Marshal(), wire) {
			continue
		}
		err := a.checkLine(k, addr)
		if err == nil {
			g.comment, g.line = k.Comment, k.Line
			g.access = Access{Options: k.Options, CertForwarding: true}
			g.noTouch = k.Options.NoTouchRequired
			return g
		}
		if firstErr == nil {
			firstErr = err
			g.comment, g.line = k.Comment, k.Line
		}
	}
	if firstErr == nil {
		firstErr = errKeyNotAuthorized
	}
	g.err = firstErr
	return g
}

func (a *authorizer) checkLine(k *AuthorizedKey, addr netip.Addr) error {
	if len(k.Options.From) > 0 && !matchFrom(k.Options.From, addr) {
		return errFromMismatch
	}
	if !k.Options.ExpiryTime.IsZero() && !a.clock().Before(k.Options.ExpiryTime) {
		return errKeyExpired
	}
	return nil
}

// checkCert applies sshd's rules for a user certificate under a
// cert-authority line, with one deliberate difference from x/crypto's
// CertChecker: a certificate without principals is refused, never treated as
// valid for every user.
func (a *authorizer) checkCert(g *grant, user string, addr netip.Addr, cert *gossh.Certificate) {
	g.fingerprint = gossh.FingerprintSHA256(cert.Key)
	g.certID, g.certSerial = cert.KeyId, cert.Serial
	g.caFP = gossh.FingerprintSHA256(cert.SignatureKey)
	if cert.CertType != gossh.UserCert {
		g.err = errNotUserCert
		return
	}
	if err := CheckKeyStrength(cert.Key); err != nil {
		g.err = err
		return
	}
	if len(cert.ValidPrincipals) == 0 {
		g.err = errNoPrincipals
		return
	}
	if cert.Signature == nil || !slices.Contains(caSignatureAlgorithms, cert.Signature.Format) {
		format := "none"
		if cert.Signature != nil {
			format = cert.Signature.Format
		}
		g.err = fmt.Errorf("certificate signed with algorithm %q, which sshd refuses by default (CASignatureAlgorithms)", capField(format))
		return
	}
	caWire := cert.SignatureKey.Marshal()
	var firstErr error
	for i := range a.keys {
		k := &a.keys[i]
		if !k.Options.CertAuthority || !bytes.Equal(k.Key.Marshal(), caWire) {
			continue
		}
		err := a.checkCertLine(k, user, addr, cert)
		if err == nil {
			g.comment, g.line = k.Comment, k.Line
			_, fwd := cert.Extensions["permit-port-forwarding"]
			g.access = Access{Options: k.Options, CertForwarding: fwd}
			return
		}
		if firstErr == nil {
			firstErr = err
			g.comment, g.line = k.Comment, k.Line
		}
	}
	if firstErr == nil {
		firstErr = errUnknownCA
	}
	g.err = firstErr
}

func (a *authorizer) checkCertLine(k *AuthorizedKey, user string, addr netip.Addr, cert *gossh.Certificate) error {
	if err := a.checkLine(k, addr); err != nil {
		return err
	}
	// Without principals= the login name must be a principal (sshd's
	// default); with it, any listed principal on the certificate will do.
	principal := ""
	if len(k.Options.Principals) == 0 {
		if slices.Contains(cert.ValidPrincipals, user) {
			principal = user
		}
	} else {
		for _, p := range cert.ValidPrincipals {
			if slices.Contains(k.Options.Principals, p) {
				principal = p
				break
			}
		}
	}
	if principal == "" {
		return errPrincipalMismatch
	}
	if src, ok := cert.CriticalOptions["source-address"]; ok {
		if !matchSourceAddress(src, addr) {
			return errSourceAddress
		}
	}
	// sshd ANDs the two waivers (sshauthopt_merge); x/crypto waives on the
	// certificate's extension alone, so that case is refused here.
	if _, waived := cert.Extensions[noTouchRequired]; waived && isSecurityKey(cert.Key) && !k.Options.NoTouchRequired {
		return errCertTouchWaiver
	}
	checker := gossh.CertChecker{
		Clock:                    a.clock,
		SupportedCriticalOptions: []string{"source-address", "force-command"},
		IsUserAuthority: func(auth gossh.PublicKey) bool {
			return bytes.Equal(auth.Marshal(), k.Key.Marshal())
		},
	}
	if err := checker.CheckCert(principal, cert); err != nil {
		return fmt.Errorf("certificate rejected: %s", strings.TrimPrefix(err.Error(), "ssh: "))
	}
	return nil
}

// matchSourceAddress applies a certificate's source-address list: comma
// separated CIDRs or addresses; the client must be inside one. As in sshd's
// addr_match_cidr_list, one invalid entry (host bits set, not an address)
// makes the whole list fail.
func matchSourceAddress(list string, addr netip.Addr) bool {
	matched := false
	for _, p := range strings.Split(list, ",") {
		pfx, err := parseNetwork(strings.TrimSpace(p))
		if err != nil {
			return false
		}
		matched = matched || pfx.Contains(addr.Unmap())
	}
	return matched
}

func isSecurityKey(k gossh.PublicKey) bool {
	t := k.Type()
	return t == gossh.KeyAlgoSKED25519 || t == gossh.KeyAlgoSKECDSA256
}

// Authentication, per attempt. x/crypto runs PublicKeyCallback once per
// (user, key) and caches the result; a signature later verified for that
// key reaches VerifiedPublicKeyCallback with the Permissions the first call
// returned; every attempt ends in AuthLogCallback, which does not say which
// key it was about. So each callback's Permissions are a fresh value that
// carries its grant, and the connection holds only the grant of the attempt
// in progress, for the audit line to take.

// grantKey finds a grant in Permissions.ExtraData.
type grantKey struct{}

// publicKeyHandler is gliderlabs' hook into x/crypto's PublicKeyCallback.
// It replaces the connection's Permissions with a new value each time:
// gliderlabs returns that pointer to x/crypto, which caches it per key, so
// a shared value would let one key's Permissions (source-address, the touch
// waiver) stand for another's.
func (s *Server) publicKeyHandler(ctx gliderssh.Context, key gliderssh.PublicKey) bool {
	cs := stateOf(ctx)
	if cs == nil {
		return false
	}
	g := s.authorizer().check(ctx.User(), cs.remote.Addr(), key)
	perms := &gossh.Permissions{ExtraData: map[any]any{grantKey{}: g}}
	if cert, ok := key.(*gossh.Certificate); ok && g.err == nil {
		// x/crypto enforces source-address from these as a second check.
		perms.CriticalOptions = cert.CriticalOptions
	}
	if g.err == nil && g.noTouch {
		perms.Extensions = map[string]string{noTouchRequired: ""}
	}
	ctx.Permissions().Permissions = perms
	s.mu.Lock()
	cs.attempt = g
	s.mu.Unlock()
	return g.err == nil
}

// verifiedPublicKey runs after x/crypto verified a signature by a key that
// publicKeyHandler accepted: the grant in perms is that key's.
func (s *Server) verifiedPublicKey(ctx gliderssh.Context, md gossh.ConnMetadata, perms *gossh.Permissions) (*gossh.Permissions, error) {
	cs := stateOf(ctx)
	g, _ := perms.ExtraData[grantKey{}].(*grant)
	if cs == nil || g == nil {
		return nil, errKeyNotAuthorized
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	err := cs.checkUserLocked(md.User())
	if err == nil {
		g = s.regrantLocked(md.User(), cs.remote.Addr(), g)
		err = g.err
	}
	if err == nil {
		err = s.reserveKeySlotLocked(cs, g.fingerprint)
	}
	if err != nil {
		refused := *g
		refused.err = err
		cs.attempt = &refused
		return nil, err
	}
	cs.attempt = g
	return perms, nil
}

// regrantLocked checks g's key again when the authorized keys were
// replaced after g was made: a client may take seconds to sign (a security
// key's touch), and recheck passes over connections not yet authenticated,
// so a key removed meanwhile must be caught on the way in. s.mu is held:
// recheck runs under it after the new set is stored, so between the two
// no swap is missed.
func (s *Server) regrantLocked(user string, addr netip.Addr, g *grant) *grant {
	if cur := s.authorizer(); g.from != cur {
		return cur.check(user, addr, g.key)
	}
	return g
}

// checkUserLocked keeps the first user name of a connection: like sshd
// ("Change of username or service not allowed"), a later attempt under
// another name ends the connection.
func (cs *connState) checkUserLocked(user string) error {
	if cs.user == "" {
		cs.user = user
		return nil
	}
	if user != cs.user {
		return fmt.Errorf("%w (first %q, then %q)", errUserChanged, capField(cs.user), capField(user))
	}
	return nil
}

// authLog writes one audit line per authentication attempt and records a
// success on the connection. Key fields come only from a grant made for
// this attempt: a refused grant from this attempt's callback, or the
// verified grant of a success; an attempt x/crypto refused before asking
// (an algorithm it does not accept, a repeated key) names no key.
func (s *Server) authLog(ctx gliderssh.Context, md gossh.ConnMetadata, method string, err error) {
	cs := stateOf(ctx)
	if cs == nil {
		return
	}
	cs.authBegan.Store(true)
	s.mu.Lock()
	g := cs.attempt
	cs.attempt = nil
	userErr := cs.checkUserLocked(md.User())
	s.mu.Unlock()
	if method != "publickey" || g == nil || (err != nil && g.err == nil) || (err == nil && g.err != nil) {
		g = nil
	}
	attrs := append(s.connAttrs(cs), "user", capField(md.User()), "client", cs.remote.String(), "method", method)
	result := "accepted"
	if err != nil || userErr != nil {
		result = "refused"
	}
	if g != nil {
		attrs = append(attrs, "key_type", g.keyType, "fingerprint", g.fingerprint)
		if g.comment != "" {
			attrs = append(attrs, "comment", capField(g.comment))
		}
		if g.line != 0 {
			attrs = append(attrs, "authorized_keys_line", g.line)
		}
		if g.certID != "" || g.caFP != "" {
			attrs = append(attrs, "cert_id", capField(g.certID), "cert_serial", g.certSerial, "ca_fingerprint", g.caFP)
		}
	}
	switch {
	case userErr != nil:
		attrs = append(attrs, "reason", userErr.Error())
	case err == nil:
	case g != nil && g.err != nil:
		attrs = append(attrs, "reason", g.err.Error())
	case method == "none":
		// Every OpenSSH client asks for "none" first to learn the methods.
		attrs = append(attrs, "reason", "method none is not accepted")
	case method == "publickey" && err.Error() == "permission denied":
		// gliderlabs' answer for a key x/crypto had already refused on
		// this connection and did not ask about again.
		attrs = append(attrs, "reason", "key already refused on this connection")
	default:
		attrs = append(attrs, "reason", capField(strings.TrimPrefix(err.Error(), "ssh: ")))
	}
	attrs = append(attrs, "result", result)
	switch {
	case result == "accepted":
		s.log.Info("auth", attrs...)
	case method == "none" && userErr == nil:
		s.log.Debug("auth", attrs...)
	default:
		s.refusals.info("auth", cs.bucket, attrs...)
	}
	if userErr != nil {
		// x/crypto offers no way to send the disconnect reason from here;
		// closing the socket ends the handshake at once.
		cs.conn.Close()
		return
	}
	if err == nil && g != nil {
		if s.authenticated(ctx, cs, g) && s.cfg.Audit != nil {
			s.cfg.Audit.SessionStarted(s.sessionEvent(cs))
		}
	}
}
