package fakessm

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/bastion-dev/bastion/test/fakeaws"
)

// ops are the operations served, by name.
func (s *Server) ops() map[string]fakeaws.Handler {
	return map[string]fakeaws.Handler{
		"GetServiceSetting":           s.getServiceSetting,
		"CreateActivation":            s.createActivation,
		"DeleteActivation":            s.deleteActivation,
		"DescribeActivations":         s.describeActivations,
		"DescribeInstanceInformation": s.describeInstanceInformation,
		"DeregisterManagedInstance":   s.deregisterManagedInstance,
		"AddTagsToResource":           s.addTagsToResource,
		"ListTagsForResource":         s.listTagsForResource,
		"RegisterManagedInstance":     s.registerManagedInstance,
		"UpdateInstanceInformation":   s.updateInstanceInformation,
		"DescribeSessions":            s.describeSessions,
	}
}

// Ops lists the operations the fake implements.
func Ops() []string {
	return slices.Sorted(maps.Keys((&Server{}).ops()))
}

// badRequest is an error of SSM's own (a 400 whose body says "Message").
func badRequest(code, format string, args ...any) *fakeaws.Error {
	return fakeaws.Errorf(http.StatusBadRequest, code, format, args...)
}

var (
	namePattern   = regexp.MustCompile(`^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$`)
	settingARNExp = regexp.MustCompile(`^arn:aws[a-z-]*:ssm:([a-z0-9-]+):(\d{12}):servicesetting(/.+)$`)
	uuidPattern   = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
)

const namePatternText = `Member must satisfy regular expression pattern: ^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$`

func parseEpoch(n json.Number) (time.Time, error) {
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("timestamp %q: %w", n, err)
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), nil
}

func strLen(v string) int { return utf8.RuneCountInString(v) }

// --- GetServiceSetting ---

func (s *Server) getServiceSetting(c *fakeaws.Call) (any, *fakeaws.Error) {
	var in struct{ SettingId *string }
	if e := c.Decode(&in); e != nil {
		return nil, e
	}
	if in.SettingId == nil {
		return nil, fakeaws.ValidationError(nil, "settingId", "Member must not be null")
	}
	id := *in.SettingId
	if m := settingARNExp.FindStringSubmatch(id); m != nil {
		id = m[3]
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.settings[id]
	if !ok || !strings.HasPrefix(id, "/ssm/") {
		return nil, badRequest("ServiceSettingNotFound", "The service setting %s was not found.", *in.SettingId)
	}
	return map[string]any{"ServiceSetting": map[string]any{
		"SettingId":        id,
		"SettingValue":     st.value,
		"LastModifiedDate": fakeaws.Epoch(st.lastModified),
		"LastModifiedUser": st.lastUser,
		"ARN":              fmt.Sprintf("arn:aws:ssm:%s:%s:servicesetting%s", s.opts.Region, s.opts.AccountID, id),
		"Status":           st.status,
	}}, nil
}

// --- CreateActivation ---

type tagIn struct {
	Key   *string
	Value *string
}

func validateTags(tags []tagIn, member string, max int) ([]Tag, *fakeaws.Error) {
	if len(tags) > max {
		return nil, fakeaws.ValidationError(len(tags), member, fmt.Sprintf("Member must have length less than or equal to %d", max))
	}
	out := make([]Tag, 0, len(tags))
	for i, t := range tags {
		at := fmt.Sprintf("%s.%d.member", member, i+1)
		switch {
		case t.Key == nil:
			return nil, fakeaws.ValidationError(nil, at+".key", "Member must not be null")
		case t.Value == nil:
			return nil, fakeaws.ValidationError(nil, at+".value", "Member must not be null")
		case strLen(*t.Key) < 1 || strLen(*t.Key) > 128:
			return nil, fakeaws.ValidationError(*t.Key, at+".key", "Member must have length between 1 and 128")
		case strLen(*t.Value) > 256:
			return nil, fakeaws.ValidationError(*t.Value, at+".value", "Member must have length less than or equal to 256")
		case !namePattern.MatchString(*t.Key):
			return nil, fakeaws.ValidationError(*t.Key, at+".key", namePatternText)
		case !namePattern.MatchString(*t.Value):
			return nil, fakeaws.ValidationError(*t.Value, at+".value", namePatternText)
		}
		out = append(out, Tag{Key: *t.Key, Value: *t.Value})
	}
	return out, nil
}

func (s *Server) createActivation(c *fakeaws.Call) (any, *fakeaws.Error) {
	var in struct {
		IamRole             *string
		DefaultInstanceName *string
		Description         *string
		RegistrationLimit   *int
		ExpirationDate      *json.Number
		Tags                []tagIn
	}
	if e := c.Decode(&in); e != nil {
		return nil, e
	}
	switch {
	case in.IamRole == nil:
		return nil, fakeaws.ValidationError(nil, "iamRole", "Member must not be null")
	case strLen(*in.IamRole) > 64:
		return nil, fakeaws.ValidationError(*in.IamRole, "iamRole", "Member must have length less than or equal to 64")
	case in.DefaultInstanceName != nil && strLen(*in.DefaultInstanceName) > 256:
		return nil, fakeaws.ValidationError(*in.DefaultInstanceName, "defaultInstanceName", "Member must have length less than or equal to 256")
	case in.DefaultInstanceName != nil && !namePattern.MatchString(*in.DefaultInstanceName):
		return nil, fakeaws.ValidationError(*in.DefaultInstanceName, "defaultInstanceName", namePatternText)
	case in.Description != nil && strLen(*in.Description) > 256:
		return nil, fakeaws.ValidationError(*in.Description, "description", "Member must have length less than or equal to 256")
	case in.RegistrationLimit != nil && (*in.RegistrationLimit < 1 || *in.RegistrationLimit > 1000):
		return nil, fakeaws.ValidationError(*in.RegistrationLimit, "registrationLimit", "Member must have value between 1 and 1000")
	}
	tags, e := validateTags(in.Tags, "tags", 1000)
	if e != nil {
		return nil, e
	}
	now := s.opts.Clock()
	exp := now.Add(24 * time.Hour)
	if in.ExpirationDate != nil {
		t, err := parseEpoch(*in.ExpirationDate)
		if err != nil {
			return nil, fakeaws.Errorf(http.StatusBadRequest, "SerializationException", "%v", err)
		}
		if !t.After(now) || t.After(now.Add(30*24*time.Hour)) {
			return nil, badRequest("InvalidParameters", "Expiration date must be in the future and at most 30 days from now.")
		}
		exp = t
	}
	limit := 1
	if in.RegistrationLimit != nil {
		limit = *in.RegistrationLimit
	}
	a := &Activation{
		ActivationID:      fakeaws.NewUUID(),
		ActivationCode:    newActivationCode(),
		IamRole:           *in.IamRole,
		RegistrationLimit: limit,
		ExpirationDate:    exp,
		CreatedDate:       now,
		Tags:              tags,
	}
	if in.DefaultInstanceName != nil {
		a.DefaultInstanceName = *in.DefaultInstanceName
	}
	if in.Description != nil {
		a.Description = *in.Description
	}
	s.mu.Lock()
	s.activations[a.ActivationID] = a
	s.mu.Unlock()
	return map[string]string{"ActivationId": a.ActivationID, "ActivationCode": a.ActivationCode}, nil
}

// newActivationCode looks like real codes: 20 base64 characters, which may
// include '+' and '/'.
func newActivationCode() string {
	var b [15]byte
	_, _ = rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

// --- DeleteActivation ---

func (s *Server) deleteActivation(c *fakeaws.Call) (any, *fakeaws.Error) {
	var in struct{ ActivationId *string }
	if e := c.Decode(&in); e != nil {
		return nil, e
	}
	if in.ActivationId == nil {
		return nil, fakeaws.ValidationError(nil, "activationId", "Member must not be null")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.activations[*in.ActivationId]
	if !ok || a.Deleted || !uuidPattern.MatchString(*in.ActivationId) {
		return nil, badRequest("InvalidActivationId", "The activation ID is not valid. Verify the you entered the correct ActivationId or ActivationCode and try again.")
	}
	// Deleting only blocks new registrations; instances stay registered.
	a.Deleted = true
	return struct{}{}, nil
}

// --- RegisterManagedInstance (agent only, unsigned) ---

func (s *Server) registerManagedInstance(c *fakeaws.Call) (any, *fakeaws.Error) {
	var in struct {
		ActivationCode, ActivationId, PublicKey, PublicKeyType, Fingerprint *string
	}
	if e := c.Decode(&in); e != nil {
		return nil, e
	}
	for name, v := range map[string]*string{"activationCode": in.ActivationCode, "activationId": in.ActivationId,
		"publicKey": in.PublicKey, "publicKeyType": in.PublicKeyType, "fingerprint": in.Fingerprint} {
		if v == nil {
			return nil, fakeaws.ValidationError(nil, name, "Member must not be null")
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.activations[*in.ActivationId]
	if !ok || a.Deleted || a.ActivationCode != *in.ActivationCode {
		return nil, badRequest("InvalidActivation", "Activation ID is not valid. Verify the you entered the correct ActivationId or ActivationCode and try again.")
	}
	now := s.opts.Clock()
	if !now.Before(a.ExpirationDate) {
		return nil, badRequest("ActivationExpired", "Activation has expired.")
	}
	if a.RegistrationsCount >= a.RegistrationLimit {
		return nil, badRequest("RegistrationLimitExceeded", "Registration limit of %d reached for SSM On-prem managed instances.", a.RegistrationLimit)
	}
	a.RegistrationsCount++
	inst := &Instance{
		InstanceID:       newInstanceID(),
		ActivationID:     a.ActivationID,
		IamRole:          a.IamRole,
		Name:             a.DefaultInstanceName,
		ResourceType:     "ManagedInstance",
		RegistrationDate: now,
		Tags:             append([]Tag(nil), a.Tags...),
		PublicKey:        *in.PublicKey,
		PublicKeyType:    *in.PublicKeyType,
		Fingerprint:      *in.Fingerprint,
	}
	s.instances[inst.InstanceID] = inst
	return map[string]string{"InstanceId": inst.InstanceID}, nil
}

// --- UpdateInstanceInformation (the agent's ping) ---

func (s *Server) updateInstanceInformation(c *fakeaws.Call) (any, *fakeaws.Error) {
	var in struct {
		InstanceId, AgentName, AgentVersion, AgentStatus, PlatformType, PlatformName,
		PlatformVersion, IPAddress, ComputerName *string
	}
	if e := c.Decode(&in); e != nil {
		return nil, e
	}
	if in.InstanceId == nil {
		return nil, fakeaws.ValidationError(nil, "instanceId", "Member must not be null")
	}
	if strings.HasPrefix(c.AccessKeyID, "mi-") && c.AccessKeyID != *in.InstanceId {
		return nil, fakeaws.Errorf(http.StatusBadRequest, "AccessDeniedException",
			"User: %s is not authorized to perform: ssm:UpdateInstanceInformation on resource: arn:aws:ssm:%s:%s:managed-instance/%s",
			c.AccessKeyID, s.opts.Region, s.opts.AccountID, *in.InstanceId)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	inst, ok := s.instances[*in.InstanceId]
	if !ok {
		return nil, badRequest("InvalidInstanceId", "Instance Id %s is not valid.", *in.InstanceId)
	}
	set := func(dst *string, v *string) {
		if v != nil {
			*dst = *v
		}
	}
	set(&inst.AgentName, in.AgentName)
	set(&inst.AgentVersion, in.AgentVersion)
	set(&inst.AgentStatus, in.AgentStatus)
	set(&inst.PlatformType, in.PlatformType)
	set(&inst.PlatformName, in.PlatformName)
	set(&inst.PlatformVersion, in.PlatformVersion)
	set(&inst.IPAddress, in.IPAddress)
	set(&inst.ComputerName, in.ComputerName)
	inst.LastPing = s.opts.Clock()
	inst.Pings++
	inst.pingStatusLock = ""
	return struct{}{}, nil
}

// --- DeregisterManagedInstance ---

func (s *Server) deregisterManagedInstance(c *fakeaws.Call) (any, *fakeaws.Error) {
	var in struct{ InstanceId *string }
	if e := c.Decode(&in); e != nil {
		return nil, e
	}
	if in.InstanceId == nil {
		return nil, fakeaws.ValidationError(nil, "instanceId", "Member must not be null")
	}
	if !managedIDExpr.MatchString(*in.InstanceId) {
		return nil, fakeaws.ValidationError(*in.InstanceId, "instanceId", "Member must satisfy regular expression pattern: ^mi-[0-9a-f]{17}$")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.instances[*in.InstanceId]; !ok {
		return nil, badRequest("InvalidInstanceId", "Instance Id %s is not valid.", *in.InstanceId)
	}
	delete(s.instances, *in.InstanceId)
	return struct{}{}, nil
}

// --- AddTagsToResource / ListTagsForResource ---

var resourceTypes = map[string]bool{"Document": true, "ManagedInstance": true, "MaintenanceWindow": true,
	"Parameter": true, "PatchBaseline": true, "OpsItem": true, "OpsMetadata": true, "Automation": true, "Association": true}

// taggedInstance resolves ResourceType/ResourceId to a managed instance; s.mu is held.
func (s *Server) taggedInstance(rt, rid *string) (*Instance, *fakeaws.Error) {
	switch {
	case rt == nil:
		return nil, fakeaws.ValidationError(nil, "resourceType", "Member must not be null")
	case rid == nil:
		return nil, fakeaws.ValidationError(nil, "resourceId", "Member must not be null")
	case !resourceTypes[*rt]:
		return nil, fakeaws.ValidationError(*rt, "resourceType", "Member must satisfy enum value set: [Document, ManagedInstance, MaintenanceWindow, Parameter, PatchBaseline, OpsItem, OpsMetadata, Automation, Association]")
	case *rt != "ManagedInstance":
		return nil, badRequest("InvalidResourceType", "The resource type %s is not supported by this fake.", *rt)
	}
	inst, ok := s.instances[*rid]
	if !ok {
		return nil, badRequest("InvalidResourceId", "The resource ID \"%s\" is not valid. Verify the ID and try again.", *rid)
	}
	return inst, nil
}

func (s *Server) addTagsToResource(c *fakeaws.Call) (any, *fakeaws.Error) {
	var in struct {
		ResourceType, ResourceId *string
		Tags                     []tagIn
	}
	if e := c.Decode(&in); e != nil {
		return nil, e
	}
	if in.Tags == nil {
		return nil, fakeaws.ValidationError(nil, "tags", "Member must not be null")
	}
	tags, e := validateTags(in.Tags, "tags", 1000)
	if e != nil {
		return nil, e
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	inst, e := s.taggedInstance(in.ResourceType, in.ResourceId)
	if e != nil {
		return nil, e
	}
	merged := append([]Tag(nil), inst.Tags...)
	for _, t := range tags {
		replaced := false
		for i := range merged {
			if merged[i].Key == t.Key {
				merged[i].Value, replaced = t.Value, true
			}
		}
		if !replaced {
			merged = append(merged, t)
		}
	}
	if len(merged) > 50 {
		return nil, badRequest("TooManyTagsError", "The Targets parameter includes too many tags. Remove one or more tags and try the command again.")
	}
	inst.Tags = merged
	return struct{}{}, nil
}

func (s *Server) listTagsForResource(c *fakeaws.Call) (any, *fakeaws.Error) {
	var in struct{ ResourceType, ResourceId *string }
	if e := c.Decode(&in); e != nil {
		return nil, e
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	inst, e := s.taggedInstance(in.ResourceType, in.ResourceId)
	if e != nil {
		return nil, e
	}
	tags := append([]Tag{}, inst.Tags...)
	sort.Slice(tags, func(i, j int) bool { return tags[i].Key < tags[j].Key })
	return map[string]any{"TagList": tags}, nil
}
