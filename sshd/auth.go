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
)

// grant is what one offered key would give, computed once per offer.
type grant struct {
	key         gossh.PublicKey
	keyType     string
	fingerprint string // of the key, or of the certificate's key
	comment     string // authorized_keys comment of the matching line
	line        int
	certID      string
	certSerial  uint64
	caFP        string
	access      Access
	err         error // nil = this key may authenticate
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
	g := &grant{key: key, keyType: key.Type(), fingerprint: gossh.FingerprintSHA256(key)}
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
// separated CIDRs or addresses; the client must be inside one.
func matchSourceAddress(list string, addr netip.Addr) bool {
	for _, p := range strings.Split(list, ",") {
		pfx, err := parseCIDR(strings.TrimSpace(p))
		if err == nil && pfx.Contains(addr.Unmap()) {
			return true
		}
	}
	return false
}

// publicKeyHandler is gliderlabs' hook into x/crypto's PublicKeyCallback.
// x/crypto caches one key's result and calls back again before accepting a
// different key, so the last call is always for the key that authenticates:
// each call overwrites the per-connection offer and Permissions, never
// merges them.
func (s *Server) publicKeyHandler(ctx gliderssh.Context, key gliderssh.PublicKey) bool {
	cs := stateOf(ctx)
	if cs == nil {
		return false
	}
	g := s.auth.check(ctx.User(), cs.remote.Addr(), key)
	ctx.SetValue(ctxOffered, g)
	perms := ctx.Permissions().Permissions
	*perms = gossh.Permissions{}
	if cert, ok := key.(*gossh.Certificate); ok && g.err == nil {
		// x/crypto enforces source-address from these as a second check.
		perms.CriticalOptions = cert.CriticalOptions
	}
	return g.err == nil
}

// authLog writes one audit line per authentication attempt and records a
// success on the connection.
func (s *Server) authLog(ctx gliderssh.Context, md gossh.ConnMetadata, method string, err error) {
	cs := stateOf(ctx)
	if cs == nil {
		return
	}
	attrs := []any{"user", md.User(), "client", cs.remote.String(), "method", method}
	result := "accepted"
	if err != nil {
		result = "refused"
	}
	var g *grant
	if method == "publickey" {
		g, _ = ctx.Value(ctxOffered).(*grant)
	}
	if g != nil {
		attrs = append(attrs, "key_type", g.keyType, "fingerprint", g.fingerprint)
		if g.comment != "" {
			attrs = append(attrs, "comment", g.comment)
		}
		if g.line != 0 {
			attrs = append(attrs, "authorized_keys_line", g.line)
		}
		if g.certID != "" || g.caFP != "" {
			attrs = append(attrs, "cert_id", g.certID, "cert_serial", g.certSerial, "ca_fingerprint", g.caFP)
		}
	}
	switch {
	case err == nil:
	case g != nil && g.err != nil:
		attrs = append(attrs, "reason", g.err.Error())
	case method == "none":
		// Every OpenSSH client asks for "none" first to learn the methods.
		attrs = append(attrs, "reason", "method none is not accepted")
	default:
		attrs = append(attrs, "reason", strings.TrimPrefix(err.Error(), "ssh: "))
	}
	attrs = append(attrs, "result", result)
	if method == "none" && err != nil {
		s.log.Debug("auth", attrs...)
	} else {
		s.log.Info("auth", attrs...)
	}
	if err == nil && g != nil && g.err == nil {
		s.authenticated(ctx, cs, g)
	}
}
