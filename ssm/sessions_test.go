package ssm

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/test/fakessm"
)

func TestSessionOwner(t *testing.T) {
	srv := fakessm.NewTest(t, fakessm.Options{})
	api := newTestAPI(t, srv)
	const owner = "arn:aws:sts::123456789012:assumed-role/Ops/alice"
	active, err := srv.StartSession(fakessm.Session{Target: "mi-0123456789abcdef0", Owner: owner})
	if err != nil {
		t.Fatal(err)
	}
	// A look-alike: the same prefix, another principal.
	other, _ := srv.StartSession(fakessm.Session{SessionID: "alice-0aaaaaaaaaaaaaaaa", Target: "mi-0123456789abcdef0", Owner: "arn:aws:iam::123456789012:user/mallory"})
	ended, _ := srv.StartSession(fakessm.Session{Target: "mi-0123456789abcdef0", Owner: "arn:aws:iam::123456789012:user/bob"})
	srv.EndSession(ended.SessionID)

	tests := []struct {
		name, id, want string
		fault          string
		wantErr        string
	}{
		{name: "active", id: active.SessionID, want: owner},
		{name: "same prefix, other owner", id: other.SessionID, want: "arn:aws:iam::123456789012:user/mallory"},
		{name: "ended", id: ended.SessionID, wantErr: "ssm: no active session with that id"},
		{name: "unknown", id: "alice-0bbbbbbbbbbbbbbbb", wantErr: "ssm: no active session with that id"},
		{name: "not an id", id: "", wantErr: "is not a session id"},
		{name: "too long", id: strings.Repeat("a", 97), wantErr: "is not a session id"},
		{name: "denied", id: active.SessionID, fault: "AccessDeniedException", wantErr: "the ECS task role needs ssm:DescribeSessions"},
		{name: "throttled", id: active.SessionID, fault: "ThrottlingException", wantErr: "ssm: session owner: describe sessions: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.fault != "" {
				fail(srv, "DescribeSessions", 1, tt.fault)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			got, err := SessionOwner(ctx, api, tt.id)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("SessionOwner = %q, %v; want error %q", got, err, tt.wantErr)
				}
				if strings.Contains(tt.wantErr, "no active session") && !errors.Is(err, ErrNoSession) {
					t.Errorf("not ErrNoSession: %v", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("SessionOwner = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	// The request is the documented one.
	var body string
	for _, r := range srv.Requests() {
		if r.Op == "DescribeSessions" {
			body = r.Body
			break
		}
	}
	if !strings.Contains(body, `"State":"Active"`) || !strings.Contains(body, `"Filters":[{"key":"SessionId","value":"`+active.SessionID+`"}]`) {
		t.Errorf("request %s", body)
	}

	// A hung service: the caller's deadline holds.
	srv.DelayNext("DescribeSessions", 1, time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := SessionOwner(ctx, api, active.SessionID); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("hung lookup: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("lookup outlived its deadline: %v", d)
	}
}
