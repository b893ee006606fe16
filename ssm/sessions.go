package ssm

import (
	"context"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsssm "github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/ssm/types"
)

// ErrNoSession: the service knows no active session with that id (it
// ended, or it never was).
var ErrNoSession = errors.New("ssm: no active session with that id")

// maxSessionID is the longest session id the service hands out.
const maxSessionID = 96

// SessionOwner returns the ARN of the IAM principal that started the
// active Session Manager session sessionID (its Owner, e.g.
// arn:aws:sts::123456789012:assumed-role/Ops/alice), asking the service
// with DescribeSessions, State Active and the SessionId filter. The id's
// prefix is chosen by the caller and names no one: only Owner does. ctx
// bounds the lookup; the caller gives it a short deadline.
func SessionOwner(ctx context.Context, api API, sessionID string) (string, error) {
	if sessionID == "" || utf8.RuneCountInString(sessionID) > maxSessionID {
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
