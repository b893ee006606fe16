package notify

import (
	"net/http"
	"strconv"
	"testing"
	"time"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		in     string
		want   time.Duration
		wantOK bool
	}{
		{"seconds", "30", 30 * time.Second, true},
		{"zero", "0", 0, true},
		{"white space around", " \t5 ", 5 * time.Second, true},
		{"leading zeros", "007", 7 * time.Second, true},
		{"huge is capped", "99999999999999999999999999", maxRetryAfterParsed, true},
		{"a day and a second is capped", strconv.Itoa(86401), maxRetryAfterParsed, true},
		{"IMF-fixdate", now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{"RFC 850 date", "Sunday, 01-Jun-25 12:00:10 GMT", 10 * time.Second, true},
		{"asctime date", "Sun Jun  1 12:00:20 2025", 20 * time.Second, true},
		{"date in the past", now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
		{"date years ahead is capped", now.AddDate(3, 0, 0).Format(http.TimeFormat), maxRetryAfterParsed, true},
		{"empty", "", 0, false},
		{"negative", "-5", 0, false},
		{"plus sign", "+5", 0, false},
		{"fraction", "1.5", 0, false},
		{"unit", "5s", 0, false},
		{"hex", "0x10", 0, false},
		{"two numbers", "5 6", 0, false},
		{"not a date", "tomorrow", 0, false},
		{"unicode digits", "５", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parseRetryAfter(tt.in, now)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("parseRetryAfter(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

// FuzzParseRetryAfter: the header comes from the network. Whatever it says,
// the wait is within [0, maxRetryAfterParsed], a rejected value gives 0, and
// a plain number of seconds means exactly that many seconds.
func FuzzParseRetryAfter(f *testing.F) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	for _, s := range []string{"0", "120", " 3 ", "99999999999999999999", "-1", "1.5",
		"Sun, 01 Jun 2025 12:00:30 GMT", "Sunday, 01-Jun-25 12:00:10 GMT", "Sun Jun  1 12:00:20 2025", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := parseRetryAfter(s, now)
		if d < 0 || d > maxRetryAfterParsed {
			t.Fatalf("parseRetryAfter(%q) = %v", s, d)
		}
		if !ok && d != 0 {
			t.Fatalf("parseRetryAfter(%q) = %v, not ok", s, d)
		}
		if n, err := strconv.ParseUint(s, 10, 32); err == nil && isDigits(s) {
			want := min(time.Duration(n)*time.Second, maxRetryAfterParsed)
			if !ok || d != want {
				t.Fatalf("parseRetryAfter(%q) = %v, %v; want %v", s, d, ok, want)
			}
		}
	})
}
