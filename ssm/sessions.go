package ssm

import (
	"context"
	"errors"
	"fmt"
	"regexp"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsssm "github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/ssm/types"
)

// ErrNoSession: the service knows no active session with that id (it
// ended, or it never was).
var ErrNoSession = errors.New("ssm: no active session with that id")

// sessionIDPattern is what a Session Manager session id may look like: the
// caller's user or role session name, a dash and hex digits, 96 characters
// at most. The id is an index, never an identity: its prefix is the
// caller's choice; only the session's Owner names someone.
var sessionIDPattern = regexp.MustCompile(`^[A-Za-z0-9@._+=,-]{1,96}$`)

// ValidSessionID reports whether id can be a session id.
func ValidSessionID(id string) bool { return sessionIDPattern.MatchString(id) }

// SessionOwner returns the ARN of the IAM principal that started the
// active Session Manager session sessionID (its Owner, e.g.
// arn:aws:sts::123456789012:assumed-role/Ops/alice), asking the service
// with DescribeSessions, State Active and the SessionId filter. The id's
// prefix is chosen by the caller and names no one: only Owner does. ctx
// bounds the lookup; the caller gives it a short deadline.
func SessionOwner(ctx context.Context, api API, sessionID string) (string, error) {
	if !ValidSessionID(sessionID) {
		return "", fmt.Errorf("ssm: session owner: %q is not a session id", sessionID)
	}
	out, err := api.DescribeSessions(ctx, &awsssm.DescribeSessionsInput{
		State:   types.SessionStateActive,
		Filters: []types.SessionFilter{{Key: types.SessionFilterKeySessionId, Value: aws.String(sessionID)}},
	})
	if err != nil {
		return "", apiError("session owner: describe sessions", "ssm:DescribeSessions", err)
	}
	for _, s := range out.Sessions {
		if aws.ToString(s.SessionId) != sessionID {
			continue
		}
		if owner := aws.ToString(s.Owner); owner != "" {
			return owner, nil
		}
		return "", fmt.Errorf("ssm: session owner: session %s has no owner", sessionID)
	}
	return "", fmt.Errorf("%w: %s", ErrNoSession, sessionID)
}
