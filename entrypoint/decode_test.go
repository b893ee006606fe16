package entrypoint

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func readTestdata(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// wrap breaks s into lines of n characters joined by sep.
func wrap(s string, n int, sep string) string {
	var b strings.Builder
	for len(s) > n {
		b.WriteString(s[:n])
		b.WriteString(sep)
		s = s[n:]
	}
	b.WriteString(s)
	return b.String()
}

func TestDecodeText(t *testing.T) {
	pem := readTestdata(t, "host_ed25519")
	ak := readTestdata(t, "authorized_keys")
	std := base64.StdEncoding.EncodeToString([]byte(pem))
	// Content whose encodings differ between the alphabets and paddings.
	odd := ak + "#\xfb\xff"
	tests := []struct {
		name   string
		value  string
		format keyFormat
		strict bool
		want   string // "" = error
	}{
		{name: "plain PEM", value: pem, format: privateKey, want: strings.TrimSpace(pem)},
		{name: "plain PEM with surrounding space", value: "\n  " + pem + "\n\n", format: privateKey, want: strings.TrimSpace(pem)},
		{name: "plain authorized_keys", value: ak, format: publicKey, want: strings.TrimSpace(ak)},
		{name: "plain authorized_keys after comments", value: "# ops\n\n" + ak, format: publicKey, want: strings.TrimSpace("# ops\n\n" + ak)},
		{name: "std", value: std, format: privateKey, strict: true, want: strings.TrimSpace(pem)},
		{name: "std raw", value: base64.RawStdEncoding.EncodeToString([]byte(odd)), format: publicKey, want: strings.TrimSpace(odd)},
		{name: "std padded", value: base64.StdEncoding.EncodeToString([]byte(odd)), format: publicKey, want: strings.TrimSpace(odd)},
		{name: "url", value: base64.URLEncoding.EncodeToString([]byte(odd)), format: publicKey, want: strings.TrimSpace(odd)},
		{name: "url raw", value: base64.RawURLEncoding.EncodeToString([]byte(odd)), format: publicKey, want: strings.TrimSpace(odd)},
		{name: "wrapped 64 LF", value: wrap(std, 64, "\n"), format: privateKey, strict: true, want: strings.TrimSpace(pem)},
		{name: "wrapped 76 LF", value: wrap(std, 76, "\n"), format: privateKey, strict: true, want: strings.TrimSpace(pem)},
		{name: "wrapped 64 CRLF", value: wrap(std, 64, "\r\n"), format: privateKey, strict: true, want: strings.TrimSpace(pem)},
		{name: "wrapped 76 CRLF with trailing newline", value: wrap(std, 76, "\r\n") + "\r\n", format: privateKey, strict: true, want: strings.TrimSpace(pem)},
		{name: "surrounding white space", value: " \t\n" + std + "\n\t ", format: privateKey, strict: true, want: strings.TrimSpace(pem)},
		{name: "base64 of authorized_keys", value: base64.StdEncoding.EncodeToString([]byte(ak)), format: publicKey, want: strings.TrimSpace(ak)},
		{name: "non-strict passes unrecognised text on", value: base64.StdEncoding.EncodeToString([]byte("hello")), format: publicKey, want: "hello"},
		{name: "strict refuses unrecognised text", value: base64.StdEncoding.EncodeToString([]byte("hello")), format: privateKey, strict: true},
		{name: "garbage", value: "not*base64!", format: privateKey},
		{name: "garbage, lenient", value: "not*base64!", format: publicKey},
		{name: "truncated base64", value: std[:len(std)-3] + "=", format: privateKey, strict: true},
		{name: "authorized_keys list as written", value: "\n\n# ops\n" + ak, format: authorizedKeys, want: "\n\n# ops\n" + ak},
		{name: "base64 of a list as it decodes", value: base64.StdEncoding.EncodeToString([]byte("\n" + ak)), format: authorizedKeys, want: "\n" + ak},
		{name: "garbage list", value: "not*base64!", format: authorizedKeys},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeText("VAR_NAME", tt.value, tt.format, tt.strict)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("decoded to %q, want error", got)
				}
				if !strings.HasPrefix(err.Error(), "entrypoint: VAR_NAME: ") {
					t.Errorf("error %q does not name the variable", err)
				}
				if strings.Contains(err.Error(), tt.value) {
					t.Errorf("error %q carries the value", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("decodeText: %v", err)
			}
			if string(got) != tt.want {
				t.Errorf("decoded %q, want %q", got, tt.want)
			}
		})
	}
}

func TestIsAuthorizedKeysText(t *testing.T) {
	ak := readTestdata(t, "authorized_keys")
	tests := []struct {
		name string
		in   string
		want bool
	}{
		{"key", ak, true},
		{"comment then key", "# x\n" + ak, true},
		{"options then key", "restrict " + ak, true},
		{"only comments", "# nobody\n", true},
		{"empty", "", false},
		{"base64", base64.StdEncoding.EncodeToString([]byte(ak)), false},
		{"PEM", readTestdata(t, "host_ed25519"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := isAuthorizedKeysText(bytes.TrimSpace([]byte(tt.in))); got != tt.want {
				t.Errorf("isAuthorizedKeysText = %v, want %v", got, tt.want)
			}
		})
	}
}

func FuzzDecodeText(f *testing.F) {
	ak := readTestdata(f, "authorized_keys")
	for _, s := range []string{ak, base64.StdEncoding.EncodeToString([]byte(ak)), base64.RawURLEncoding.EncodeToString([]byte(ak)),
		"-----BEGIN X-----\n", "", "====", "a\r\nb", "# only\n", "~/.ssh/id_ed25519.pub", "/home/x/.ssh/authorized_keys",
		readTestdata(f, "host_ed25519"), base64.StdEncoding.EncodeToString([]byte(readTestdata(f, "host_ed25519")))} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, value string, strict bool) {
		for _, format := range []keyFormat{publicKey, authorizedKeys} {
			out, err := decodeText("V", value, format, strict)
			if err != nil {
				if out != nil {
					t.Fatal("output with an error")
				}
				if !strings.HasPrefix(err.Error(), "entrypoint: V: ") {
					t.Fatalf("error %q does not name the variable", err)
				}
				continue
			}
			if strict && !isAuthorizedKeysText(out) {
				t.Fatalf("strict decode returned unrecognised %q", out)
			}
			for _, m := range privateKeyMarkers {
				if bytes.Contains(out, m) {
					t.Fatalf("a private key passed as public keys: %q", out)
				}
			}
			if !format.list {
				if !bytes.Equal(out, bytes.TrimSpace(out)) {
					t.Fatalf("output %q not trimmed", out)
				}
				continue
			}
			// A list comes back as written, or as its base64 decodes.
			if decoded, ok := decodeBase64(value); string(out) != value && (!ok || !bytes.Equal(out, decoded)) {
				t.Fatalf("list output %q is neither the value nor its decoding", out)
			}
		}
	})
}
