package notify

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// Errors of ValidateURL. None of them quotes the URL or any part of it: the
// URL is a credential, and the caller puts the error in a log line.
var (
	ErrURLSyntax    = errors.New("notify: not a valid absolute URL")
	ErrURLScheme    = errors.New("notify: URL scheme must be https (plain http only to a loopback address)")
	ErrURLNoHost    = errors.New("notify: URL has no host")
	ErrURLPlainHTTP = errors.New("notify: plain http is allowed only to a loopback address (127.0.0.0/8, ::1 or localhost); use https")
)

// ValidateURL checks a webhook URL: https to any host, or http to a literal
// loopback address (127.0.0.0/8, ::1) or the name "localhost". Surrounding
// white space (a secret stored with a final newline) is ignored. The error,
// one of the ErrURL values, never contains the URL or any part of it.
func ValidateURL(raw string) error {
	_, err := parseURL(raw)
	return err
}

func parseURL(raw string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil || !u.IsAbs() || u.Opaque != "" {
		// err quotes the URL: never wrap it.
		return nil, ErrURLSyntax
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return nil, ErrURLSyntax
		}
	}
	switch u.Scheme {
	case "https":
		if u.Hostname() == "" {
			return nil, ErrURLNoHost
		}
	case "http":
		if u.Hostname() == "" {
			return nil, ErrURLNoHost
		}
		if !loopbackHost(u.Hostname()) {
			return nil, ErrURLPlainHTTP
		}
	default:
		return nil, ErrURLScheme
	}
	return u, nil
}

// loopbackHost: a literal loopback address, or the name localhost. Other
// names are refused for plain http: a name is only as loopback as the
// resolver says, and dialLoopbackOnly checks the address dialed anyway.
func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

var errNotLoopback = errors.New("notify: plain http only to a loopback address")

// dialLoopbackOnly is the dialer's Control for an http URL: whatever the
// name resolved to (or a proxy chosen from the environment), plain http
// never leaves the host.
func dialLoopbackOnly(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil || !ap.Addr().Unmap().IsLoopback() {
		return errNotLoopback
	}
	return nil
}

// reason describes a failed request without the URL. net/http wraps every
// error in a *url.Error that quotes the URL, and the errors inside name the
// host and port (dial tcp 10.0.0.5:443: ..., lookup hooks.example: ...,
// x509: certificate is valid for ..., not ...), so known errors become a
// fixed phrase and anything else has every part of the URL cut out.
func reason(err error, u *url.URL) string {
	var dnsErr *net.DNSError
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalidCert x509.CertificateInvalidError
	var verifyErr *tls.CertificateVerificationError
	var recordErr tls.RecordHeaderError
	var alert tls.AlertError
	var netErr net.Error
	switch {
	case errors.Is(err, errNotLoopback):
		return "refused: plain http only to a loopback address"
	case errors.Is(err, context.Canceled):
		return "cancelled at shutdown"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	case errors.As(err, &dnsErr):
		if dnsErr.IsNotFound {
			return "name lookup failed: no such host"
		}
		return "name lookup failed"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connection reset"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "host unreachable"
	case errors.As(err, &unknownCA):
		return "tls: certificate signed by an unknown authority"
	case errors.As(err, &hostErr):
		return "tls: certificate not valid for the host"
	case errors.As(err, &invalidCert):
		return "tls: certificate invalid"
	case errors.As(err, &verifyErr):
		return "tls: certificate verification failed"
	case errors.As(err, &recordErr):
		return "tls: the server did not answer with TLS"
	case errors.As(err, &alert):
		return alert.Error()
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed before a response"
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return redact(err.Error(), u)
}

// redact cuts every part of u out of s: the whole URL, host, host name,
// user, password, path, each path segment, query and fragment.
func redact(s string, u *url.URL) string {
	parts := []string{u.String(), u.Redacted(), u.Host, u.Hostname(), u.EscapedPath(), u.Path,
		u.RawQuery, u.Fragment}
	if u.User != nil {
		parts = append(parts, u.User.String(), u.User.Username())
		if p, ok := u.User.Password(); ok {
			parts = append(parts, p)
		}
	}
	parts = append(parts, strings.Split(u.Path, "/")...)
	parts = append(parts, strings.Split(u.EscapedPath(), "/")...)
	for k, vs := range u.Query() {
		parts = append(parts, k)
		parts = append(parts, vs...)
	}
	// Longest first: at each position the replacer takes the first old
	// string that matches, so a part inside a longer one does not leave the
	// rest of the longer one behind. One pass: "[redacted]" itself is never
	// searched again. One- and two-character parts ("/", "v1") would cut up
	// ordinary words and identify nothing on their own.
	slices.SortFunc(parts, func(a, b string) int { return len(b) - len(a) })
	var pairs []string
	for _, p := range parts {
		if len(p) >= 3 {
			pairs = append(pairs, p, "[redacted]")
		}
	}
	return strings.NewReplacer(pairs...).Replace(s)
}
