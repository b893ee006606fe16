package notify

import (
	"net/http"
	"strings"
	"time"
)

// maxRetryAfterParsed bounds what parseRetryAfter returns, so no header
// value can overflow a time.Duration; the caller applies its own, smaller
// limit (Config.MaxRetryAfter).
const maxRetryAfterParsed = 24 * time.Hour

// parseRetryAfter reads a Retry-After header (RFC 9110 section 10.2.3):
// delay-seconds (a non-negative decimal integer) or an HTTP-date, which is
// turned into the wait from now (zero if it has passed). The header comes
// from the network: anything else is not ok, and the result is never
// negative nor above maxRetryAfterParsed.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.Trim(v, " \t")
	if v == "" {
		return 0, false
	}
	if isDigits(v) {
		var secs int64
		for i := 0; i < len(v); i++ {
			secs = secs*10 + int64(v[i]-'0')
			if secs > int64(maxRetryAfterParsed/time.Second) {
				return maxRetryAfterParsed, true
			}
		}
		return time.Duration(secs) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	d := t.Sub(now)
	switch {
	case d < 0:
		return 0, true
	case d > maxRetryAfterParsed:
		return maxRetryAfterParsed, true
	}
	return d, true
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}
