package notify

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
)

// The parts of each URL below that must never show in an error.
const (
	secretToken = "XoXsEcReTtOkEn42"
	secretHost  = "hooks.example-corp.test"
)

func TestValidateURL(t *testing.T) {
	tests := []struct {
		raw  string
		want error
	}{
		{"https://" + secretHost + "/services/T000/B000/" + secretToken, nil},
		{"HTTPS://" + secretHost + "/services/" + secretToken, nil},
		{"https://user:" + secretToken + "@" + secretHost + ":8443/hook?token=" + secretToken, nil},
		{"https://10.1.2.3/" + secretToken, nil},
		{"  https://" + secretHost + "/" + secretToken + "\n", nil}, // a secret stored with a newline
		{"http://127.0.0.1:8080/" + secretToken, nil},
		{"http://127.9.8.7/" + secretToken, nil},
		{"http://[::1]:9/" + secretToken, nil},
		{"http://[::ffff:127.0.0.1]:9/" + secretToken, nil},
		{"http://localhost:8080/" + secretToken, nil},
		{"http://LocalHost/" + secretToken, nil},

		{"http://" + secretHost + "/" + secretToken, ErrURLPlainHTTP},
		{"http://10.0.0.1/" + secretToken, ErrURLPlainHTTP},
		{"http://169.254.170.2/" + secretToken, ErrURLPlainHTTP},
		{"http://[::2]/" + secretToken, ErrURLPlainHTTP},
		{"http://0.0.0.0/" + secretToken, ErrURLPlainHTTP},
		{"http://127.1/" + secretToken, ErrURLPlainHTTP},      // not a literal address to Go; a name to resolve
		{"http://2130706433/" + secretToken, ErrURLPlainHTTP}, // idem
		{"http://localhost.evil.test/" + secretToken, ErrURLPlainHTTP},
		{"http://localhost./" + secretToken, ErrURLPlainHTTP},

		{"ftp://" + secretHost + "/" + secretToken, ErrURLScheme},
		{"ws://127.0.0.1/" + secretToken, ErrURLScheme},
		{"file:///etc/" + secretToken, ErrURLScheme},
		{"xoxb-" + secretToken + "://" + secretHost, ErrURLScheme},

		{"", ErrURLSyntax},
		{secretHost + "/services/" + secretToken, ErrURLSyntax},
		{"//" + secretHost + "/" + secretToken, ErrURLSyntax},
		{"https:" + secretHost + "/" + secretToken, ErrURLSyntax}, // opaque
		{"https://" + secretHost + "/%zz" + secretToken, ErrURLSyntax},
		{"https://" + secretHost + "/a b\x7f" + secretToken, ErrURLSyntax},
		{"https://[" + secretToken, ErrURLSyntax},
		{"https://" + secretHost + ":99999999999/" + secretToken, ErrURLSyntax},
		{"https://" + secretHost + ":0/" + secretToken, ErrURLSyntax},
		{"https://" + secretHost + ":65535/" + secretToken, nil},
		{"https:///" + secretToken, ErrURLNoHost},
		{"http:///" + secretToken, ErrURLNoHost},
	}
	for _, tt := range tests {
		t.Run(strings.ReplaceAll(tt.raw, "/", "_"), func(t *testing.T) {
			err := ValidateURL(tt.raw)
			// Identity, not errors.Is: the error is the constant itself, so
			// nothing of the URL can be in it.
			if err != tt.want {
				t.Fatalf("ValidateURL = %v, want %v", err, tt.want)
			}
			_, nerr := New(Config{URL: tt.raw})
			if nerr != tt.want {
				t.Errorf("New = %v, want %v", nerr, tt.want)
			}
			for _, e := range []error{err, nerr} {
				if e == nil {
					continue
				}
				for _, part := range []string{secretToken, secretHost, "services", "xoxb"} {
					if strings.Contains(strings.ToLower(e.Error()), strings.ToLower(part)) {
						t.Errorf("error %q contains %q", e, part)
					}
				}
			}
		})
	}
}

func TestDialLoopbackOnly(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:80": true, "127.3.2.1:1": true, "[::1]:80": true, "[::ffff:127.0.0.1]:80": true,
		"10.0.0.1:80": false, "[2001:db8::1]:443": false, "169.254.170.2:80": false, "0.0.0.0:80": false,
		"garbage": false,
	} {
		if err := dialLoopbackOnly("tcp", addr, nil); (err == nil) != ok {
			t.Errorf("dialLoopbackOnly(%q) = %v", addr, err)
		}
	}
}

func TestReason(t *testing.T) {
	u, err := url.Parse("https://user:" + secretToken + "@" + secretHost + ":8443/services/T000/" + secretToken + "?k=" + secretToken)
	if err != nil {
		t.Fatal(err)
	}
	wrap := func(inner error) error { return &url.Error{Op: "Post", URL: u.String(), Err: inner} }
	dial := func(errno error) error {
		return &net.OpError{Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.ParseIP("10.0.0.5"), Port: 8443},
			Err: os.NewSyscallError("connect", errno)}
	}
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"refused", wrap(dial(syscall.ECONNREFUSED)), "connection refused"},
		{"reset", wrap(dial(syscall.ECONNRESET)), "connection reset"},
		{"unreachable", wrap(dial(syscall.EHOSTUNREACH)), "host unreachable"},
		{"deadline", wrap(context.DeadlineExceeded), "timeout"},
		{"cancelled", wrap(context.Canceled), "cancelled at shutdown"},
		{"dns", wrap(&net.DNSError{Err: "no such host", Name: secretHost, IsNotFound: true}), "name lookup failed: no such host"},
		{"dns other", wrap(&net.DNSError{Err: "server misbehaving", Name: secretHost}), "name lookup failed"},
		{"unknown CA", wrap(&tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}), "tls: certificate signed by an unknown authority"},
		{"wrong host", wrap(&tls.CertificateVerificationError{Err: x509.HostnameError{Certificate: &x509.Certificate{}, Host: secretHost}}), "tls: certificate not valid for the host"},
		{"not TLS", wrap(tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}), "tls: the server did not answer with TLS"},
		{"eof", wrap(io.EOF), "connection closed before a response"},
		{"loopback", wrap(&net.OpError{Op: "dial", Err: errNotLoopback}), "refused: plain http only to a loopback address"},
		{"unknown error quoting the URL", wrap(fmt.Errorf("proxy said no to %s (%s, %s)", u.String(), u.Host, u.Path)),
			"proxy said no to [redacted] ([redacted], [redacted])"},
		{"unknown error quoting pieces", wrap(fmt.Errorf("bad %s and %s and more", secretToken, secretHost)),
			"bad [redacted] and [redacted] and more"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := reason(tt.err, u)
			if got != tt.want {
				t.Errorf("reason = %q, want %q", got, tt.want)
			}
			for _, part := range []string{secretToken, secretHost, "10.0.0.5", "8443", "services"} {
				if strings.Contains(got, part) {
					t.Errorf("reason %q contains %q", got, part)
				}
			}
		})
	}
}
