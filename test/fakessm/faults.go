package fakessm

import (
	"fmt"

	"github.com/bastion-dev/bastion/test/fakeaws"
)

// modeledCodes are SSM's own exception shapes (their body carries "Message").
var modeledCodes = map[string]bool{
	"InternalServerError": true, "InvalidActivation": true, "InvalidActivationId": true,
	"ActivationExpired": true, "RegistrationLimitExceeded": true, "InvalidInstanceId": true,
	"InvalidNextToken": true, "InvalidFilterKey": true, "InvalidFilter": true, "InvalidInstanceInformationFilterValue": true,
	"InvalidResourceId": true, "InvalidResourceType": true, "TooManyTagsError": true,
	"TooManyUpdates": true, "ServiceSettingNotFound": true, "InvalidParameters": true,
}

// faultMessage is the text SSM sends with code, for injected faults; ""
// leaves AWS's common messages to fakeaws.
func (s *Server) faultMessage(c *fakeaws.Call, code string) string {
	switch code {
	case "AccessDeniedException":
		resource := fmt.Sprintf("arn:aws:ssm:%s:%s:*", s.opts.Region, s.opts.AccountID)
		if c.Op == "CreateActivation" {
			resource = fmt.Sprintf("arn:aws:ssm:%s:%s:activation/*", s.opts.Region, s.opts.AccountID)
		}
		return fakeaws.AccessDenied(s.opts.AccountID, "ssm:"+c.Op, resource)
	case "InternalServerError":
		return "An internal error occurred."
	case "InvalidActivation":
		return "Activation ID is not valid. Verify the you entered the correct ActivationId or ActivationCode and try again."
	case "InvalidActivationId":
		return "The activation ID is not valid. Verify the you entered the correct ActivationId or ActivationCode and try again."
	case "ActivationExpired":
		return "Activation has expired."
	case "RegistrationLimitExceeded":
		return "Registration limit of the activation has been reached."
	case "InvalidInstanceId":
		return "Instance Id is not valid."
	case "InvalidFilter":
		return "The filter name isn't valid. Verify that you entered the correct name and try again."
	case "TooManyUpdates":
		return "There are concurrent updates for a resource that supports one update at a time."
	}
	return ""
}
